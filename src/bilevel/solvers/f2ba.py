"""f2ba: fully first-order bilevel approximation by a value-function penalty (Chen et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core import kkt
from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import (AdaptiveXState, Solver, capped, check_int, check_positive, curvature_in_y, descend,
                   lower_diagnostics, x_step)


@dataclass(frozen=True)
class F2BAState(AdaptiveXState):
    """f2ba's state: also z, the approximation of argmin_y g(x, .) warm-started from one iteration
    to the next, the step of the inner loops resolved by init, and the estimates of L_g and L_f,y
    behind its default (None where the step was given)."""

    z: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


@dataclass(frozen=True)
class F2BA(Solver):
    """Fully first-order bilevel approximation: the penalty L(x, y) = f + lam (g - min g).

    Iteration k (y and z warm-started from iteration k - 1; eta = inner_step_size):

        lam_k = penalty (k + 1)^penalty_power
        z <- P_Y(z - eta grad_y g(x, z))                               T times
        y <- P_Y(y - eta (grad_y f(x, y) / lam_k + grad_y g(x, y)))    T times
        d_k = grad_x f(x, y) + lam_k (grad_x g(x, y) - grad_x g(x, z))
        x <- P_X(x - step_k d_k)

    The x step uses the loops' last y and z. d_k is the gradient of the penalised value function
    min_y L; its distance to the hypergradient is O(1/lam) (Chen et al., Lemma 4.1), so a fixed
    lam leaves an O(1/lam) bias, which the growing lam_k (as F2SA's, Kwon et al. 2023) removes.
    The multiplier of grad_y g = 0 this defines is nu = lam_k (y - z); `kkt_stationarity` at the
    pre-step iterate uses it, at one extra second-order product.

    Cost per iteration: 2T + 3 gradients in the paper's count, where a gradient of
    f / lam + g is one; the Oracle counts its two parts, so T + 1 gradients of f and
    2T + 2 of g, plus one product for the KKT residual.

    Args:
        step_size: a fixed step on x (the paper's; the former default 0.05). Default None:
            AdaGrad-norm on d_k (`base.x_step`), step_k = x_scale / sqrt(sum_(i<=k) ||d_i||^2 / dim x).
        x_scale: the root-mean-square length of the first x step when step_size is None. Default 0.2.
        penalty: lam_0. Default 10.0 (the paper's experiments).
        penalty_power: p in lam_k = lam_0 (k + 1)^p, >= 0 (0: the paper's fixed lam). Default 0.5.
        inner_steps: T. Default 10.
        inner_step_size: eta, the step of both inner loops. Default None:
            min(0.1, 1 / (L_f,y / lam_0 + L_g)), with 1 / (...) the smoothness constant of the
            y loop's f / lam + g for every lam >= lam_0 (the paper's step condition; the z loop
            on g alone needs <= 1/L_g, which this satisfies). L_g and L_f,y are the largest
            |eigenvalues| of grad_yy g and grad_yy f at (x0, y0), estimated at the start by 20
            steps of power iteration on Hessian-vector products (`F2BAState.lipschitz_g`,
            `.lipschitz_f_y`).

    Where the defaults fall short (5000 iterations): lam_0 = 10 is a number in units of f / g,
    so where f is scaled by 1e4 and g by 1e-2 x stays about 0.09 from x*. Measurements:
    benchmarks/RESULTS.md, sections "baseline-schedules" and "baseline-notes".

    References:
        Chen, Xu, Zhang. Near-Optimal Nonconvex-Strongly-Convex Bilevel Optimization with
        Fully First-Order Oracles. COLT 2024 (F2BA, Algorithm 1).
        Kwon, Kwon, Wright, Nowak. A Fully First-Order Method for Stochastic Bilevel
        Optimization. ICML 2023 (the growing penalty).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "f2ba", max_iter=500, log_every=100)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    x_scale: float = 0.2
    penalty: float = 10.0
    penalty_power: float = 0.5
    inner_steps: int = 10
    inner_step_size: float | None = None

    name: ClassVar[str] = "f2ba"
    summary: ClassVar[str] = "fully first-order value-function penalty with two inner loops (Chen et al. 2024)"
    cost: ClassVar[str] = "2T+2 grad g, T+1 grad f"
    diagnostics: ClassVar[tuple[str, ...]] = ("penalty",)

    def validate(self) -> None:
        check_positive(self, "penalty", "x_scale")
        check_positive(self, "step_size", "inner_step_size", allow_none=True)
        check_positive(self, "penalty_power", allow_zero=True)
        check_int(self, "inner_steps")

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> F2BAState:
        x, y = problem.x0, problem.y0
        eta = self.inner_step_size
        lipschitz_g = lipschitz_f_y = None
        if eta is None:
            lipschitz_g = curvature_in_y(oracle, x, y, generator)
            lipschitz_f_y = curvature_in_y(oracle, x, y, generator, of="f")
            eta = capped(0.1, lipschitz_f_y / self.penalty + lipschitz_g)
        return F2BAState(x=x, y=y, z=y, inner_step_size=eta, lipschitz_g=lipschitz_g, lipschitz_f_y=lipschitz_f_y)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: F2BAState) -> tuple[F2BAState, Aux]:
        x, eta = state.x, state.inner_step_size
        lam = self.penalty * (state.k + 1) ** self.penalty_power
        z = descend(problem, oracle, x, state.z, steps=self.inner_steps, step_size=eta)
        y = state.y
        for t in range(self.inner_steps):
            f_t, fx_t, fy_t = oracle.grad_f(x, y)
            g_t, _, gy_t = oracle.grad_g(x, y)
            if t == 0:  # the pre-step iterate's diagnostics come free with the first step
                f0, g0, grad_f0, gy0 = f_t, g_t, (fx_t, fy_t), gy_t
            y = problem.project_y(y - eta * (fy_t / lam + gy_t))
        _, fx, _ = oracle.grad_f(x, y)
        d_x = fx + lam * (oracle.grad_g_x(x, y) - oracle.grad_g_x(x, z))
        nu = lam * (y - z)
        aux = Aux({"f": f0, **lower_diagnostics(problem, state.y, g0, gy0), "penalty": lam,
                   "kkt_stationarity": kkt.kkt_stationarity(oracle, x, state.y, nu, grad_f0,
                                                                problem.free_y(state.y, gy0))}, nu=nu)
        x_step_size, memory = x_step(self.step_size, self.x_scale, state, d_x)
        return state.replace(x=problem.project_x(x - x_step_size * d_x), y=y, z=z, k=state.k + 1,
                             x_memory=memory), aux
