"""KKT residuals (the seed paper's Definition 2.4) and the hypergradient.

For the single-level reformulation  min f(x, y) s.t. grad_y g(x, y) = 0  with
multiplier nu in R^m and J = [grad_yx g, grad_yy g] (the Jacobian of grad_y g):

    kkt_feasibility   = ||grad_y g||^2 = h
    kkt_stationarity  = ||grad f + J^T nu||^2
                      = ||grad_x f + grad_yx g^T nu||^2 + ||grad_y f + grad_yy g nu||^2

Where a method defines no multiplier, the least-squares one is used:
nu = argmin ||grad f + J^T nu||^2, i.e. J J^T nu = -J grad f, solved by conjugate gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .linear import ConjugateGradient
from .oracles import Oracle, inner

_LSTSQ = ConjugateGradient(iters=50, tol=1e-12)


def kkt_stationarity(oracle: Oracle, x: Tensor, y: Tensor, nu: Tensor,
                     grad_f: tuple[Tensor, Tensor]) -> Tensor:
    """||grad f + J^T nu||^2 at (x, y) given grad f = (grad_x f, grad_y f)."""
    jx, jy = oracle.vjp_grad_y_g(x, y, nu)
    rx, ry = grad_f[0] + jx, grad_f[1] + jy
    return inner(rx, rx) + inner(ry, ry)


def least_squares_multiplier(oracle: Oracle, x: Tensor, y: Tensor, grad_f: tuple[Tensor, Tensor],
                             linear_solver=_LSTSQ) -> Tensor:
    """nu minimising ||grad f + J^T nu||^2 (J J^T nu = -J grad f by conjugate gradient)."""
    def normal_matvec(v: Tensor) -> Tensor:
        return oracle.jvp_grad_y_g(x, y, *oracle.vjp_grad_y_g(x, y, v))

    return linear_solver(normal_matvec, -oracle.jvp_grad_y_g(x, y, *grad_f))


def kkt_info(oracle: Oracle, x: Tensor, y: Tensor, nu: Tensor | None = None) -> dict[str, Tensor]:
    """f, g, h and the KKT residuals at (x, y), with multiplier nu (least squares if None)."""
    f, gfx, gfy = oracle.grad_f(x, y)
    g, _, gy = oracle.grad_g(x, y)
    if nu is None:
        nu = least_squares_multiplier(oracle, x, y, (gfx, gfy))
    h = inner(gy, gy)
    return {"f": f, "g": g, "h": h,
            "kkt_stationarity": kkt_stationarity(oracle, x, y, nu, (gfx, gfy)),
            "kkt_feasibility": h}


def hypergradient(oracle: Oracle, x: Tensor, y: Tensor, linear_solver=_LSTSQ) -> Tensor:
    """F(x, y) = grad_x f - grad_yx g^T v with grad_yy g v = grad_y f (eq. 1 of the seed).

    At `y = y*(x)`, with grad_yy g invertible, F is the gradient of `x -> f(x, y*(x))`.
    """
    _, gfx, gfy = oracle.grad_f(x, y)
    v = linear_solver(lambda u: oracle.vjp_grad_y_g(x, y, u)[1], gfy)
    return gfx - oracle.vjp_grad_y_g(x, y, v)[0]
