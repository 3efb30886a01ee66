"""Minimising a smooth function of y to a tolerance: what the verification of an answer (the
lower level re-solved at the final x) and honest metrics (a classifier retrained with fixed
weights) need.

    min_y phi(y)   over R^m:     L-BFGS with a strong Wolfe line search (torch.optim.LBFGS)
                   over a box:   spectral projected gradient (Birgin, Martinez, Raydan 2000):
                                 Barzilai-Borwein steps, a nonmonotone Armijo search on the
                                 projection arc

Both are local methods: from a start near a minimiser of a nonconvex phi they find that one.
Stationarity is measured by the gradient mapping r(y) = y - P(y - grad phi(y)) (the gradient
where there is no box), the residual that is zero exactly at the box's KKT points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Minimum:
    """The result of `minimize`: the point, phi there, the stationarity residual ||r(y)||, the
    iterations used, and whether ||r(y)|| <= tol was reached."""

    y: Tensor
    value: float
    residual: float
    iterations: int
    converged: bool


def project(y: Tensor, bounds: tuple | None) -> Tensor:
    """The projection onto the box `bounds` = (low, high) (None sides unbounded)."""
    return y if bounds is None else torch.clamp(y, min=bounds[0], max=bounds[1])


def gradient_mapping(y: Tensor, grad: Tensor, bounds: tuple | None) -> Tensor:
    """r(y) = y - P(y - grad): grad itself without a box; zero exactly where y is a KKT point
    of min phi over the box (components at a bound with grad pushing outward count as zero)."""
    return grad if bounds is None else y - project(y - grad, bounds)


def minimize(value_and_grad: ValueAndGrad, y0: Tensor, *, bounds: tuple | None = None, tol: float | None = None,
             max_iter: int = 500) -> Minimum:
    """A local minimiser of phi from y0 (see the module docstring).

    Args:
        value_and_grad: y -> (phi(y), grad phi(y)).
        y0: the start (projected onto the box first).
        bounds: a (low, high) box, or None.
        tol: stop once ||r(y)|| <= tol. Default: sqrt(eps) of y's dtype times max(1, ||r(y0)||).
            Both methods also stop when phi stops decreasing at the precision of the dtype.
        max_iter: iterations at most. Default 500.
    """
    y = project(y0.detach().clone(), bounds)
    value, grad = value_and_grad(y)
    residual = float(torch.linalg.vector_norm(gradient_mapping(y, grad, bounds)))
    eps = torch.finfo(y.dtype).eps
    if tol is None:
        tol = math.sqrt(eps) * max(1.0, residual)
    if not math.isfinite(residual):
        return Minimum(y, float(value), residual, 0, False)
    if bounds is None:
        return _lbfgs(value_and_grad, y, tol, max_iter, eps)
    return _spg(value_and_grad, y, value, grad, bounds, tol, max_iter, eps)


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
