"""vpbgd: value-function penalty-based bilevel gradient descent."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..oracles import Oracle
from ..problem import BilevelProblem
from .base import (Aux, Solver, State, capped, check_int, check_positive, curvature_in_y, descend, lower_diagnostics,
                   step_or)


@dataclass(frozen=True)
class VPBGDState(State):
    """vpbgd's state: also w, the persistent approximation of argmin_y g(x, .), the step on w
    resolved by init, and the estimates of L_g and L_f,y behind the default steps (None where
    no default needs them)."""

    w: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


@dataclass(frozen=True)
class VPBGD(Solver):
    """V-PBGD: gradient descent on the penalised problem f + gamma (g(x, y) - min_y g(x, y)).

        w <- T steps of w <- w - inner_step_size grad_y g(x, w)      (w is never reset)
        gamma_k = penalty * min(1, k / penalty_warmup)   (constant when penalty_warmup = 0)
        s = min(1 / gamma_k, 1)
        x <- Proj[x - step_size s (grad_x f + gamma_k (grad_x g(x, y) - grad_x g(x, w)))]
        y <- Proj[y - lower_step_size s (grad_y f + gamma_k grad_y g(x, y))]

    The penalty's gradient gamma (grad g(x, y) - (grad_x g(x, w), 0)) is gamma J^T (y - w) to
    first order in y - w, so the multiplier of grad_y g = 0 it defines is nu = gamma (y - w).

    Cost per step: T + 2 gradients of g (T at w, one at (x, y), grad_x g at w), one gradient
    of f; no second-order products.

    Args:
        step_size: the step on x. Default 0.1 (the paper's data-cleaning upper rate).
        lower_step_size: the step on y. Default None: min(step_size, 1 / (s_k (L_f,y + gamma_k L_g))),
            so that s_k lower_step_size, the step of the y update on f + gamma_k g, is at most
            1/L of that function's y-curvature L_f,y + gamma_k L_g (the paper's step on the penalised
            problem is <= 1/L_gamma, L_gamma >= L_f + gamma L_g; with gamma_k >= 1 this is
            the step 1/(L_f,y / gamma_k + L_g) on f / gamma_k + g). L_g and L_f,y are the
            largest |eigenvalues| of grad_yy g and grad_yy f at (x0, y0), estimated at the
            start by 20 steps of power iteration on Hessian-vector products
            (`VPBGDState.lipschitz_g`, `.lipschitz_f_y`). The former default, step_size, diverges
            once L_g > 20.
        inner_steps: T. Default 1 (the paper's setting).
        inner_step_size: the step on w. Default None: min(0.1, 1/L_g) (gradient descent on the
            L_g-smooth g(x, .), analysed with a step <= 1/L_g).
        penalty: gamma (its final value with a warm-up). Default 10.
        penalty_warmup: iterations over which gamma rises linearly from 0, as in the
            authors' code; 0 keeps it constant, as in the theory. Default 0.

    References:
        Shen, Chen. On Penalty-based Bilevel Gradient Descent Method. ICML 2023.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "vpbgd", max_iter=5000, log_every=1000)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float = 0.1
    lower_step_size: float | None = None
    inner_steps: int = 1
    inner_step_size: float | None = None
    penalty: float = 10.0
    penalty_warmup: int = 0

    name: ClassVar[str] = "vpbgd"
    summary: ClassVar[str] = "value-function penalty gradient descent, persistent w (Shen & Chen 2023)"

    def validate(self) -> None:
        check_positive(self, "step_size", "penalty")
        check_positive(self, "lower_step_size", "inner_step_size", allow_none=True)
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

    def step(self, problem: BilevelProblem, oracle: Oracle, state: VPBGDState) -> tuple[VPBGDState, Aux]:
        x, y = state.x, state.y
        w = descend(problem, oracle, x, state.w, steps=self.inner_steps, step_size=state.inner_step_size)
        gamma = self.penalty * (min(1.0, state.k / self.penalty_warmup) if self.penalty_warmup else 1.0)
        s = min(1.0 / gamma, 1.0) if gamma > 0 else 1.0
        f, fx, fy = oracle.grad_f(x, y)
        g, gx, gy = oracle.grad_g(x, y)
        gx_w = oracle.grad_g_x(x, w)
        aux = Aux({"f": f, **lower_diagnostics(problem, y, g, gy), "penalty": gamma}, nu=gamma * (y - w))
        x_new = problem.project_x(x - self.step_size * s * (fx + gamma * (gx - gx_w)))
        if self.lower_step_size is None:   # s * y_step = min(step_size s, 1 / (L_f,y + gamma L_g))
            y_step = capped(self.step_size * s, state.lipschitz_f_y + gamma * state.lipschitz_g)
        else:
            y_step = self.lower_step_size * s
        y_new = problem.project_y(y - y_step * (fy + gamma * gy))
        return replace(state, x=x_new, y=y_new, w=w, k=state.k + 1), aux
