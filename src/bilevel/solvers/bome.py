"""bome: bilevel optimization made easy (a first-order value-function method)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import (AdaptiveXState, Solver, capped, check_choice, check_int, check_positive, curvature_in_y, descend,
                   lower_diagnostics, step_or, x_step)

JOINT_STEP = 0.02   # the paper's joint step on y where neither step_size nor lower_step_size is given


@dataclass(frozen=True)
class BOMEState(AdaptiveXState):
    """bome's state: also its step sizes, resolved by init (L_g: the estimate behind defaults)."""

    inner_step_size: float | Tensor = 0.0
    lower_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None


@dataclass(frozen=True)
class BOME(Solver):
    """BOME: a first-order method on the value-function constraint q(x, y) <= 0.

        y_hat = T steps of y_hat <- y_hat - inner_step_size grad_y g(x, y_hat), from y_hat = y
        q(x, y) = g(x, y) - g(x, y_hat)              (y_hat held fixed)
        grad q = (grad_x g(x, y) - grad_x g(x, y_hat), grad_y g(x, y))
        lambda = [ phi - <grad f, grad q>_D ]_+ / (||grad q||_D^2 + 1e-8),   <a, b>_D = r <a_x, b_x> + <a_y, b_y>
        x <- x - eta_k (grad_x f + lambda grad_x q)
        y <- y - lower_step_size (grad_y f + lambda grad_y q)

    with phi = eta ||grad q||_D^2 (phi="grad", the paper's toy problems) or phi = eta q
    (phi="value", its data-cleaning variant, eta the paper's u1). Where step_size is given,
    eta_k = step_size and r = 1: the paper's update. Where it is None, eta_k is AdaGrad-norm
    (`base.x_step`) and r = eta_k / lower_step_size (eta_k from the direction of the r = 1
    multiplier), our choice: lambda is then the paper's multiplier for the step actually taken,
    so that the first-order change of q along it, -<grad q, grad f + lambda grad q>_D, is at
    most -phi (with r = 1 and x's step longer than y's, x could climb q: the lower-level gap
    stalls at kinks of the value function). To first order in y - y_hat, grad q = J^T (y - y_hat)
    with J the Jacobian of grad_y g, so the multiplier of grad_y g = 0 that the step defines
    is nu = lambda (y - y_hat) (kkt="method" uses it).

    Cost per step: T + 1 gradients of g (the one at (x, y) serves both grad q and the
    first inner step; one more grad_x g at y_hat), one gradient of f, no second-order products.

    Args:
        step_size: a fixed step on x, and the paper's joint step on y (see lower_step_size).
            Default None: AdaGrad-norm on x, whose first step moves x by x_scale per
            coordinate (root mean square).
        x_scale: the root-mean-square length of the first x step where step_size is None. Default 0.2.
        lower_step_size: a separate step on y (the paper's data-cleaning runs use an upper
            step of 10 to 1000 and a lower step of 0.01). Default None: the joint step
            (step_size, or 0.02 where that is None), capped for phi="grad" at 1/(eta L_g): the
            y part of the update descends lambda g with lambda about eta, a curvature of
            about eta L_g. With phi="value" (lambda about eta q / ||grad q||^2) it is not capped.
        inner_steps: T. Default 30 (the paper's toys: 10).
        inner_step_size: the inner step on y_hat. Default None: min(0.1, 1/L_g), L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0) by 20 steps of power iteration
            (`BOMEState.lipschitz_g`): gradient descent on the L_g-smooth g(x, .).
        eta: the multiplier of phi. Default 0.5.
        phi: "grad" or "value". Default "grad".

    Measurements behind these defaults: benchmarks/RESULTS.md, section "baselines-a-suite".

    References:
        Liu, Ye, Wright, Stone, Liu. BOME! Bilevel Optimization Made Easy: A Simple
        First-Order Approach. NeurIPS 2022.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["coreset"](seed=1)
        >>> r = bilevel.solve(p, bilevel.solvers.BOME(inner_steps=10), max_iter=2000, log_every=1000)
        >>> r.final("upper_objective") < 1e-3
        True
    """

    step_size: float | None = None
    x_scale: float = 0.2
    lower_step_size: float | None = None
    inner_steps: int = 30
    inner_step_size: float | None = None
    eta: float = 0.5
    phi: str = "grad"

    name: ClassVar[str] = "bome"
    summary: ClassVar[str] = "first-order value-function method, T inner steps (Liu et al. 2022)"
    cost: ClassVar[str] = "T+1 grad g, grad f"
    diagnostics: ClassVar[tuple[str, ...]] = ("lambda",)

    def validate(self) -> None:
        check_positive(self, "step_size", "lower_step_size", "inner_step_size", allow_none=True)
        check_positive(self, "x_scale")
        check_positive(self, "eta", allow_zero=True)
        check_int(self, "inner_steps")
        check_choice(self, "phi", ("grad", "value"))

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> BOMEState:
        needs = self.inner_step_size is None or (self.lower_step_size is None and self.phi == "grad")
        lipschitz_g = curvature_in_y(oracle, problem.x0, problem.y0, generator) if needs else None
        lower = self.lower_step_size
        if lower is None:
            joint = JOINT_STEP if self.step_size is None else self.step_size
            lower = capped(joint, self.eta * lipschitz_g) if self.phi == "grad" else joint
        return BOMEState(x=problem.x0, y=problem.y0, inner_step_size=step_or(self.inner_step_size, lipschitz_g, 0.1),
                         lower_step_size=lower, lipschitz_g=lipschitz_g)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: BOMEState) -> tuple[BOMEState, Aux]:
        x, y = state.x, state.y
        f, fx, fy = oracle.grad_f(x, y)
        g, gx, gy = oracle.grad_g(x, y)
        y_hat = descend(problem, oracle, x, y, steps=self.inner_steps, step_size=state.inner_step_size, gradient=gy)
        qx, qy = gx - oracle.grad_g_x(x, y_hat), gy
        q_value = g - oracle.g(x, y_hat) if self.phi == "value" else None

        def multiplier(r):   # lambda in the metric diag(r I, I): x's step r times y's
            qq = r * inner(qx, qx) + inner(qy, qy)
            phi = self.eta * qq if self.phi == "grad" else self.eta * q_value
            return torch.clamp(phi - r * inner(fx, qx) - inner(fy, qy), min=0) / (qq + 1e-8)

        lam = multiplier(1.0)
        if self.step_size is None:
            ratio = x_step(None, self.x_scale, state, fx + lam * qx)[0] / state.lower_step_size
            lam = multiplier(ratio)
        aux = Aux({"f": f, **lower_diagnostics(problem, y, g, gy), "lambda": lam}, nu=lam * (y - y_hat))
        eta_x, memory = x_step(self.step_size, self.x_scale, state, fx + lam * qx)
        x_new = problem.project_x(x - eta_x * (fx + lam * qx))
        y_new = problem.project_y(y - state.lower_step_size * (fy + lam * qy))
        return state.replace(x=x_new, y=y_new, k=state.k + 1, x_memory=memory), aux
