"""iaptt_gm: initialisation auxiliary and pessimistic trajectory truncation (Liu et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import AdaptiveXState, Solver, check_int, check_positive, curvature_in_y, lower_diagnostics, step_or, x_step


@dataclass(frozen=True)
class IAPTTGMState(AdaptiveXState):
    """iaptt_gm's state: also z, the learned initialisation of the lower-level trajectory, and
    the unrolled step resolved by init (L_g: the estimate behind its default)."""

    z: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None


@dataclass(frozen=True)
class IAPTTGM(Solver):
    """Gradient method with an initialisation auxiliary and pessimistic trajectory truncation.

    Each iteration unrolls T projected gradient steps on the lower level from z,

        y_0 = z,   y_t = P_Y(y_{t-1} - s grad_y g(x, y_{t-1})),   t = 1..T,

    truncates pessimistically at p* = argmax_{1<=t<=T} f(x, y_t), and descends the
    truncated objective phi(x, z) = f(x, y_{p*}(x, z)) by back-propagation:

        x <- P_X(x - eta_k d phi/dx),   z <- P_Y(z - lower_step_size d phi/dz),

    with eta_k = step_size, or AdaGrad-norm (`base.x_step`) where step_size is None.
    Choices: x and z take plain projected gradient steps (the paper's data-cleaning runs
    use Adam on x). The reported y is y_T, the last point of the trajectory (the best
    lower-level approximation; y_{p*} is logged through `truncation`). `kkt_stationarity`
    in the per-step info is ||d phi/dx||^2 + ||d phi/dz||^2, the method's own stationarity
    measure (free: the step computes it); the method defines no multiplier, so the final
    row uses the least-squares one.

    Cost per iteration: T gradients of g with graph, T values of f, one gradient of f,
    p* second-order products (the backward), plus one value of f and one gradient of g
    for the diagnostics at (x, y). Not data-parallel (`supports_distributed = False`).

    Args:
        step_size: a fixed step on x (the paper's). Default None: AdaGrad-norm, whose first
            step moves x by x_scale per coordinate (root mean square).
        x_scale: the root-mean-square length of the first x step where step_size is None. Default 0.2.
        lower_step_size: the step on the initialisation z. Default 0.1 (a step on
            phi(x, z) = f(x, y_p*(x, z)), whose curvature in z is that of f, not of g).
        inner_steps: T, the unrolled steps. Default 40 (100 in the paper's data cleaning).
        inner_step_size: s, the unrolled step. Default None: min(0.1, 1/L_g), L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0) by 20 steps of power iteration
            (`IAPTTGMState.lipschitz_g`); the paper analyses s <= 1/L_g. T steps reach y* only
            to a factor (1 - mu_g/L_g)^T: raise inner_steps where grad_yy g is ill-conditioned.

    Measurements behind these defaults: benchmarks/RESULTS.md, section "baselines-a-suite".

    References:
        Liu, Liu, Yuan, Zeng, Zhang. Towards Gradient-based Bilevel Optimization with
        Non-convex Followers and Beyond. NeurIPS 2021 (IAPTT-GM, Algorithm 1).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "iaptt_gm", max_iter=300, log_every=100)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    x_scale: float = 0.2
    lower_step_size: float = 0.1
    inner_steps: int = 40
    inner_step_size: float | None = None

    name: ClassVar[str] = "iaptt_gm"
    # the unrolled backward (Oracle.unrolled_grad) differentiates the local g through T
    # steps; summing it over ranks would need a reduce inside every step's reverse pass
    supports_distributed: ClassVar[bool] = False
    summary: ClassVar[str] = "unrolled GD from a learned start, pessimistic truncation (Liu et al. 2021)"
    cost: ClassVar[str] = "T+1 grad g, T values of f, a backward through p* steps"
    diagnostics: ClassVar[tuple[str, ...]] = ("truncation",)

    def validate(self) -> None:
        check_positive(self, "x_scale", "lower_step_size")
        check_positive(self, "step_size", "inner_step_size", allow_none=True)
        check_int(self, "inner_steps")

    def batch_support(self) -> str:
        return "the pessimistic truncation picks its step index per trajectory, and the unrolled backward uses autograd"

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> IAPTTGMState:
        lipschitz_g = curvature_in_y(oracle, problem.x0, problem.y0, generator) if self.inner_step_size is None else None
        return IAPTTGMState(x=problem.x0, y=problem.y0, z=problem.y0,
                            inner_step_size=step_or(self.inner_step_size, lipschitz_g, 0.1), lipschitz_g=lipschitz_g)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: IAPTTGMState) -> tuple[IAPTTGMState, Aux]:
        g, _, gy = oracle.grad_g(state.x, state.y)
        f = oracle.f(state.x, state.y)
        run = oracle.unrolled_grad(state.x, state.z, self.inner_steps, state.inner_step_size,
                                   project=problem.project_y, select=lambda fv: int(torch.argmax(fv)) + 1)
        aux = Aux({"f": f, **lower_diagnostics(problem, state.y, g, gy),
                   "kkt_stationarity": inner(run.grad_x, run.grad_x) + inner(run.grad_z, run.grad_z),
                   "truncation": float(run.index)})
        eta, memory = x_step(self.step_size, self.x_scale, state, run.grad_x)
        x = problem.project_x(state.x - eta * run.grad_x)
        z = problem.project_y(state.z - self.lower_step_size * run.grad_z)
        return state.replace(x=x, y=run.y_last, z=z, k=state.k + 1, x_memory=memory), aux
