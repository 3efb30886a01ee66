"""Minimising a smooth function of y to a tolerance: what the verification of an answer (the
lower level re-solved at the final x) and honest metrics (a classifier retrained with fixed
weights) need.

    min_y phi(y)   over R^m:     L-BFGS with a strong Wolfe line search (torch.optim.LBFGS)
                   over a box:   spectral projected gradient (Birgin, Martinez, Raydan 2000):
                                 Barzilai-Borwein steps, a nonmonotone Armijo search on the
                                 projection arc
    then, given Hessian-vector products:
                   Newton-CG     d solves grad^2 phi d = -grad phi by conjugate gradient on the
                                 coordinates not held at a bound (truncated at negative
                                 curvature), y+ = P(y + t d) with an Armijo search on t

All are local methods: from a start near a minimiser of a nonconvex phi they find that one.
Stationarity is measured by the gradient mapping r(y) = y - P(y - grad phi(y)) (the gradient
where there is no box), the residual that is zero exactly at the box's KKT points. A small
gradient says little about the distance to the minimiser where grad^2 phi is ill-conditioned
(||y - y*|| <= ||r|| / lambda_min); the Newton step does: near y*, ||d|| = ||y - y*|| (1 + o(1)),
and a full Newton step of length <= step_tol leaves y far closer than step_tol (quadratic
convergence). That is the Newton stage's stopping test and certificate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]
HessianVector = Callable[[Tensor, Tensor], Tensor]     # (y, v) -> grad^2 phi(y) v
MAX_CG_ITER = 500        # conjugate gradient steps (Hessian-vector products) per linear solve at most


@dataclass(frozen=True)
class Minimum:
    """The result of `minimize`: the point, phi there, the stationarity residual ||r(y)||, the
    iterations used (both stages), whether it converged (||r(y)|| <= tol; with a Newton stage:
    a Newton step solved to sqrt(eps) was at most step_tol long), and the length of that step
    (the distance to y* it certifies; nan without a Newton stage, inf where none certified)."""

    y: Tensor
    value: float
    residual: float
    iterations: int
    converged: bool
    step: float = math.nan


def project(y: Tensor, bounds: tuple | None) -> Tensor:
    """The projection onto the box `bounds` = (low, high) (None sides unbounded)."""
    return y if bounds is None else torch.clamp(y, min=bounds[0], max=bounds[1])


def gradient_mapping(y: Tensor, grad: Tensor, bounds: tuple | None) -> Tensor:
    """r(y) = y - P(y - grad): grad itself without a box; zero exactly where y is a KKT point
    of min phi over the box (components at a bound with grad pushing outward count as zero)."""
    return grad if bounds is None else y - project(y - grad, bounds)


def minimize(value_and_grad: ValueAndGrad, y0: Tensor, *, bounds: tuple | None = None, tol: float | None = None,
             max_iter: int = 500, hvp: HessianVector | None = None, step_tol: float | None = None,
             newton_iter: int = 30) -> Minimum:
    """A local minimiser of phi from y0 (see the module docstring).

    Args:
        value_and_grad: y -> (phi(y), grad phi(y)).
        y0: the start (projected onto the box first).
        bounds: a (low, high) box, or None.
        tol: the first stage stops once ||r(y)|| <= tol. Default: sqrt(eps) of y's dtype times
            max(1, ||r(y0)||). Both first-order methods also stop when phi stops decreasing at
            the precision of the dtype.
        max_iter: iterations of the first stage at most. Default 500.
        hvp: (y, v) -> grad^2 phi(y) v. Given, a Newton-CG stage follows the first one until a
            Newton step, solved to sqrt(eps) relative, is at most step_tol long; `converged`
            then means that.
        step_tol: the Newton stage's tolerance on ||y+ - y||. Default: sqrt(eps) max(1, ||y0||).
        newton_iter: Newton iterations at most. Default 30.
    """
    y = project(y0.detach().clone(), bounds)
    value, grad = value_and_grad(y)
    residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    eps = torch.finfo(y.dtype).eps
    if tol is None:
        tol = math.sqrt(eps) * max(1.0, residual)
    if not math.isfinite(residual):
        return Minimum(y, float(value), residual, 0, False, math.inf if hvp is not None else math.nan)
    if bounds is None:
        first = _lbfgs(value_and_grad, y, tol, max_iter, eps)
    else:
        first = _spg(value_and_grad, y, value, grad, bounds, tol, max_iter, eps)
    if hvp is None or not (math.isfinite(first.value) and bool(torch.isfinite(first.y).all())):
        return first if hvp is None else replace(first, converged=False, step=math.inf)
    if step_tol is None:
        step_tol = math.sqrt(eps) * max(1.0, float(torch.linalg.vector_norm(y)))
    second = _newton_cg(value_and_grad, hvp, first.y, bounds, step_tol, newton_iter, eps)
    return replace(second, iterations=first.iterations + second.iterations)


def _free(y: Tensor, grad: Tensor, bounds: tuple | None) -> Tensor:
    """The coordinates not held at a bound (y - grad stays inside the box there)."""
    if bounds is None:
        return torch.ones_like(y, dtype=torch.bool)
    step = y - grad
    return project(step, bounds) == step


def truncated_cg(matvec: Callable[[Tensor], Tensor], b: Tensor, rtol: float,
                 max_iter: int) -> tuple[Tensor, str]:
    """(d, how it ended) for A d = b by conjugate gradient from 0: 'solved' (||A d - b|| <=
    rtol ||b||), 'budget' (max_iter products done) or 'negative' (stopped at a direction of
    non-positive curvature: d so far, or b on the first step, a descent direction for phi
    either way)."""
    d, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), float(torch.sum(r * r))
    if rr == 0.0:
        return d, "solved"
    stop = (rtol * math.sqrt(rr)) ** 2
    for k in range(max_iter):
        ap = matvec(p)
        pap = float(torch.sum(p * ap))
        if not pap > 0:
            return (b if k == 0 else d), "negative"
        a = rr / pap
        d, r = d + a * p, r - a * ap
        rr_new = float(torch.sum(r * r))
        if rr_new <= stop:
            return d, "solved"
        p, rr = r + (rr_new / rr) * p, rr_new
    return d, "budget"


def _newton_cg(value_and_grad: ValueAndGrad, hvp: HessianVector, y: Tensor, bounds: tuple | None,
               step_tol: float, max_iter: int, eps: float) -> Minimum:
    """Newton-CG from y (see the module docstring). CG runs to a relative residual
    min(0.1, sqrt(||r|| / ||r_0||)) (superlinear), at most min(max(50, 2 m), MAX_CG_ITER)
    products; a step that comes out at most step_tol long (or from a CG out of products) is
    solved again to sqrt(eps) (MAX_CG_ITER products at most), since CG's iterates
    grow in norm and a loose d underestimates the distance by up to cond(grad^2 phi) times its tolerance: only such a
    step certifies, and it is taken unless phi rises beyond round-off (near y* the decrease
    d^T grad^2 phi d / 2 can be below the round-off of phi itself). The Armijo search of the
    other steps tolerates a rise of a few eps |phi|."""
    value, grad = value_and_grad(y)
    start = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    loose_iter, tight = min(max(50, 2 * y.numel()), MAX_CG_ITER), math.sqrt(eps)
    step, certified, iterations = math.inf, False, 0
    while iterations < max_iter:
        residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
        free = _free(y, grad, bounds)
        b = torch.where(free, -grad, torch.zeros_like(grad))
        if residual == 0.0 or not bool(b.any()):
            step, certified = 0.0, True
            break

        def hessian(v: Tensor, at: Tensor = y, keep: Tensor = free) -> Tensor:
            return torch.where(keep, hvp(at, torch.where(keep, v, torch.zeros_like(v))), torch.zeros_like(v))

        forcing = min(0.1, math.sqrt(residual / max(start, torch.finfo(y.dtype).tiny)))
        d, ended = truncated_cg(hessian, b, forcing, loose_iter)
        final = ended != "negative" and float(torch.linalg.vector_norm(d)) <= step_tol
        if final and (forcing > tight or ended == "budget"):
            d, ended = truncated_cg(hessian, b, tight, MAX_CG_ITER)
            final = float(torch.linalg.vector_norm(d)) <= step_tol
        newton = ended == "solved"
        moved = project(y + d, bounds)
        # the projected Newton arc does not descend: steepest descent (unless a certifying step is below the
        # resolution of y, y + d == y: y is y* to the last digit)
        if not float(torch.sum(grad * (moved - y))) < 0 and not (final and newton and torch.equal(moved, y)):
            d, newton = b, False
        slack = 10 * eps * abs(float(value))
        if final and newton:              # y is within ||d|| <= step_tol of y*: done, with the step if it helps
            candidate = project(y + d, bounds)
            new_value, new_grad = value_and_grad(candidate)
            step, certified, iterations = float(torch.linalg.vector_norm(candidate - y)), True, iterations + 1
            if math.isfinite(float(new_value)) and float(new_value) <= float(value) + slack:
                y, value, grad = candidate, new_value, new_grad
            break
        t = 1.0
        while t >= 1e-10:
            candidate = project(y + t * d, bounds)
            new_value, new_grad = value_and_grad(candidate)
            slope = float(torch.sum(grad * (candidate - y)))
            if math.isfinite(float(new_value)) and float(new_value) <= float(value) + 1e-4 * slope + slack:
                break
            t *= 0.5
        if t < 1e-10:                     # no decrease at this precision
            break
        step = float(torch.linalg.vector_norm(candidate - y))
        y, value, grad = candidate, new_value, new_grad
        iterations += 1
    residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    return Minimum(y, float(value), residual, iterations, certified, step if certified else math.inf)


def _lbfgs(value_and_grad: ValueAndGrad, y: Tensor, tol: float, max_iter: int, eps: float) -> Minimum:
    y = y.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([y], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=tol / math.sqrt(y.numel()),
                                  tolerance_change=eps)

    def closure() -> Tensor:
        value, grad = value_and_grad(y.detach())
        y.grad = grad.detach().clone()
        return value.detach()

    try:
        optimizer.step(closure)
    except (IndexError, RuntimeError):   # torch's strong Wolfe search breaks on non-finite values (phi unbounded)
        return Minimum(y.detach(), math.nan, math.inf, int(optimizer.state[y].get("n_iter", 0)), False)
    iterations = int(optimizer.state[y].get("n_iter", 0))
    y = y.detach()
    value, grad = value_and_grad(y)
    residual = float(torch.linalg.vector_norm(grad))
    return Minimum(y, float(value), residual, iterations, residual <= tol)


def _spg(value_and_grad: ValueAndGrad, y: Tensor, value: Tensor, grad: Tensor, bounds: tuple, tol: float,
         max_iter: int, eps: float, memory: int = 10) -> Minimum:
    """Spectral projected gradient: y+ = P(y - s grad) with the Barzilai-Borwein step s, and a
    backtracking search on y + t (y+ - y) against the largest of the last `memory` values."""
    values = [float(value)]
    step = 1.0 / max(float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds), ord=math.inf)), eps)
    iterations = 0
    residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    while iterations < max_iter and residual > tol:
        direction = project(y - step * grad, bounds) - y
        slope = float(torch.sum(grad * direction))
        reference, t = max(values[-memory:]), 1.0
        while True:
            candidate = y + t * direction
            new_value, new_grad = value_and_grad(candidate)
            if float(new_value) <= reference + 1e-4 * t * slope or t < eps:
                break
            t *= 0.5
        if t < eps:          # no decrease possible at this precision
            break
        s, r = candidate - y, new_grad - grad
        sr = float(torch.sum(s * r))
        step = float(torch.sum(s * s)) / sr if sr > 0 else 1e10
        step = min(max(step, 1e-10), 1e10)
        y, grad = candidate, new_grad
        values.append(float(new_value))
        iterations += 1
        residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    return Minimum(y, values[-1], residual, iterations, residual <= tol)
