"""sgf: the safe gradient flow for bilevel optimization, discretised by explicit Euler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.kkt import masked
from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import AdaptiveXState, Solver, check_positive, x_step
from .pgdqp import qp_step

EULER_STEP = 0.01   # the Euler step of y (and the former joint step) where no step is given


@dataclass(frozen=True)
class SGF(Solver):
    """Safe gradient flow (the seed's eq. 5-6) with the relaxed constraint h <= eps_k^2.

        x' = -grad_x f - lambda grad_x h,   y' = -grad_y f - lambda grad_y h,
        lambda = [ -<grad h, grad f> + alpha (h - eps_k^2) ]_+ / ||grad h||^2,

    integrated by explicit Euler: (x, y) <- (x, y) + step_size (x', y'). The flow makes
    h decay like exp(-alpha t) towards eps_k^2 where the QP is feasible. A fixed eps leaves
    the iterate where h = eps^2, an O(eps) bias in x; the relaxation shrinks along the run,
    eps_k = eps (k + 1)^-eps_power, so that the bias vanishes.

    Args:
        step_size: a fixed Euler step of x and y (the authors' 0.01 was the former default).
            Default None: AdaGrad-norm on x's direction d_x = x' (`base.x_step`),
            step_k = x_scale / sqrt(sum_(i<=k) ||d_x,i||^2 / dim x), and y's Euler step
            lower_step_size; the QP keeps the plain metric.
        x_scale: the root-mean-square length of the first x step when step_size is None. Default 0.1.
        lower_step_size: the Euler step of y. Default None: step_size, or 0.01 where that is None.
        alpha: the rate of the constraint's decay. Default 0.1.
        eps: eps_0, the first relaxation. Default 0.1 (the authors' constant eps).
        eps_power: the decay of eps_k = eps (k + 1)^-eps_power, >= 0 (0: the authors' constant
            eps). Default 0.5.

    Where the defaults fall short (5000 iterations): the Euler step of y is a fixed number, and
    where f or g is scaled by 1e4 the flow is too stiff for it and diverges; at condition 100
    of g x stays about 0.07 from x*, at 1000 about 0.2 (the flow's time, 5000 x 0.01, is too
    short). Measurements: benchmarks/RESULTS.md, sections "baseline-schedules" and "baseline-notes".

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

    step_size: float | None = None
    x_scale: float = 0.1
    lower_step_size: float | None = None
    alpha: float = 0.1
    eps: float = 0.1
    eps_power: float = 0.5

    name: ClassVar[str] = "sgf"
    summary: ClassVar[str] = "safe gradient flow with h <= eps_k^2, explicit Euler (Sharifi et al. 2025)"
    cost: ClassVar[str] = "grad f, one double backward for grad h"
    diagnostics: ClassVar[tuple[str, ...]] = ("eps", "lambda")

    def validate(self) -> None:
        check_positive(self, "alpha", "x_scale")
        check_positive(self, "step_size", "lower_step_size", allow_none=True)
        check_positive(self, "eps", "eps_power", allow_zero=True)

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> AdaptiveXState:
        return AdaptiveXState(x=problem.x0, y=problem.y0)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: AdaptiveXState) -> tuple[AdaptiveXState, Aux]:
        f, fx, fy = oracle.grad_f(state.x, state.y)
        g, gy, h, hx, hy = oracle.h_and_grad(state.x, state.y)
        eps = self.eps * (state.k + 1) ** -self.eps_power
        dx, dy, lam = qp_step((fx, fy), (hx, hy), self.alpha * (h - eps ** 2))
        aux = Aux({"f": f, "g": g, "h": h, "kkt_stationarity": inner(dx, dx) + inner(dy, dy), "kkt_feasibility": h,
                   "lambda": lam, "eps": eps}, nu=2 * lam * masked(gy, problem.free_y(state.y, gy)))
        x_step_size, memory = x_step(self.step_size, self.x_scale, state, dx)
        y_step_size = next(s for s in (self.lower_step_size, self.step_size, EULER_STEP) if s is not None)
        x = problem.project_x(state.x + x_step_size * dx)
        y = problem.project_y(state.y + y_step_size * dy)
        return state.replace(x=x, y=y, k=state.k + 1, x_memory=memory), aux
