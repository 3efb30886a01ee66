"""Verification of an answer (x, y): does y solve the lower level at x, and is x stationary?

A run's own numbers are taken at its iterate (x, y), where y only approximates argmin g(x, .):
an upper value f(x, y) can look far better than any y that really solves the lower level
(the optimistic trap), and a y on the lower solution says nothing of x. `verify` re-solves the
lower level at the final x from y, locally (a nonconvex g keeps the minimiser y is near), and
makes three checks, each with a tolerance:

    lower level    y_distance = ||y - y_resolved|| / max(1, ||y_resolved||) <= tol, where the
                   re-solve (`resolve`: L-BFGS, or projected gradient on a y box, then
                   Newton-CG) certifies y_resolved to a distance RESOLVE_FRACTION tol (relative)
                   from the true minimiser; a re-solve that falls short fails this check
    second order   the Rayleigh quotient of grad_yy g at y_resolved along an approximate lowest
                   eigenvector (free coordinates only) is not below -curvature_tol times the
                   largest |eigenvalue|: otherwise y_resolved is a saddle or a maximiser
    upper level    the projected hypergradient of x -> f(x, y*(x)) at (x, y_resolved) is at most
                   upper_tol times its value at (x0, y*(x0)) (or at round-off level):

                       G = grad_x f - grad_yx g^T v,   grad_yy g v = grad_y f

                   v by conjugate gradient on the coordinates of y not held at a bound (those
                   stay put as x moves); components of G at an x bound pointing out of the box
                   count as zero. Where grad_yy g is singular (a continuum of lower solutions:
                   CG does not reach its tolerance) the measure is the least-squares KKT
                   residual min_nu ||grad f + J^T nu|| (J = [grad_yx g, grad_yy g]), the seed
                   paper's stationarity, with the same projection.

It reports y_resolved, lower_gap = g(x, y) - g(x, y_resolved), y_distance, upper_value =
f(x, y_resolved) (the honest value of the upper objective at x), the problem's metrics at
(x, y_resolved), each check's numbers, passed and a reason naming every failed check.
"""
from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..core.kkt import LEAST_SQUARES, implicit_gradient
from ..core.layout import Layout
from ..core.linear import power_iteration
from ..core.lower import MAX_CG_ITER, Minimum, minimize, truncated_cg
from ..core.oracles import Autograd, Oracle, inner
from ..core.problem import BilevelProblem
from .history import problem_metrics
from .policy import DEFAULT

# the defaults of `bilevel.RunPolicy`, the one place they are set
LOWER_TOL = DEFAULT.verify_tol               # y_distance that passes
CURVATURE_TOL = DEFAULT.curvature_tol        # negative curvature beyond this fraction of the largest |eigenvalue|
UPPER_TOL = DEFAULT.upper_tol                # projected hypergradient at x, relative to its value at x0, that passes
RESOLVE_FRACTION = DEFAULT.resolve_fraction  # the re-solve's certified distance to y*, a fraction of the lower tol


def verify(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, *, tol: float = LOWER_TOL,
           upper_tol: float = UPPER_TOL, curvature_tol: float = CURVATURE_TOL,
           resolve_fraction: float = RESOLVE_FRACTION, max_iter: int = DEFAULT.verify_max_iter,
           seed: int = 0) -> dict[str, Any]:
    """The verification of (x, y) (see the module docstring), with its own oracle counts and time.

    Args:
        problem: the problem (its x0, y0, boxes and metrics).
        oracle: the run's oracle; its back-end is used with counts of its own (`Oracle.fork`).
        x: the answer's upper-level part.
        y: the answer's lower-level part.
        tol: the largest y_distance that passes. Default LOWER_TOL = 1e-2.
        upper_tol: the largest projected hypergradient, relative to its value at x0, that
            passes. Default UPPER_TOL = 1e-3.
        curvature_tol: the second-order check's tolerance. Default CURVATURE_TOL = 1e-3.
        resolve_fraction: the re-solve's certified distance to y*, as a fraction of tol.
            Default RESOLVE_FRACTION = 1e-3.
        max_iter: iterations of the re-solve's first stage at most (Newton-CG follows). Default 100.

    The defaults are `bilevel.RunPolicy`'s (verify_tol, upper_tol, curvature_tol,
    resolve_fraction, verify_max_iter).
        seed: seed of the random start of the power iterations.

    Returns:
        A dict: y_resolved, lower_gap, y_distance, upper_value, lower_residual (||gradient
        mapping|| at y_resolved), re_solve_iterations, re_solve_step (its last Newton step: the
        distance to y* it certifies), re_solve_tol, re_solve_converged, min_curvature and
        max_curvature (of grad_yy g at y_resolved, estimates), upper_stationarity (the projected
        hypergradient's norm at (x, y_resolved)), upper_stationarity_x0 (the same at x0),
        upper_relative (their ratio), upper_measure ('hypergradient' or 'kkt_least_squares'),
        lower_passed, curvature_passed, upper_passed, passed, reason ('' when passed), metrics
        and cost ({"time": seconds, and the oracle counts of the verification}).
    """
    start = time.perf_counter()
    own = oracle.fork()
    x, y = x.detach(), y.detach()
    g_at_y = own.g(x, y)
    minimum = resolve(problem, own, x, y, max_iter, tol, resolve_fraction)
    y_resolved = minimum.y
    finite = math.isfinite(minimum.value) and bool(torch.isfinite(y_resolved).all())
    # curvature where the re-solve ended, or at y itself where it could not end (g unbounded below)
    lowest, largest = _curvature(own, x, y_resolved if finite else y, problem.y_bounds, seed)
    out: dict[str, Any] = {
        "y_resolved": y_resolved,
        "lower_gap": float(g_at_y) - minimum.value,
        "y_distance": float(torch.linalg.vector_norm(y - y_resolved)
                            / max(1.0, float(torch.linalg.vector_norm(y_resolved)))),
        "upper_value": float(own.f(x, y_resolved)),
        "lower_residual": minimum.residual,
        "re_solve_iterations": minimum.iterations,
        "re_solve_step": minimum.step,
        "re_solve_tol": _step_tol(y, tol, resolve_fraction),
        "re_solve_converged": minimum.converged,
        "min_curvature": lowest,
        "max_curvature": largest,
    }
    out.update(_upper_check(problem, own, x, y_resolved, max_iter, upper_tol) if finite else
               {"upper_stationarity": math.nan, "upper_stationarity_x0": math.nan, "upper_relative": math.nan,
                "upper_measure": "", "upper_floor": math.nan})
    out["lower_passed"] = finite and out["y_distance"] <= tol and minimum.converged
    out["curvature_passed"] = not lowest < -curvature_tol * max(largest, torch.finfo(torch.float64).tiny)
    out["upper_passed"] = (out["upper_relative"] <= upper_tol
                           or out["upper_stationarity"] <= out["upper_floor"])
    out["reason"] = _reason(out, tol, upper_tol)
    out["passed"] = not out["reason"]
    out["metrics"] = problem_metrics(problem, x, y_resolved)
    out["cost"] = {"time": time.perf_counter() - start, **own.snapshot()}
    return out


def _step_tol(y: Tensor, tol: float, fraction: float) -> float:
    return fraction * tol * max(1.0, float(torch.linalg.vector_norm(y)))


def resolve(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, max_iter: int = 1000,
            tol: float = LOWER_TOL, fraction: float = RESOLVE_FRACTION) -> Minimum:
    """The lower level solved at x from y (`bilevel.core.lower.minimize`): a first-order stage to a
    stationarity residual sqrt(eps) max(1, ||grad_y g(x, y)||), then Newton-CG with
    Hessian-vector products until a full Newton step is at most fraction tol
    max(1, ||y||) long: y_resolved is then that close to the minimiser, however ill-conditioned
    grad_yy g is. `converged` says whether it got there."""
    value_and_grad = oracle.lower_objective(x)
    grad = value_and_grad(y)[1]
    scale = float(torch.linalg.vector_norm(grad)) if bool(torch.isfinite(grad).all()) else 1.0
    return minimize(value_and_grad, y, bounds=problem.y_bounds, max_iter=max_iter,
                    tol=torch.finfo(y.dtype).eps ** 0.5 * max(1.0, scale),
                    hvp=lambda at, v: oracle.vjp_grad_y_g(x, at, v)[1], step_tol=_step_tol(y, tol, fraction))


class Stationarity(NamedTuple):
    """The upper level's first-order measure at a point: `gradient` (the projected hypergradient,
    or the x part of the least-squares KKT residual), `norm` (of the whole measure: with the y
    part for the least-squares residual), `measure` ('hypergradient' or 'kkt_least_squares')
    and `floor` (the round-off level of norm)."""

    gradient: Tensor
    norm: float
    measure: str
    floor: float


def _upper_check(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, max_iter: int,
                 upper_tol: float) -> dict[str, Any]:
    """The upper level's first-order measure at (x, y), and at (x0, y*(x0)) as its scale: there
    to a digit or two (at most 30 first-order steps from y0, to 1e-3 of the starting residual;
    conjugate gradient to 1e-2), which is all a scale needs."""
    value, measure, floor = upper_stationarity(problem, oracle, x, y)[1:]
    if torch.equal(x, problem.x0):
        reference = value
    else:
        value_and_grad = oracle.lower_objective(problem.x0)
        grad = value_and_grad(problem.y0)[1]
        scale = float(torch.linalg.vector_norm(grad)) if bool(torch.isfinite(grad).all()) else 1.0
        at_start = minimize(value_and_grad, problem.y0, bounds=problem.y_bounds, max_iter=min(max_iter, 30),
                            tol=1e-3 * scale)
        finite = math.isfinite(at_start.value) and bool(torch.isfinite(at_start.y).all())
        reference = upper_stationarity(problem, oracle, problem.x0, at_start.y, 1e-2).norm if finite else math.nan
    relative = value / reference if reference > 0 else (0.0 if value == 0 else math.inf)
    return {"upper_stationarity": value, "upper_stationarity_x0": reference, "upper_relative": relative,
            "upper_measure": measure, "upper_floor": floor}


def upper_stationarity(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor,
                       rtol: float | None = None) -> Stationarity:
    """The projected hypergradient at (x, y), or the least-squares KKT residual where
    grad_yy g v = grad_y f has no solution that conjugate gradient reaches to rtol (default
    max(1e-8, 100 eps)) relative (see the module docstring). y is taken to solve the lower
    level at x."""
    eps = torch.finfo(y.dtype).eps
    _, gfx, gfy = oracle.grad_f(x, y)
    free_y = problem.free_y(y, oracle.grad_g_y(x, y))
    free_y = torch.ones_like(y, dtype=torch.bool) if free_y is None else free_y
    iters = min(max(100, 2 * y.numel()), MAX_CG_ITER)
    rtol = max(1e-8, 100 * eps) if rtol is None else rtol

    vjp, jvp = oracle.lower_jacobian(x, y)

    def hessian(v: Tensor) -> Tensor:
        return _masked(vjp(_masked(v, free_y))[1], free_y)

    v, ended = truncated_cg(hessian, _masked(gfy, free_y), rtol, iters)
    if ended == "solved":
        coupling = vjp(v)[0]
        grad = _projected(gfx - coupling, x, problem.x_bounds)
        # the terms' size, and grad_y f's: where grad_yx g vanishes at y (F flat in x, as y* is), the
        # coupling grad_yx g^T v is the round-off of a derivative of g, not a measure of its size
        floor = math.sqrt(eps) * float(torch.linalg.vector_norm(gfx) + torch.linalg.vector_norm(coupling)
                                       + torch.linalg.vector_norm(gfy))
        return Stationarity(grad, float(torch.linalg.vector_norm(grad)), "hypergradient", floor)
    free_x = _interior(x, problem.x_bounds)

    def transpose(nu: Tensor) -> tuple[Tensor, Tensor]:        # J^T nu on the rows not held at a bound
        jx, jy = vjp(_masked(nu, free_y))
        return _masked(jx, free_x), _masked(jy, free_y)

    def normal(nu: Tensor) -> Tensor:                           # J J^T nu
        return _masked(jvp(*transpose(nu)), free_y)

    rhs = -_masked(jvp(_masked(gfx, free_x), _masked(gfy, free_y)), free_y)
    nu, _ = truncated_cg(normal, rhs, rtol, iters)
    jx, jy = vjp(_masked(nu, free_y))
    rx, ry = _projected(gfx + jx, x, problem.x_bounds), _masked(gfy + jy, free_y)
    floor = math.sqrt(eps) * math.sqrt(float(inner(gfx, gfx) + inner(gfy, gfy)))
    return Stationarity(rx, math.sqrt(float(inner(rx, rx) + inner(ry, ry))), "kkt_least_squares", floor)


def _masked(v: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, v, torch.zeros_like(v))


def _at_bounds(x: Tensor, bounds: tuple | None) -> tuple[Tensor, Tensor]:
    """(x at its lower bound, x at its upper bound), to sqrt(eps) relative."""
    none = torch.zeros_like(x, dtype=torch.bool)
    if bounds is None:
        return none, none
    near = math.sqrt(torch.finfo(x.dtype).eps)
    return tuple(none if b is None else (x - b).abs() <= near * (1 + b.abs()) for b in bounds)


def _interior(x: Tensor, bounds: tuple | None) -> Tensor:
    low, high = _at_bounds(x, bounds)
    return ~(low | high)


def _projected(grad: Tensor, x: Tensor, bounds: tuple | None) -> Tensor:
    """The projected gradient on the x box: at a lower bound min(grad, 0), at an upper bound
    max(grad, 0) (a component pointing out of the box is held by the bound's multiplier)."""
    low, high = _at_bounds(x, bounds)
    grad = torch.where(low, torch.clamp(grad, max=0), grad)
    return torch.where(high, torch.clamp(grad, min=0), grad)


def _reason(out: dict[str, Any], tol: float, upper_tol: float) -> str:
    """Why the answer fails verification (every failed check, by how much), or ''."""
    not_a_minimiser = "(a saddle or a maximiser; if the lower level maximises, pass -g)"
    if not all(math.isfinite(v) for v in (out["lower_gap"], out["y_distance"], out["upper_value"])):
        if not out["curvature_passed"]:
            return (f"y is not a minimiser of g(x, .): g decreases without bound from y, and grad_yy g has "
                    f"curvature {out['min_curvature']:.3g} < 0 at y {not_a_minimiser}")
        return "the lower level could not be re-solved at x (non-finite values)"
    reasons = []
    if out["y_distance"] > tol:
        reasons.append(f"y is {out['y_distance']:.3g} (relative) away from the lower-level solution re-solved at x "
                       f"(verify_tol {tol:g}; g(x, y) - g(x, y_resolved) = {out['lower_gap']:.3g})")
    if not out["re_solve_converged"]:
        reasons.append(f"the re-solve of the lower level fell short of its tolerance (last Newton step "
                       f"{out['re_solve_step']:.3g} > {out['re_solve_tol']:.3g}; ||grad_y g|| "
                       f"{out['lower_residual']:.3g}), so y_resolved and the values at it are uncertain")
    if not out["curvature_passed"]:
        reasons.append(f"y is not a minimiser of g(x, .): grad_yy g has curvature {out['min_curvature']:.3g} < 0 "
                       f"there {not_a_minimiser}")
    if not out["upper_passed"] and not math.isfinite(out["upper_stationarity"]):
        reasons.append("the upper level's stationarity could not be computed at (x, y_resolved) (non-finite values)")
    elif not out["upper_passed"]:
        name = "hypergradient" if out["upper_measure"] == "hypergradient" else "least-squares KKT residual"
        reasons.append(f"the upper level is not first-order stationary at (x, y_resolved): its projected {name} is "
                       f"{out['upper_stationarity']:.3g}, {out['upper_relative']:.3g} of its value "
                       f"{out['upper_stationarity_x0']:.3g} at x0 (upper_tol {upper_tol:g})")
    return "; ".join(reasons)


def _curvature(oracle: Oracle, x: Tensor, y: Tensor, bounds: tuple | None, seed: int,
               iters: int = 40) -> tuple[float, float]:
    """(an upper estimate of the lowest eigenvalue of grad_yy g at (x, y), the largest |eigenvalue|),
    on the coordinates of y not at a bound. The lowest is the Rayleigh quotient of the last
    vector of power iteration on L I - H (L the largest |eigenvalue|), so a negative value is
    negative curvature that exists."""
    free = torch.ones_like(y, dtype=torch.bool)
    if bounds is not None:
        tiny = 1e-9 * (1 + y.abs())
        for bound in bounds:
            if bound is not None:
                free &= (y - bound).abs() > tiny
    if not bool(free.any()):
        return 0.0, 0.0

    def hessian(v: Tensor) -> Tensor:
        return oracle.vjp_grad_y_g(x, y, v * free)[1] * free

    generator = torch.Generator(device=y.device).manual_seed(seed)
    largest = float(power_iteration(lambda v: (hessian(v[0]),), (y,), iters, generator))
    if not math.isfinite(largest):
        return math.nan, largest
    v = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device) * free
    v = v / torch.linalg.vector_norm(v)
    for _ in range(iters):
        w = largest * v - hessian(v)
        norm = torch.linalg.vector_norm(w)
        if not float(norm) > 1e-12 * largest:     # H v = L v: v is an eigenvector of the lowest (= L)
            break
        v = w / norm
    return float(inner(v, hessian(v))), largest


def hypergradient(problem: BilevelProblem, x: Any, *, y: Any = None, max_iter: int = 1000,
                  linear_solver: Any = None) -> Any:
    """The gradient of the honest upper objective x -> f(x, y*(x)) at x.

    First the lower level is solved at x (`bilevel.core.lower.minimize` from y, default the
    problem's y0: L-BFGS, or projected gradient on a y box; a local solve, so for a nonconvex
    g it is the y*(x) near y); then, by the implicit function theorem,

        grad = grad_x f(x, y*) - grad_yx g(x, y*)^T v,   grad_yy g(x, y*) v = grad_y f(x, y*),

    v by conjugate gradient (the least-squares v where grad_yy g is singular: then y*(x) is not
    unique and the formula is the gradient along the solution y* found). On a y box the system
    is restricted to the coordinates of y* not held at a bound (those stay put as x moves).
    Valid where grad_yy g is nonsingular there and the active set does not change near x.

    Args:
        problem: the `BilevelProblem`.
        x: the upper variable, flat or in the problem's structure.
        y: where the lower-level solve starts (default problem.y0).
        max_iter: iterations of the lower-level solve at most. Default 1000.
        linear_solver: solves grad_yy g v = grad_y f. Default ConjugateGradient(iters=50, tol=1e-12).

    Returns:
        The gradient, in x's structure.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> float(bilevel.hypergradient(p, p.info["x_star"]).norm()) < 1e-6
        True
    """
    x = Layout.of("x", x)[1].to(problem.x0)
    y = problem.y0 if y is None else Layout.of("y", y)[1].to(problem.y0)
    oracle = Oracle(Autograd(problem.f, problem.g, problem.y_bounds))
    y_star = resolve(problem, oracle, x, y, max_iter).y
    free = problem.free_y(y_star, oracle.grad_g_y(x, y_star))
    grad = implicit_gradient(oracle, x, y_star, linear_solver or LEAST_SQUARES, free)
    return problem.layouts[0].structure(grad)
