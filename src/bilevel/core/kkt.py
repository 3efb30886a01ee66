"""KKT residuals (the seed paper's Definition 2.4) and the implicit gradient.

For the single-level reformulation  min f(x, y) s.t. grad_y g(x, y) = 0  with
multiplier nu in R^m and J = [grad_yx g, grad_yy g] (the Jacobian of grad_y g):

    kkt_feasibility   = ||grad_y g||^2 = h
    kkt_stationarity  = ||grad f + J^T nu||^2
                      = ||grad_x f + grad_yx g^T nu||^2 + ||grad_y f + grad_yy g nu||^2

Where a method defines no multiplier, the least-squares one is used:
nu = argmin ||grad f + J^T nu||^2, i.e. J J^T nu = -J grad f, solved by conjugate gradient.

On a y box the lower level's condition is r = y - P(y - grad_y g) = 0 (the projected gradient):
kkt_feasibility = ||r||^2, and on the coordinates the lower level holds at a bound, grad_y g
need not vanish and the bound's own multiplier takes up the y-component of the upper
gradient: there nu is zero and the y residual is not counted (an active set, `free`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .linear import ConjugateGradient
from .oracles import Oracle, inner
from .problem import BilevelProblem

LEAST_SQUARES = ConjugateGradient(iters=50, tol=1e-12)


def masked(v: Tensor, free: Tensor | None) -> Tensor:
    """v on the free coordinates, zero on the others (v itself where every coordinate is free)."""
    return v if free is None else torch.where(free, v, torch.zeros_like(v))


def kkt_stationarity(oracle: Oracle, x: Tensor, y: Tensor, nu: Tensor,
                     grad_f: tuple[Tensor, Tensor], free: Tensor | None = None) -> Tensor:
    """||grad f + J^T nu||^2 at (x, y) given grad f = (grad_x f, grad_y f) (on a y box: nu and the
    y residual on the `free` coordinates only)."""
    jx, jy = oracle.vjp_grad_y_g(x, y, masked(nu, free))
    rx, ry = grad_f[0] + jx, masked(grad_f[1] + jy, free)
    return inner(rx, rx) + inner(ry, ry)


def least_squares_multiplier(oracle: Oracle, x: Tensor, y: Tensor, grad_f: tuple[Tensor, Tensor],
                             linear_solver=LEAST_SQUARES, free: Tensor | None = None) -> Tensor:
    """nu minimising ||grad f + J^T nu||^2 (J J^T nu = -J grad f by conjugate gradient), on the
    `free` coordinates of a y box."""
    def normal_matvec(v: Tensor) -> Tensor:
        jx, jy = oracle.vjp_grad_y_g(x, y, masked(v, free))
        return masked(oracle.jvp_grad_y_g(x, y, jx, masked(jy, free)), free)

    return linear_solver(normal_matvec, -masked(oracle.jvp_grad_y_g(x, y, grad_f[0], masked(grad_f[1], free)), free))


def kkt_info(oracle: Oracle, x: Tensor, y: Tensor, nu: Tensor | None = None,
             problem: BilevelProblem | None = None) -> dict[str, Tensor]:
    """f, g, h and the KKT residuals at (x, y), with multiplier nu (least squares if None); with
    the problem, on its y box (see the module docstring)."""
    f, gfx, gfy = oracle.grad_f(x, y)
    g, _, gy = oracle.grad_g(x, y)
    free = problem.free_y(y, gy) if problem is not None else None
    r = problem.lower_residual(y, gy) if problem is not None else gy
    if nu is None:
        nu = least_squares_multiplier(oracle, x, y, (gfx, gfy), free=free)
    h = inner(r, r)
    return {"f": f, "g": g, "h": h,
            "kkt_stationarity": kkt_stationarity(oracle, x, y, nu, (gfx, gfy), free),
            "kkt_feasibility": h}


def implicit_gradient(oracle: Oracle, x: Tensor, y: Tensor, linear_solver=LEAST_SQUARES,
                      free: Tensor | None = None) -> Tensor:
    """F(x, y) = grad_x f - grad_yx g^T v with grad_yy g v = grad_y f (eq. 1 of the seed) at the
    given y (no lower-level solve: see `hypergradient`); on a y box, the system and v restricted
    to the `free` coordinates (the active set held fixed: its y do not move with x).

    At `y = y*(x)`, with grad_yy g invertible, F is the gradient of `x -> f(x, y*(x))`.
    """
    _, gfx, gfy = oracle.grad_f(x, y)
    v = linear_solver(lambda u: masked(oracle.vjp_grad_y_g(x, y, masked(u, free))[1], free), masked(gfy, free))
    return gfx - oracle.vjp_grad_y_g(x, y, masked(v, free))[0]
