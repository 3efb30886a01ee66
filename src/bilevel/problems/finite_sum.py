"""A finite-sum bilevel problem with a known full-batch optimum: ridge regression biased
towards a mean that is learned on validation data, in a low-dimensional subspace (learning
to learn around a common mean; a linear hyper-representation).

    min_x  F(x) = f(x, y*(x)) = (1/2m) sum_j (a'_j^T y*(x) - b'_j)^2                      (m validation samples)
    s.t.   y*(x) = argmin_y (1/2n) sum_i (a_i^T y - b_i)^2 + mu/2 ||y - P x||^2         (n training samples)

Both levels are averages over samples (`upper_data`, `lower_data`), so `solve(..., batch_size=B)`
runs every method on minibatches. The lower level is strongly convex and y*(x) is affine in x,

    y*(x) = K (A^T b / n + mu P x),   K = (A^T A / n + mu I)^{-1},

so F is a strongly convex quadratic of x whose minimiser has a closed form (a p x p solve): the
full-batch optimum x* and F(x*) are exact (`info["x_star"]`, `info["value_star"]`), and so is F(x)
at every x (the metric `hyper_objective`), whatever the run's y.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..core import checks
from ..core.problem import BilevelProblem
from .synthetic import _generator, _placement


def squared_loss(x: Tensor, y: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """f(x, y, batch) = (1/2|B|) sum_{i in B} (a_i^T y - b_i)^2 (f depends on x only through y*)."""
    a, b = batch
    return 0.5 * ((a @ y - b) ** 2).mean()


def biased_ridge_loss(x: Tensor, y: Tensor, batch: tuple[Tensor, Tensor], *, basis: Tensor, mu: float) -> Tensor:
    """g(x, y, batch) = (1/2|B|) sum_{i in B} (a_i^T y - b_i)^2 + mu/2 ||y - P x||^2."""
    a, b = batch
    return 0.5 * ((a @ y - b) ** 2).mean() + 0.5 * mu * ((y - basis @ x) ** 2).sum()


def biased_ridge(seed: int = 0, *, n_train: int = 1000, n_val: int = 500, dim: int = 10, rank: int = 3,
                 noise: float = 3.0, mu: float = 1.0, device: Any = None,
                 dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Ridge regression biased towards a learned mean P x (P: dim x rank, orthonormal columns):
    a finite sum at both levels with an exact full-batch optimum.

    Features a_i ~ N(0, diag(s)^2), scales s spread over [0.5, 2] (cond(A^T A / n) about 16);
    true coefficients w = P c + 0.3 e (mostly, not entirely, in the span of P: F(x*) > 0);
    training targets b_i = a_i^T w + noise eps_i; validation targets noise-free, so that
    F(x) is the estimation error of y*(x) alone and a relative gap in F measures how far x is
    from x*. x in R^rank, x0 = 0 (y*(0) is ridge towards zero: F(x0) is several times F(x*));
    y0 = 0.

    Args:
        seed: seed of the data. Default 0.
        n_train: training samples n (the lower level's finite sum). Default 1000.
        n_val: validation samples m (the upper level's finite sum). Default 500.
        dim: features, the dimension of y. Default 10.
        rank: the dimension of x (of the subspace of P). Default 3.
        noise: standard deviation of the training targets' noise. Default 3.0 (enough that SGD with
            constant steps hovers above 1% of F(x*) at batch size 64).
        mu: the weight of the bias towards P x. Default 1.0.
        device: where the data live. Default CPU.
        dtype: floating dtype. Default float64.

    `info` holds `x_star`, `value_star` = F(x*) (full batch, exact), the `basis` P, and the exact
    `hyper_objective(x)` and `lower_solution(x)`. Metrics at logged rows: `hyper_objective`
    F(x) (with y*(x) exact), `relative_gap` (F(x) - F(x*)) / F(x*) and
    `distance_to_solution` ||x - x*||.

    References:
        Denevi, Ciliberto, Stamos, Pontil. Learning To Learn Around A Common Mean. NeurIPS 2018
        (the biased regularisation); its bilevel form as a test problem is ours.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["biased-ridge"](seed=0)
        >>> p.lower_data.size, p.upper_data.size, tuple(p.info["x_star"].shape)
        (1000, 500, (3,))
    """
    n_train, n_val, dim, rank = (checks.integer(name, value, 1) for name, value in
                                 (("n_train", n_train), ("n_val", n_val), ("dim", dim), ("rank", rank)))
    if rank > dim:
        raise ValueError(f"Invalid rank: {rank} (expected at most dim = {dim})")
    noise = checks.number("noise", noise, minimum=0)
    mu = checks.number("mu", mu, positive=True)
    placement = _placement(device, dtype)
    gen = _generator(seed)
    d64 = torch.float64
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=gen, dtype=d64))
    scales = torch.linspace(0.5, 2.0, dim, dtype=d64)[torch.randperm(dim, generator=gen)]
    w = basis @ torch.randn(rank, generator=gen, dtype=d64) + 0.3 * torch.randn(dim, generator=gen, dtype=d64)
    A = torch.randn(n_train, dim, generator=gen, dtype=d64) * scales
    b = A @ w + noise * torch.randn(n_train, generator=gen, dtype=d64)
    A_val = torch.randn(n_val, dim, generator=gen, dtype=d64) * scales
    b_val = A_val @ w
    # y*(x) = y_0 + Z x; F(x) = 1/2 y^T S y - y^T m_v + c_v with S, m_v, c_v the validation moments
    K = torch.linalg.inv(A.T @ A / n_train + mu * torch.eye(dim, dtype=d64))
    y_0, Z = K @ (A.T @ b / n_train), mu * K @ basis
    S, m_v, c_v = A_val.T @ A_val / n_val, A_val.T @ b_val / n_val, 0.5 * float(b_val @ b_val) / n_val
    x_star = torch.linalg.solve(Z.T @ S @ Z, Z.T @ (m_v - S @ y_0))
    gradient = Z.T @ (S @ (y_0 + Z @ x_star) - m_v)
    if float(gradient.norm()) > 1e-10 * max(1.0, float(m_v.norm())):   # the normal equations were solved
        raise RuntimeError(f"biased_ridge: |grad F(x*)| = {float(gradient.norm()):.1e} (ill-conditioned data)")

    def exact_value(x: Tensor) -> Tensor:
        y = y_0 + Z @ x
        return 0.5 * y @ (S @ y) - y @ m_v + c_v

    value_star = float(exact_value(x_star))
    data = [t.to(**placement) for t in (A, b, A_val, b_val)]
    moved = {name: t.to(**placement) for name, t in (("y_0", y_0), ("Z", Z), ("S", S), ("m_v", m_v),
                                                      ("x_star", x_star), ("basis", basis))}

    def hyper_objective(x: Tensor) -> Tensor:
        """F(x) = f(x, y*(x)) on all the validation data, exact."""
        y = moved["y_0"] + moved["Z"] @ x
        return 0.5 * y @ (moved["S"] @ y) - y @ moved["m_v"] + c_v

    def lower_solution(x: Tensor) -> Tensor:
        """y*(x), exact."""
        return moved["y_0"] + moved["Z"] @ x

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        value = float(hyper_objective(x))
        return {"hyper_objective": value, "relative_gap": (value - value_star) / value_star,
                "distance_to_solution": float((x - moved["x_star"]).norm())}

    info = {"seed": seed, "n_train": n_train, "n_val": n_val, "dim": dim, "rank": rank, "noise": noise, "mu": mu,
            "x_star": x_star, "value_star": value_star, "basis": moved["basis"], "hyper_objective": hyper_objective,
            "lower_solution": lower_solution}
    return BilevelProblem(squared_loss, partial(biased_ridge_loss, basis=moved["basis"], mu=mu),
                          torch.zeros(rank, **placement), torch.zeros(dim, **placement),
                          upper_data=(data[2], data[3]), lower_data=(data[0], data[1]), metrics=metrics,
                          name="biased-ridge", info=info)


