"""aid_bio: approximate implicit differentiation with warm-started lower-level steps."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from .. import linear
from ..linear import ConjugateGradient
from ..oracles import Oracle, inner
from ..problem import BilevelProblem
from .base import Solver, State, check_int, check_positive, curvatures, step_or


@dataclass(frozen=True)
class AIDBiO(Solver):
    """AID-BiO: implicit hypergradient with a warm-started lower level and an iterative solve.

        y <- T steps of y <- y - inner_step_size grad_y g(x, y)        (warm start: y persists)
        v  = linear_solver(grad_yy g, grad_y f)                       (N products with grad_yy g)
        x <- x - step_size (grad_x f - grad_xy g v)

    The multiplier estimate of grad_y g = 0 is nu = -v.

    Cost per step: T gradients of g, N Hessian-vector products, one Jacobian-vector
    product (grad_xy g v), one gradient of f and one value of f.

    Args:
        step_size: the step on x. Default 0.1.
        inner_steps: T. Default 10 (the paper uses 200 for data hyper-cleaning).
        inner_step_size: alpha, the lower-level step. Default None: min(0.1, 1/L_g), with L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0), estimated at the start by 20 steps of power
            iteration on Hessian-vector products (`State.lipschitz_g`): the
            paper's analysis takes alpha <= 1/L_g for gradient descent on the L_g-smooth,
            strongly convex g(x, .) (a fixed 0.1 diverges once L_g > 20; the cap 0.1 keeps
            the steps safe where g's curvature grows away from the start).
        linear_solver: an object solving A v = b from products A u: default
            `bilevel.ConjugateGradient(iters=100)` (stops early at relative residual 1e-10,
            so about min(dim y, a few sqrt(cond)) products where grad_yy g is well
            conditioned), or `bilevel.Neumann(...)`. The paper's N = 3 leaves v inexact, and the
            fixed point of x biased: 7.4e-2 from x* on a quadratic with cond 10 after 20000
            steps; 10 products leave x 0.12 from x* at cond(grad_yy g) = 100 (measured).
            The method needs grad_yy g nonsingular: with many lower-level solutions CG's v
            (and x) can blow up.

    References:
        Ji, Yang, Liang. Bilevel Optimization: Convergence Analysis and Enhanced Design.
        ICML 2021.
    """

    step_size: float = 0.1
    inner_steps: int = 10
    inner_step_size: float | None = None
    linear_solver: Any = field(default_factory=lambda: ConjugateGradient(iters=100))

    name: ClassVar[str] = "aid_bio"
    summary: ClassVar[str] = "approximate implicit differentiation, CG on the Hessian (Ji et al. 2021)"

    def validate(self) -> None:
        check_positive(self, "step_size")
        check_positive(self, "inner_step_size", allow_none=True)
        check_int(self, "inner_steps")
        object.__setattr__(self, "linear_solver", linear.from_spec(self.linear_solver))

    def batch_support(self) -> str:
        if isinstance(self.linear_solver, ConjugateGradient):
            return "conjugate gradient stops on a test of each member's residual (Neumann(...) runs batched)"
        return ""

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int, generator: torch.Generator) -> State:
        return State(x=problem.x0, y=problem.y0,
                     **curvatures(oracle, problem, generator, g=self.inner_step_size is None))

    def step(self, problem: BilevelProblem, oracle: Oracle, state: State) -> State:
        x, y = state.x, state.y
        g, _, gy = oracle.grad_g(x, y)
        h = inner(gy, gy)
        info = {"f": oracle.f(x, y), "g": g, "h": h, "kkt_feasibility": h}
        s = step_or(self.inner_step_size, state.lipschitz_g, 0.1)
        y = problem.project_y(y - s * gy)
        for _ in range(self.inner_steps - 1):
            y = problem.project_y(y - s * oracle.grad_g_y(x, y))
        _, fx, fy = oracle.grad_f(x, y)
        v = self.linear_solver(lambda u: oracle.vjp_grad_y_g(x, y, u)[1], fy)
        jx, _ = oracle.vjp_grad_y_g(x, y, v)
        x_new = problem.project_x(x - self.step_size * (fx - jx))
        return replace(state, x=x_new, y=y, k=state.k + 1, info=info, nu=-v)
