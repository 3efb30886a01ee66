"""stocbio: stochastic bilevel optimizer with a Neumann-series hypergradient (Ji, Yang, Liang 2021)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import AdaptiveXState, Solver, check_int, check_positive, curvature_in_y, lower_diagnostics, step_or, x_step


@dataclass(frozen=True)
class StocBiOState(AdaptiveXState):
    """stocbio's state: also the lower-level and Neumann step resolved by init and the estimate
    of L_g behind its default (None where given); x_memory that of the adaptive x step."""

    inner_step_size: float | Tensor = 0.0
    neumann_step_size: float | Tensor = 0.0
    step_size: float | Tensor | None = None
    lipschitz_g: float | Tensor | None = None


@dataclass(frozen=True)
class StocBiO(Solver):
    """stocBiO: warm-started SGD on the lower level, then a stochastic hypergradient whose
    inverse-Hessian-vector product is a truncated Neumann series with fresh batches.

        y <- P_Y(y - alpha grad_y g_{S_t}(x, y))                  t = 1..T, a new lower batch each
        v  = eta sum_{q=0}^{Q} prod_{j=1}^{q} (I - eta grad_yy g_{B_j}(x, y)) grad_y f_{D_F}(x, y)
        x <- P_X(x - beta (grad_x f_{D_F}(x, y) - grad_xy g_{D_G}(x, y) v))

    (y after the T steps; Algorithm 2 of the paper, v built by the recursion r_0 = grad_y f,
    r_q = r_{q-1} - eta grad_yy g_{B_q} r_{q-1}, v = eta sum_q r_q). Every B_j and D_G is a new
    lower batch (`oracle.resample("lower")`), independent of the others, so that the product of
    the factors is an unbiased estimate of the truncated series (I - eta grad_yy g)^q; the
    upper batch D_F is the loop's. The truncation leaves a bias (I - eta grad_yy g)^(Q+1) in v,
    small once Q >> L_g / mu_g. On full data (no batch_size) this is the deterministic method
    (AID with T warm-started steps and a Q-term Neumann series). The multiplier of
    grad_y g = 0 it defines is nu = -v.

    Cost per step: T gradients of g, Q Hessian-vector products, one Jacobian-vector product
    (grad_xy g v), one gradient and one value of f (the value at the given iterate, for the
    diagnostics).

    Args:
        step_size: beta, the step on x. Default None: on minibatches AdaGrad-norm on the x
            direction d_k (`base.x_step`), beta_k = x_scale / sqrt(sum_(i<=k) ||d_i||^2 / dim x);
            on full data alpha (the ratio 1 of Dagreou et al.'s benchmark).
        x_scale: the root-mean-square length of the first x step where step_size is None.
            Default 0.2.
        inner_step_size: alpha, the lower-level step. Default None: min(0.1, 1/L_g), L_g the
            largest eigenvalue of grad_yy g at (x0, y0) (on the first batch with batch_size) from
            20 Hessian-vector products.
        neumann_step_size: eta; the series converges for eta < 2/L_g. Default None: as alpha.
        inner_steps: T. Default 10.
        neumann_terms: Q. Default 10.

    On full data the truncation leaves x biased where eta L_g is small (Q = 10 terms);
    measurements: benchmarks/RESULTS.md, section "stochastic-defaults".

    References:
        Ji, Yang, Liang. Bilevel Optimization: Convergence Analysis and Enhanced Design. ICML 2021
        (stocBiO, Algorithm 2).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["biased-ridge"](seed=0)
        >>> r = bilevel.solve(p, "stocbio", max_iter=1000, log_every=1000, batch_size=64, seed=0)
        >>> r.history["relative_gap"][-1] < 0.05
        True
    """

    step_size: float | None = None
    inner_step_size: float | None = None
    neumann_step_size: float | None = None
    inner_steps: int = 10
    neumann_terms: int = 10
    x_scale: float = 0.2

    name: ClassVar[str] = "stocbio"
    summary: ClassVar[str] = "warm-started SGD and a stochastic Neumann-series hypergradient (Ji et al. 2021)"
    cost: ClassVar[str] = "T grad g, Q+1 second-order products, grad f, f"
    diagnostics: ClassVar[tuple[str, ...]] = ("step_size",)
    stochastic: ClassVar[bool] = True

    def validate(self) -> None:
        check_positive(self, "step_size", "inner_step_size", "neumann_step_size", allow_none=True)
        check_positive(self, "x_scale")
        check_int(self, "inner_steps")
        check_int(self, "neumann_terms", minimum=0)

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> StocBiOState:
        x, y = problem.x0, problem.y0
        needed = self.inner_step_size is None or self.neumann_step_size is None
        lipschitz_g = curvature_in_y(oracle, x, y, generator) if needed else None
        alpha = step_or(self.inner_step_size, lipschitz_g, 0.1)
        eta = step_or(self.neumann_step_size, lipschitz_g, 0.1)
        beta = self.step_size if self.step_size is not None else None if oracle.stochastic else alpha
        return StocBiOState(x=x, y=y, inner_step_size=alpha, neumann_step_size=eta, step_size=beta,
                            lipschitz_g=lipschitz_g)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: StocBiOState) -> tuple[StocBiOState, Aux]:
        x, y = state.x, state.y
        g, _, gy = oracle.grad_g(x, y)
        diagnostics = {"f": oracle.f(x, y), **lower_diagnostics(problem, y, g, gy)}
        for t in range(self.inner_steps):
            if t > 0:
                oracle.resample("lower")
                gy = oracle.grad_g_y(x, y)
            y = problem.project_y(y - state.inner_step_size * gy)
        _, fx, fy = oracle.grad_f(x, y)
        v = self.neumann(oracle, x, y, fy, state.neumann_step_size)
        oracle.resample("lower")
        jx, _ = oracle.vjp_grad_y_g(x, y, v)
        beta, memory = x_step(state.step_size, self.x_scale, state, fx - jx)
        diagnostics["step_size"] = beta
        return (state.replace(x=problem.project_x(x - beta * (fx - jx)), y=y, k=state.k + 1, x_memory=memory),
                Aux(diagnostics, nu=-v))

    def neumann(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, eta: float | Tensor) -> Tensor:
        """v = eta sum_{q=0}^{Q} r_q, r_0 = grad_y f, r_q = r_{q-1} - eta grad_yy g_{B_q} r_{q-1}."""
        r = grad_y_f
        total = r
        for _ in range(self.neumann_terms):
            oracle.resample("lower")
            r = r - eta * oracle.vjp_grad_y_g(x, y, r)[1]
            total = total + r
        return eta * total
