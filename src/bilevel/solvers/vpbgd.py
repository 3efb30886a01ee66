"""vpbgd: value-function penalty-based bilevel gradient descent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import (AdaptiveXState, Solver, capped, check_int, check_positive, curvature_in_y, descend,
                   lower_diagnostics, step_or, x_step)


@dataclass(frozen=True)
class VPBGDState(AdaptiveXState):
    """vpbgd's state: also w, the persistent approximation of argmin_y g(x, .), the step on w
    resolved by init, and the estimates of L_g and L_f,y behind the default steps (None where
    no default needs them)."""

    w: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


JOINT_STEP = 0.1   # the cap of y's step (and the former x step) where step_size is None


@dataclass(frozen=True)
class VPBGD(Solver):
    """V-PBGD: gradient descent on the penalised problem f + gamma (g(x, y) - min_y g(x, y)).

        w <- T steps of w <- w - inner_step_size grad_y g(x, w)      (w is never reset)
        gamma_k = penalty (k + 1)^penalty_power min(1, k / penalty_warmup)   (no warm-up factor when 0)
        s_k = min(1 / gamma_k, 1)
        d_k = s_k (grad_x f + gamma_k (grad_x g(x, y) - grad_x g(x, w)))
        x <- Proj[x - step_k d_k]
        y <- Proj[y - lower_step_size s_k (grad_y f + gamma_k grad_y g(x, y))]

    The penalty's gradient gamma (grad g(x, y) - (grad_x g(x, w), 0)) is gamma J^T (y - w) to
    first order in y - w, so the multiplier of grad_y g = 0 it defines is nu = gamma (y - w).
    A solution of the penalised problem with a fixed gamma is an O(1/gamma)-solution of the
    bilevel problem (Shen and Chen, Theorem 3); the growing gamma_k removes that bias.

    Cost per step: T + 2 gradients of g (T at w, one at (x, y), grad_x g at w), one gradient
    of f; no second-order products.

    Args:
        step_size: a fixed step on x (the paper's data-cleaning upper rate 0.1 was the former
            default; a number also sets y's cap below). Default None: AdaGrad-norm on d_k
            (`base.x_step`), step_k = x_scale / sqrt(sum_(i<=k) ||d_i||^2 / dim x).
        x_scale: the root-mean-square length of the first x step when step_size is None. Default 0.2.
        lower_step_size: the step on y. Default None: min(c, 1 / (s_k (L_f,y + gamma_k L_g))) with
            c = step_size, or 0.1 where that is None, so that s_k lower_step_size, the step of the
            y update on f + gamma_k g, is at most 1/L of that function's y-curvature
            L_f,y + gamma_k L_g (the paper's step on the penalised problem is <= 1/L_gamma). L_g
            and L_f,y are the largest |eigenvalues| of grad_yy g and grad_yy f at (x0, y0),
            estimated at the start by 20 steps of power iteration on Hessian-vector products
            (`VPBGDState.lipschitz_g`, `.lipschitz_f_y`).
        inner_steps: T. Default 1 (the paper's setting).
        inner_step_size: the step on w. Default None: min(0.1, 1/L_g) (gradient descent on the
            L_g-smooth g(x, .), analysed with a step <= 1/L_g).
        penalty: gamma_0. Default 10.
        penalty_power: p in gamma_k = gamma_0 (k + 1)^p, >= 0 (0: the theory's constant gamma).
            Default 0.25.
        penalty_warmup: iterations over which gamma rises linearly from 0, as in the
            authors' code; 0: no warm-up. Default 0.

    Where the defaults fall short (5000 iterations): at condition 1000 of g x stays about 0.3
    from x* (w and y contract by about 1 - 1/cond per iteration), and where f and g are scaled
    apart (f by 1e-2, g by 1e4, or the reverse) gamma_0 = 10 is too strong or too weak a
    penalty: it is a number in units of f / g. Measurements: benchmarks/RESULTS.md, sections
    "baseline-schedules" and "baseline-notes".

    References:
        Shen, Chen. On Penalty-based Bilevel Gradient Descent Method. ICML 2023.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "vpbgd", max_iter=5000, log_every=1000)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    x_scale: float = 0.2
    lower_step_size: float | None = None
    inner_steps: int = 1
    inner_step_size: float | None = None
    penalty: float = 10.0
    penalty_power: float = 0.25
    penalty_warmup: int = 0

    name: ClassVar[str] = "vpbgd"
    summary: ClassVar[str] = "value-function penalty gradient descent, persistent w (Shen & Chen 2023)"
    cost: ClassVar[str] = "T+2 grad g, grad f"
    diagnostics: ClassVar[tuple[str, ...]] = ("penalty",)

    def validate(self) -> None:
        check_positive(self, "penalty", "x_scale")
        check_positive(self, "step_size", "lower_step_size", "inner_step_size", allow_none=True)
        check_positive(self, "penalty_power", allow_zero=True)
        check_int(self, "inner_steps")
        check_int(self, "penalty_warmup", minimum=0)

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> VPBGDState:
        x, y = problem.x0, problem.y0
        needs_g = self.inner_step_size is None or self.lower_step_size is None
        lipschitz_g = curvature_in_y(oracle, x, y, generator) if needs_g else None
        lipschitz_f_y = curvature_in_y(oracle, x, y, generator, of="f") if self.lower_step_size is None else None
        return VPBGDState(x=x, y=y, w=y, inner_step_size=step_or(self.inner_step_size, lipschitz_g, 0.1),
                          lipschitz_g=lipschitz_g, lipschitz_f_y=lipschitz_f_y)

    def penalty_at(self, k: int) -> float:
        """gamma_k."""
        warm = min(1.0, k / self.penalty_warmup) if self.penalty_warmup else 1.0
        return self.penalty * (k + 1) ** self.penalty_power * warm

    def step(self, problem: BilevelProblem, oracle: Oracle, state: VPBGDState) -> tuple[VPBGDState, Aux]:
        x, y = state.x, state.y
        w = descend(problem, oracle, x, state.w, steps=self.inner_steps, step_size=state.inner_step_size)
        gamma = self.penalty_at(state.k)
        s = min(1.0 / gamma, 1.0) if gamma > 0 else 1.0
        f, fx, fy = oracle.grad_f(x, y)
        g, gx, gy = oracle.grad_g(x, y)
        gx_w = oracle.grad_g_x(x, w)
        aux = Aux({"f": f, **lower_diagnostics(problem, y, g, gy), "penalty": gamma}, nu=gamma * (y - w))
        d_x = s * (fx + gamma * (gx - gx_w))
        x_step_size, memory = x_step(self.step_size, self.x_scale, state, d_x)
        x_new = problem.project_x(x - x_step_size * d_x)
        if self.lower_step_size is None:   # s * y_step = min(c s, 1 / (L_f,y + gamma L_g))
            joint = JOINT_STEP if self.step_size is None else self.step_size
            y_step = capped(joint * s, state.lipschitz_f_y + gamma * state.lipschitz_g)
        else:
            y_step = self.lower_step_size * s
        y_new = problem.project_y(y - y_step * (fy + gamma * gy))
        return state.replace(x=x_new, y=y_new, w=w, k=state.k + 1, x_memory=memory), aux
