"""Verification of an answer (x, y): does y solve the lower level at x?

A run's own numbers are taken at its iterate (x, y), where y only approximates argmin g(x, .):
an upper value f(x, y) can look far better than any y that really solves the lower level
(the optimistic trap). `verify` re-solves the lower level at the final x from y, locally (a
nonconvex g keeps the minimiser y is near), and reports

    y_resolved   argmin_y g(x, .) from y (L-BFGS, or projected gradient on a y box)
    lower_gap    g(x, y) - g(x, y_resolved)
    y_distance   ||y - y_resolved|| / max(1, ||y_resolved||)
    upper_value  f(x, y_resolved): the honest value of the upper objective at x
    metrics      the problem's metrics at (x, y_resolved)

and a second-order check: the Rayleigh quotient of grad_yy g at y_resolved along an
approximate lowest eigenvector (power iteration, free coordinates only where y sits at a
bound) must not be negative beyond round-off, or y_resolved is a saddle or a maximiser.
The answer passes when y_distance <= tol and the second-order check holds.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from ..core.kkt import LEAST_SQUARES, implicit_gradient
from ..core.layout import Layout
from ..core.linear import power_iteration
from ..core.lower import Minimum, minimize
from ..core.oracles import Autograd, Oracle, inner
from ..core.problem import BilevelProblem
from .history import problem_metrics

CURVATURE_TOL = 1e-3     # negative curvature counts beyond this fraction of the largest |eigenvalue|


def verify(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, *, tol: float = 1e-2,
           max_iter: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The verification of (x, y) (see the module docstring), with its own oracle counts and time.

    Args:
        problem: the problem (its y box and metrics).
        oracle: the run's oracle; its back-end is used with counts of its own (`Oracle.fork`).
        x: the answer's upper-level part.
        y: the answer's lower-level part.
        tol: the largest y_distance that passes. Default 1e-2.
        max_iter: iterations of the re-solve at most. Default 1000.
        seed: seed of the random start of the power iterations.

    Returns:
        A dict: y_resolved, lower_gap, y_distance, upper_value, lower_residual (||gradient
        mapping|| at y_resolved), re_solve_iterations, min_curvature and max_curvature (of
        grad_yy g at y_resolved, estimates), passed, reason ('' when passed), metrics and cost
        ({"time": seconds, and the oracle counts of the verification}).
    """
    start = time.perf_counter()
    own = oracle.fork()
    x, y = x.detach(), y.detach()
    g_at_y = own.g(x, y)
    minimum = resolve(problem, own, x, y, max_iter)
    y_resolved = minimum.y
    # curvature where the re-solve ended, or at y itself where it could not end (g unbounded below)
    at = y_resolved if math.isfinite(minimum.value) and bool(torch.isfinite(y_resolved).all()) else y
    lowest, largest = _curvature(own, x, at, problem.y_bounds, seed)
    out: dict[str, Any] = {
        "y_resolved": y_resolved,
        "lower_gap": float(g_at_y) - minimum.value,
        "y_distance": float(torch.linalg.vector_norm(y - y_resolved)
                            / max(1.0, float(torch.linalg.vector_norm(y_resolved)))),
        "upper_value": float(own.f(x, y_resolved)),
        "lower_residual": minimum.residual,
        "re_solve_iterations": minimum.iterations,
        "min_curvature": lowest,
        "max_curvature": largest,
    }
    out["reason"] = _reason(out, tol)
    out["passed"] = not out["reason"]
    out["metrics"] = problem_metrics(problem, x, y_resolved)
    out["cost"] = {"time": time.perf_counter() - start, **own.snapshot()}
    return out


def resolve(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, max_iter: int = 1000) -> Minimum:
    """The lower level solved at x from y, tightly (`bilevel.core.lower.minimize` to a stationarity
    residual eps^(3/4) times max(1, ||grad_y g(x, y)||), or until g stops decreasing)."""
    value_and_grad = oracle.lower_objective(x)
    grad = value_and_grad(y)[1]
    scale = float(torch.linalg.vector_norm(grad)) if bool(torch.isfinite(grad).all()) else 1.0
    return minimize(value_and_grad, y, bounds=problem.y_bounds, max_iter=max_iter,
                    tol=torch.finfo(y.dtype).eps ** 0.75 * max(1.0, scale))


def _reason(out: dict[str, Any], tol: float) -> str:
    """Why the answer fails verification, or ''."""
    negative = out["min_curvature"] < -CURVATURE_TOL * max(out["max_curvature"], torch.finfo(torch.float64).tiny)
    not_a_minimiser = "(a saddle or a maximiser; if the lower level maximises, pass -g)"
    if not all(math.isfinite(v) for v in (out["lower_gap"], out["y_distance"], out["upper_value"])):
        if negative:
            return (f"y is not a minimiser of g(x, .): g decreases without bound from y, and grad_yy g has "
                    f"curvature {out['min_curvature']:.3g} < 0 at y {not_a_minimiser}")
        return "the lower level could not be re-solved at x (non-finite values)"
    if out["y_distance"] > tol:
        return (f"y is {out['y_distance']:.3g} (relative) away from the lower-level solution re-solved at x "
                f"(verify_tol {tol:g}; g(x, y) - g(x, y_resolved) = {out['lower_gap']:.3g})")
    if negative:
        return (f"y is not a minimiser of g(x, .): grad_yy g has curvature {out['min_curvature']:.3g} < 0 there "
                f"{not_a_minimiser}")
    return ""


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
