"""hjfbio: Hessian/Jacobian-free bilevel optimization by finite differences (Huang 2024)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.kkt import masked
from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import AdaptiveXState, Solver, check_positive, curvature_in_y, lower_diagnostics, step_or, x_step


@dataclass(frozen=True)
class HJFBiOState(AdaptiveXState):
    """hjfbio's state: also v, the running solution of grad_yy g v = grad_y f, the steps on y
    and v resolved by init, and the estimate of L_g behind their defaults (None where given)."""

    v: Tensor | None = None
    lower_step_size: float | Tensor = 0.0
    v_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None


def project_ball(v: Tensor, radius: float) -> Tensor:
    """The projection of v onto the ball ||v|| <= radius."""
    norm = torch.linalg.vector_norm(v)
    return v * torch.clamp(radius / torch.clamp(norm, min=torch.finfo(v.dtype).tiny), max=1.0)


@dataclass(frozen=True)
class HJFBiO(Solver):
    """Hessian/Jacobian-free bilevel optimization: second-order products by finite differences.

    At (x, y, v), with the central differences (two gradients of g, no second order)

        [H v, J v] = [grad g(x, y + delta v) - grad g(x, y - delta v)] / (2 delta)
                   ~ [grad_yy g v, grad_xy g v],

    one iteration updates all three variables from the same point:

        y <- P_Y(y - lower_step_size grad_y g(x, y))
        v <- Proj_{||v|| <= radius}(v - v_step_size (H v - grad_y f(x, y)))
        x <- P_X(x - eta_k (grad_x f(x, y) - J v))

    with eta_k = step_size, or AdaGrad-norm (`base.x_step`) where step_size is None.
    What was chosen where the card leaves details open: deterministic gradients (the
    paper's stochastic variant draws minibatches), v from 0, and one v step per
    iteration, all updates simultaneous. The multiplier is nu = -v; `kkt_stationarity`
    is ||grad f - [J v, H v]||^2 from the step's own finite differences (no extra cost).

    Cost per iteration: one gradient of f and three of g (grad_y g at (x, y) and the two
    finite-difference gradients); no second-order products.

    Args:
        step_size: a fixed step on x (the paper's). Default None: AdaGrad-norm, whose first
            step moves x by x_scale per coordinate (root mean square).
        x_scale: the root-mean-square length of the first x step where step_size is None.
            Default 0.1 (y and v track their targets with single steps, so x moves more gently
            than in the methods with inner loops).
        lower_step_size: the step on y. Default None: min(0.1, 1/L_g), L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0) by 20 steps of power iteration
            (`HJFBiOState.lipschitz_g`): a gradient step on the L_g-smooth g(x, .).
        v_step_size: tau, the step on v. Default None: min(0.1, 1/L_g), the gradient step on
            the quadratic 1/2 v^T grad_yy g v - <grad_y f, v>.
        radius: r, the bound on ||v||. Default 100.0.
        delta: the finite-difference step. Default 1e-5 (for float64; use ~1e-3 in float32).

    Measurements behind these defaults: benchmarks/RESULTS.md, section "baselines-a-suite".

    References:
        Huang. Optimal Hessian/Jacobian-Free Nonconvex-PL Bilevel Optimization. ICML 2024.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "hjfbio", max_iter=2000, log_every=500)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    x_scale: float = 0.1
    lower_step_size: float | None = None
    v_step_size: float | None = None
    radius: float = 100.0
    delta: float = 1e-5

    name: ClassVar[str] = "hjfbio"
    summary: ClassVar[str] = "Hessian/Jacobian-free: finite-difference products, projected v (Huang 2024)"
    cost: ClassVar[str] = "3 grad g, grad f"

    def validate(self) -> None:
        check_positive(self, "x_scale", "radius", "delta")
        check_positive(self, "step_size", "lower_step_size", "v_step_size", allow_none=True)

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> HJFBiOState:
        needs = self.lower_step_size is None or self.v_step_size is None
        lipschitz_g = curvature_in_y(oracle, problem.x0, problem.y0, generator) if needs else None
        return HJFBiOState(x=problem.x0, y=problem.y0, v=torch.zeros_like(problem.y0),
                           lower_step_size=step_or(self.lower_step_size, lipschitz_g, 0.1),
                           v_step_size=step_or(self.v_step_size, lipschitz_g, 0.1), lipschitz_g=lipschitz_g)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: HJFBiOState) -> tuple[HJFBiOState, Aux]:
        x, y, v = state.x, state.y, state.v
        f, fx, fy = oracle.grad_f(x, y)
        g, _, gy = oracle.grad_g(x, y)
        free = problem.free_y(y, gy)                     # a y box: v on the free coordinates
        jv, hv = oracle.fd_vjp_grad_y_g(x, y, masked(v, free), self.delta)
        rx, ry = fx - jv, masked(fy - hv, free)
        v = project_ball(v + state.v_step_size * ry, self.radius)
        aux = Aux({"f": f, **lower_diagnostics(problem, y, g, gy), "kkt_stationarity": inner(rx, rx) + inner(ry, ry)}, nu=-v)
        eta, memory = x_step(self.step_size, self.x_scale, state, rx)
        return state.replace(x=problem.project_x(x - eta * rx), y=problem.project_y(y - state.lower_step_size * gy),
                             v=v, k=state.k + 1, x_memory=memory), aux
