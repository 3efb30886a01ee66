"""sgf: the safe gradient flow for bilevel optimization, discretised by explicit Euler."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..metrics import masked
from ..oracles import Oracle, inner
from ..problem import BilevelProblem
from .base import Aux, Solver, State, check_positive
from .pgdqp import qp_step


@dataclass(frozen=True)
class SGF(Solver):
    """Safe gradient flow (the seed's eq. 5-6) with the relaxed constraint h <= eps^2.

        x' = -grad_x f - lambda grad_x h,   y' = -grad_y f - lambda grad_y h,
        lambda = [ -<grad h, grad f> + alpha (h - eps^2) ]_+ / ||grad h||^2,

    integrated by explicit Euler: (x, y) <- (x, y) + step_size (x', y'). The flow makes
    h decay like exp(-alpha t) towards eps^2 where the QP is feasible.

    Args:
        step_size: the Euler step. Default 0.01.
        alpha: the rate of the constraint's decay. Default 0.1.
        eps: the relaxation, constraint h <= eps^2. Default 0.1.

    References:
        Sharifi, Abolfazli, Hamedani, Fazlyab. Safe Gradient Flow for Bilevel
        Optimization. arXiv:2501.16520, 2025.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["coreset"](seed=0)
        >>> r = bilevel.solve(p, "sgf", max_iter=2000, log_every=1000)
        >>> r.final("upper_objective") < 5e-2
        True
    """

    step_size: float = 0.01
    alpha: float = 0.1
    eps: float = 0.1

    name: ClassVar[str] = "sgf"
    summary: ClassVar[str] = "safe gradient flow with h <= eps^2, explicit Euler (Sharifi et al. 2025)"

    def validate(self) -> None:
        check_positive(self, "step_size", "alpha")
        check_positive(self, "eps", allow_zero=True)

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int, generator: torch.Generator) -> State:
        return State(x=problem.x0, y=problem.y0)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: State) -> tuple[State, Aux]:
        f, fx, fy = oracle.grad_f(state.x, state.y)
        g, gy, h, hx, hy = oracle.h_and_grad(state.x, state.y)
        dx, dy, lam = qp_step((fx, fy), (hx, hy), self.alpha * (h - self.eps ** 2))
        aux = Aux({"f": f, "g": g, "h": h, "kkt_stationarity": inner(dx, dx) + inner(dy, dy), "kkt_feasibility": h,
                   "lambda": lam}, nu=2 * lam * masked(gy, problem.free_y(state.y, gy)))
        x = problem.project_x(state.x + self.step_size * dx)
        y = problem.project_y(state.y + self.step_size * dy)
        return replace(state, x=x, y=y, k=state.k + 1), aux
