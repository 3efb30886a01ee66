"""soba: the single-loop stochastic framework of Dagreou et al. (2022), with plain minibatch
directions; its directions and state are shared with saba, which reduces their variance."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..oracles import Oracle, inner
from ..problem import BilevelProblem
from .base import Aux, Solver, State, check_choice, check_positive, curvature_in_y, lower_diagnostics, step_or


class Directions(NamedTuple):
    """The framework's three directions at (x, y, v) and what came with them.

        D_y = grad_y g,   D_v = grad_yy g v + grad_y f,   D_x = grad_xy g v + grad_x f.
    """

    dy: Tensor
    dv: Tensor
    dx: Tensor
    f: Tensor
    g: Tensor
    grad_y_g: Tensor


def directions(oracle: Oracle, x: Tensor, y: Tensor, v: Tensor) -> Directions:
    """The three directions on the oracle's current batches: grad_y g and the product
    (grad_yx g^T v, grad_yy g v) from one graph of grad_y g (one backward through it), one
    gradient of f."""
    g, gy, jx, jy = oracle.grad_y_g_and_vjp(x, y, v)
    f, fx, fy = oracle.grad_f(x, y)
    return Directions(gy, jy + fy, jx + fx, f, g, gy)


def framework_aux(problem: BilevelProblem, y: Tensor, d: Directions, v: Tensor, step_size: float | Tensor) -> Aux:
    """Diagnostics of the iterate (x, y) the directions were taken at. With nu = v, grad f + J^T nu
    is (D_x, D_v), so the KKT residual of Definition 2.4 comes free: ||D_x||^2 + ||D_v||^2."""
    return Aux({"f": d.f, **lower_diagnostics(problem, y, d.g, d.grad_y_g),
                "kkt_stationarity": inner(d.dx, d.dx) + inner(d.dv, d.dv), "step_size": step_size}, nu=v)


@dataclass(frozen=True)
class FrameworkState(State):
    """State of soba and saba: also v (the estimate of -[grad_yy g]^-1 grad_y f), the initial
    steps resolved by init, whether they decay, and the estimate of L_g behind the default
    (None where the steps were given)."""

    v: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    step_size: float | Tensor = 0.0
    decreasing: bool = False
    lipschitz_g: float | Tensor | None = None


@dataclass(frozen=True)
class Framework(Solver):
    """What soba and saba share: the steps and their schedule (see SOBA)."""

    step_size: float | None = None
    inner_step_size: float | None = None
    schedule: str | None = None
    decay: float = 100.0

    def validate(self) -> None:
        check_positive(self, "step_size", "inner_step_size", allow_none=True)
        check_positive(self, "decay")
        if self.schedule is not None:
            check_choice(self, "schedule", ("constant", "decreasing"))

    def default_schedule(self, oracle: Oracle) -> str:
        return "constant"

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> FrameworkState:
        x, y = problem.x0, problem.y0
        lipschitz_g = curvature_in_y(oracle, x, y, generator) if self.inner_step_size is None else None
        rho = step_or(self.inner_step_size, lipschitz_g, 0.1)
        gamma = rho if self.step_size is None else self.step_size
        decreasing = (self.schedule or self.default_schedule(oracle)) == "decreasing"
        return FrameworkState(x=x, y=y, v=torch.zeros_like(y), inner_step_size=rho, step_size=gamma,
                              decreasing=decreasing, lipschitz_g=lipschitz_g)

    def steps(self, state: FrameworkState) -> tuple[float | Tensor, float | Tensor]:
        """(rho_k, gamma_k): constant, or rho_0 (1 + k/decay)^(-2/5), gamma_0 (1 + k/decay)^(-3/5)."""
        if not state.decreasing:
            return state.inner_step_size, state.step_size
        t = 1.0 + state.k / self.decay
        return state.inner_step_size * t ** -0.4, state.step_size * t ** -0.6

    def advance(self, problem: BilevelProblem, state: FrameworkState, dy: Tensor, dv: Tensor, dx: Tensor,
                **more) -> FrameworkState:
        """y <- P_Y(y - rho D_y), v <- v - rho D_v, x <- P_X(x - gamma D_x), all from the same iterate."""
        rho, gamma = self.steps(state)
        return replace(state, x=problem.project_x(state.x - gamma * dx), y=problem.project_y(state.y - rho * dy),
                       v=state.v - rho * dv, k=state.k + 1, **more)


@dataclass(frozen=True)
class SOBA(Framework):
    """SOBA: stochastic single-loop bilevel optimisation (the framework's SGD).

    y, v (an estimate of -[grad_yy g]^-1 grad_y f, from 0) and x move together along

        D_y = grad_y g_i(x, y),
        D_v = grad_yy g_i(x, y) v + grad_y f_j(x, y),
        D_x = grad_xy g_i(x, y) v + grad_x f_j(x, y),
        y <- P_Y(y - rho_k D_y),   v <- v - rho_k D_v,   x <- P_X(x - gamma_k D_x),

    the three directions taken at the same iterate, with one lower batch i (for D_y and the
    second-order products) and one upper batch j (the loop's minibatches, drawn anew at every
    step): each direction is an unbiased estimate of its full-data value, and on full data
    (no batch_size) this is the deterministic method of the framework. The multiplier of
    grad_y g = 0 it defines is nu = v (kkt_stationarity = ||D_x||^2 + ||D_v||^2, free).

    Cost per step: one gradient of g, one gradient of f and one backward through grad_y g that
    gives both products grad_yy g v and grad_xy g v (the paper counts two products; the Oracle
    counts one n_hvp).

    Args:
        step_size: gamma_0, the step on x. Default None: rho_0 (the ratio 1 of the authors'
            benchmark).
        inner_step_size: rho_0, the step on y and v. Default None: min(0.1, 1/L_g), L_g the largest
            eigenvalue of grad_yy g at (x0, y0) (on the first batch with batch_size) from 20
            Hessian-vector products (`FrameworkState.lipschitz_g`).
        schedule: "decreasing": rho_k = rho_0 (1 + k/decay)^(-2/5), gamma_k = gamma_0
            (1 + k/decay)^(-3/5) (the rates of the paper's Theorem for SOBA); "constant" (the
            authors' benchmark). Default None: "decreasing" on minibatches, "constant" on full data.
        decay: tau of the decreasing schedule. Default 100.

    The default decay keeps a wide margin from the decays that shrink the steps before x
    arrives (benchmarks/RESULTS.md, "Stochastic methods on biased-ridge").

    References:
        Dagreou, Ablin, Vaiter, Moreau. A framework for bilevel optimization that enables
        stochastic and global variance reduction algorithms. NeurIPS 2022 (SOBA, Algorithm 1).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["biased-ridge"](seed=0)
        >>> r = bilevel.solve(p, "soba", max_iter=3000, log_every=3000, batch_size=64, seed=0)
        >>> r.history["relative_gap"][-1] < 0.02
        True
    """

    name: ClassVar[str] = "soba"
    summary: ClassVar[str] = "stochastic single-loop bilevel framework, SGD directions (Dagreou et al. 2022)"

    def default_schedule(self, oracle: Oracle) -> str:
        return "decreasing" if oracle.stochastic else "constant"

    def step(self, problem: BilevelProblem, oracle: Oracle, state: FrameworkState) -> tuple[FrameworkState, Aux]:
        d = directions(oracle, state.x, state.y, state.v)
        return self.advance(problem, state, d.dy, d.dv, d.dx), framework_aux(problem, state.y, d, state.v, self.steps(state)[1])
