"""f2ba: fully first-order bilevel approximation by a value-function penalty (Chen et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from torch import Tensor

from .. import metrics
from ..oracles import Oracle
from ..problem import BilevelProblem
from .base import Aux, Solver, State, capped, check_int, check_positive, curvature_in_y, descend, lower_diagnostics


@dataclass(frozen=True)
class F2BAState(State):
    """f2ba's state: also the step of its inner loops, resolved by init, and the estimates of L_g
    and L_f,y behind its default (None where the step was given)."""

    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


@dataclass(frozen=True)
class F2BA(Solver):
    """Fully first-order bilevel approximation: the penalty L(x, y) = f + lam (g - min g).

    Iteration (z from y, y warm-started from the previous iteration; eta = inner_step_size):

        z <- P_Y(z - eta grad_y g(x, z))                       T times, z_0 = y
        y <- P_Y(y - eta (grad_y f(x, y) / lam + grad_y g(x, y)))   T times
        x <- P_X(x - step_size (grad_x f(x, y) + lam (grad_x g(x, y) - grad_x g(x, z))))

    The x step uses the loops' last y and z. The multiplier of grad_y g = 0 this defines
    is nu = lam (y - z) (the penalty's gradient is grad f + J^T nu to first order);
    `kkt_stationarity` at the pre-step iterate uses it, at one extra second-order product.

    Cost per iteration: 2T + 3 gradients in the paper's count, where a gradient of
    f / lam + g is one; the Oracle counts its two parts, so T + 1 gradients of f and
    2T + 2 of g, plus one product for the KKT residual.

    Args:
        step_size: the step on x. Default 0.05.
        penalty: lam. Default 100.0: the paper's experiments use 10, and theory takes
            lam ~ 1/eps; with 10 the O(1/lam) bias leaves x about 0.05 from x* on the
            library's quadratic, so the default takes the larger value.
        inner_steps: T. Default 10.
        inner_step_size: eta, the step of both inner loops. Default None:
            min(0.1, 1 / (L_f,y / lam + L_g)), with 1 / (...) the smoothness constant of the y loop's f / lam + g
            (the paper's step condition; the z loop on g alone needs <= 1/L_g, which this
            satisfies). L_g and L_f,y are the largest |eigenvalues| of grad_yy g and grad_yy f
            at (x0, y0), estimated at the start by 20 steps of power iteration on
            Hessian-vector products (`F2BAState.lipschitz_g`, `.lipschitz_f_y`). The former
            default 0.1 diverges once L_g > 20.

    z restarts from the current y at every iteration (as implemented; whether the paper's
    Algorithm 1 warm-starts z from its previous value is unverified). With T steps of eta,
    z - z* = (I - eta grad_yy g)^T (y - z*) on a quadratic g, so the implicit term
    lam (grad_x g(x, y) - grad_x g(x, z)) falls short by that factor where y is not yet at
    z* (1 - mu_g / L_g per step on the slowest direction): a bias of x that grows with
    cond(grad_yy g). Measured with eta = 1/L_g: 3.3e-3 from x* where grad_yy g = I (z exact
    after one step, what remains is the O(1/lam) bias) but 5.4e-2 at cond 10 and 0.57 at
    cond 100 (5000 steps); z warm-started from the previous iteration gave 1.3e-3 at cond 10
    in the robustness study.

    References:
        Chen, Xu, Zhang. Near-Optimal Nonconvex-Strongly-Convex Bilevel Optimization with
        Fully First-Order Oracles. COLT 2024 (F2BA, Algorithm 1).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "f2ba", max_iter=500, log_every=100)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float = 0.05
    penalty: float = 100.0
    inner_steps: int = 10
    inner_step_size: float | None = None

    name: ClassVar[str] = "f2ba"
    summary: ClassVar[str] = "fully first-order value-function penalty with two inner loops (Chen et al. 2024)"

    def validate(self) -> None:
        check_positive(self, "step_size", "penalty")
        check_positive(self, "inner_step_size", allow_none=True)
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
        return F2BAState(x=x, y=y, inner_step_size=eta, lipschitz_g=lipschitz_g, lipschitz_f_y=lipschitz_f_y)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: F2BAState) -> tuple[F2BAState, Aux]:
        x, lam, eta = state.x, self.penalty, state.inner_step_size
        z = descend(problem, oracle, x, state.y, steps=self.inner_steps, step_size=eta)
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
        aux = Aux({"f": f0, **lower_diagnostics(problem, state.y, g0, gy0),
                   "kkt_stationarity": metrics.kkt_stationarity(oracle, x, state.y, nu, grad_f0,
                                                                problem.free_y(state.y, gy0))}, nu=nu)
        return replace(state, x=problem.project_x(x - self.step_size * d_x), y=y, k=state.k + 1), aux
