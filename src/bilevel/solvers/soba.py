"""soba: the single-loop stochastic framework of Dagreou et al. (2022), with plain minibatch
directions; its directions and state are shared with saba, which reduces their variance."""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux, checksum
from .base import (AdaptiveXState, Solver, as_float, capped, check_choice, check_int, check_positive, curvature_in_y,
                   lower_diagnostics, step_or, x_step)


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


def fused_update(problem: BilevelProblem, adaptive: bool, scale: float) -> Callable:
    """The framework's whole step as one function of tensors, for `Oracle.fused` (one compiled
    graph on oracle="compiled"): from (x, y, v, rho, gamma, S) with the current batches,

        D_y, D_v, D_x as `directions`,   S <- S + ||D_x||^2 / dim x,   gamma <- scale / sqrt(S) (adaptive),
        y <- P_Y(y - rho D_y),   v <- v - rho D_v,   x <- P_X(x - gamma D_x),

    returning (x, y, v, S, gamma, f, g, h, kkt_stationarity, checksum), f to kkt_stationarity at the
    given iterate (`framework_aux`), checksum the sum of the new x and y and the diagnostics
    (`Aux.checksum`). Without the adaptive step, gamma and S pass through. S = 0 before the
    first step gives `base.x_step`'s first sum exactly."""
    def update(ops: Any, x: Tensor, y: Tensor, v: Tensor, rho: Tensor, gamma: Tensor, memory: Tensor):
        g, gy, jx, jy = ops.grad_y_g_and_vjp(x, y, v)
        f, fx, fy = ops.grad_f(x, y)
        dv, dx = jy + fy, jx + fx
        if adaptive:
            memory = memory + inner(dx, dx) / dx.numel()
            gamma = scale / torch.sqrt(torch.clamp(memory, min=torch.finfo(memory.dtype).tiny))
        r = problem.lower_residual(y, gy)
        new_x, new_y, h, kkt = problem.project_x(x - gamma * dx), problem.project_y(y - rho * gy), inner(r, r), \
            inner(dx, dx) + inner(dv, dv)
        total = checksum(new_x, new_y, (f, g, h, h, kkt, gamma))   # the diagnostics of `fused_step`'s Aux
        return new_x, new_y, v - rho * dv, memory, gamma, f, g, h, kkt, total
    return update


@dataclass(frozen=True)
class FrameworkState(AdaptiveXState):
    """State of soba and saba: also v (the estimate of -[grad_yy g]^-1 grad_y f), the initial
    steps resolved by init (step_size None: the adaptive x step, whose memory is x_memory),
    whether they decay, and the estimate of L_g behind the default (None where the steps were
    given)."""

    v: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    step_size: float | Tensor | None = None
    decreasing: bool = False
    lipschitz_g: float | Tensor | None = None
    curvature_direction: Tensor | None = None


@dataclass(frozen=True)
class Framework(Solver):
    """What soba and saba share: the steps and their schedule (see SOBA)."""

    step_size: float | None = None
    inner_step_size: float | None = None
    schedule: str | None = None
    decay: float = 100.0
    x_scale: float = 0.1
    curvature_every: int = 10

    def validate(self) -> None:
        check_positive(self, "step_size", "inner_step_size", allow_none=True)
        check_positive(self, "decay", "x_scale")
        check_int(self, "curvature_every")
        if self.schedule is not None:
            check_choice(self, "schedule", ("constant", "decreasing"))

    def default_schedule(self, oracle: Oracle) -> str:
        return "constant"

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> FrameworkState:
        x, y = problem.x0, problem.y0
        lipschitz_g = curvature_in_y(oracle, x, y, generator) if self.inner_step_size is None else None
        rho = step_or(self.inner_step_size, lipschitz_g, 0.1)
        decreasing = (self.schedule or self.default_schedule(oracle)) == "decreasing"
        stochastic = oracle.stochastic
        gamma = self.step_size if self.step_size is not None else None if stochastic else rho
        direction = torch.ones_like(y) / y.numel() ** 0.5 if lipschitz_g is not None and stochastic else None
        return FrameworkState(x=x, y=y, v=torch.zeros_like(y), inner_step_size=rho, step_size=gamma,
                              decreasing=decreasing, lipschitz_g=lipschitz_g, curvature_direction=direction)

    def refresh(self, oracle: Oracle, state: FrameworkState) -> FrameworkState:
        """Every `curvature_every` steps where rho is the default: one step of power iteration on
        grad_yy g (the current lower batch) from the last direction, L_g <- max(L_g, ||grad_yy g u||)
        and rho_0 <- min(0.1, 1/L_g). ||grad_yy g u|| <= the largest eigenvalue for a unit u, so
        L_g never exceeds the largest curvature met; warm-started, u turns to the stiffest
        direction as the curvature grows along the run (x moving into a stiffer lower level)."""
        if state.curvature_direction is None or state.k == 0 or state.k % self.curvature_every:
            return state
        w = oracle.vjp_grad_y_g(state.x, state.y, state.curvature_direction)[1]
        norm = torch.sqrt(inner(w, w))
        lipschitz_g = torch.maximum(torch.as_tensor(state.lipschitz_g, dtype=norm.dtype, device=norm.device), norm)
        direction = w / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny)
        if not isinstance(state.lipschitz_g, Tensor):
            lipschitz_g = as_float(lipschitz_g)
        return state.replace(lipschitz_g=lipschitz_g, inner_step_size=capped(0.1, lipschitz_g),
                             curvature_direction=direction)

    def steps(self, state: FrameworkState) -> tuple[float | Tensor, float | Tensor | None]:
        """(rho_k, gamma_k): constant, or rho_0 (1 + k/decay)^(-2/5), gamma_0 (1 + k/decay)^(-3/5);
        gamma_k None where the x step is adaptive."""
        if not state.decreasing:
            return state.inner_step_size, state.step_size
        t = 1.0 + state.k / self.decay
        return state.inner_step_size * t ** -0.4, None if state.step_size is None else state.step_size * t ** -0.6

    def advance(self, problem: BilevelProblem, state: FrameworkState, dy: Tensor, dv: Tensor, dx: Tensor,
                **more) -> tuple[FrameworkState, float | Tensor]:
        """y <- P_Y(y - rho D_y), v <- v - rho D_v, x <- P_X(x - gamma D_x), all from the same iterate;
        the new state and gamma (AdaGrad-norm on D_x where step_size is None, `base.x_step`)."""
        rho, gamma = self.steps(state)
        gamma, memory = x_step(gamma, self.x_scale, state, dx)
        return state.replace(x=problem.project_x(state.x - gamma * dx), y=problem.project_y(state.y - rho * dy),
                             v=state.v - rho * dv, k=state.k + 1, x_memory=memory, **more), gamma

    def fused_step(self, problem: BilevelProblem, oracle: Oracle, state: FrameworkState) -> tuple[FrameworkState, Aux]:
        """`directions` then `advance` as one call of `fused_update` (one compiled graph where the
        oracle compiles, `Oracle.fuses`), counted as the two oracle calls inside; the same
        iterates up to round-off."""
        rho, gamma = self.steps(state)
        adaptive = gamma is None
        update = oracle.fused(("framework", adaptive, self.x_scale),
                              lambda: fused_update(problem, adaptive, self.x_scale), n_grad_g=1, n_hvp=1, n_grad_f=1)
        x = state.x
        memory = state.x_memory if state.x_memory is not None else torch.zeros((), dtype=x.dtype, device=x.device)
        new_x, new_y, new_v, memory, step, f, g, h, kkt, total = update(
            x, state.y, state.v, torch.as_tensor(rho, dtype=x.dtype, device=x.device),
            torch.as_tensor(0.0 if adaptive else gamma, dtype=x.dtype, device=x.device), memory)
        step_size = step if adaptive else gamma
        new = state.replace(x=new_x, y=new_y, v=new_v, k=state.k + 1, x_memory=memory if adaptive else state.x_memory)
        return new, Aux({"f": f, "g": g, "h": h, "kkt_feasibility": h, "kkt_stationarity": kkt, "step_size": step_size},
                        nu=state.v, checksum=total)


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
        step_size: gamma_0, the step on x. Default None: on minibatches AdaGrad-norm on D_x
            (`base.x_step`), gamma_k = x_scale / sqrt(sum_(i<=k) ||D_x,i||^2 / dim x): scale-free,
            and shrinking as the minibatch noise of D_x accumulates (no schedule applies to it);
            on full data rho_0 (the ratio 1 of the authors' benchmark).
        inner_step_size: rho_0, the step on y and v. Default None: min(0.1, 1/L_g), L_g the largest
            eigenvalue of grad_yy g at (x0, y0) (on the first batch with batch_size) from 20
            Hessian-vector products (`FrameworkState.lipschitz_g`), then raised along the run
            where the curvature grows (`curvature_every`).
        schedule: "decreasing": rho_k = rho_0 (1 + k/decay)^(-2/5), gamma_k = gamma_0
            (1 + k/decay)^(-3/5) (the rates of the paper's Theorem for SOBA); "constant" (the
            authors' benchmark). Default None: "decreasing" on minibatches, "constant" on full data.
        decay: tau of the decreasing schedule. Default 100.
        x_scale: the root-mean-square length of the first x step where step_size is None.
            Default 0.1 (0.2, the baselines', let x outrun v where the lower level stiffens; 0.05
            moved it too slowly: benchmarks/RESULTS.md, section "stochastic-notes").
        curvature_every: on minibatches where inner_step_size is None, every curvature_every steps one
            Hessian-vector product continues the power iteration of L_g on the current batch
            (L_g <- max(L_g, ||grad_yy g u||), `Framework.refresh`), so that rho_0 = min(0.1, 1/L_g)
            follows a lower level that grows stiffer as x moves. Default 10.

    The default decay keeps a wide margin from the decays that shrink the steps before x
    arrives (benchmarks/RESULTS.md, section "stochastic-defaults"); the default x step
    and curvature refresh were chosen on problems of no config (benchmarks/RESULTS.md, section
    "stochastic-untuned").

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
    cost: ClassVar[str] = "grad g, grad f, one backward for grad_yy g v and grad_xy g v"
    diagnostics: ClassVar[tuple[str, ...]] = ("step_size",)
    stochastic: ClassVar[bool] = True

    def default_schedule(self, oracle: Oracle) -> str:
        return "decreasing" if oracle.stochastic else "constant"

    def step(self, problem: BilevelProblem, oracle: Oracle, state: FrameworkState) -> tuple[FrameworkState, Aux]:
        state = self.refresh(oracle, state)
        if oracle.fuses:
            return self.fused_step(problem, oracle, state)
        d = directions(oracle, state.x, state.y, state.v)
        new, gamma = self.advance(problem, state, d.dy, d.dv, d.dx)
        return new, framework_aux(problem, state.y, d, state.v, gamma)
