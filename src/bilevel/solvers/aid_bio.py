"""aid_bio: approximate implicit differentiation with warm-started lower-level steps; its
base class `ImplicitStep` is shared with galet, which solves for the multiplier differently."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ..core import linear
from ..core.kkt import masked
from ..core.linear import ConjugateGradient
from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import (AdaptiveXState, Solver, as_float, check_int, check_positive, curvature_in_y, descend,
                   lower_diagnostics, step_or, x_step)


@dataclass(frozen=True)
class ImplicitState(AdaptiveXState):
    """The state of an implicit-gradient method: also its lower-level step, resolved by init
    (L_g: the estimate behind the default, None where the step was given), and the caveat
    aid_bio found ('' or the sentence of its first unsolved linear system, warned once a run)."""

    inner_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    caveat: str = ""


SINGULAR_RESIDUAL = 0.5   # aid_bio warns once ||grad_yy g v - grad_y f|| exceeds this fraction of ||grad_y f||


class SingularHessianWarning(RuntimeWarning):
    """aid_bio could not solve grad_yy g v = grad_y f: grad_yy g is singular or too ill-conditioned."""


@dataclass(frozen=True)
class ImplicitStep(Solver):
    """An outer step along an implicit hypergradient:

        y  <- T steps of y <- P_Y(y - inner_step_size grad_y g(x, y))    (warm start: y persists)
        nu  = multiplier(x, y)            (grad_yx g^T nu + grad_x f is the hypergradient)
        x  <- P_X(x - eta_k (grad_x f(x, y) + grad_yx g^T nu))

    with eta_k = step_size when given, else AdaGrad-norm (`base.x_step`): x_scale /
    sqrt(sum_{i<=k} ||d_i||^2 / dim x) over the x directions d_i so far.

    Where the T steps raised g(x, .) (the curvature outgrew the step: it is estimated once, at the
    start), y is kept and inner_step_size halved (one more value of g a step).
    Subclasses define `multiplier`; nu is the multiplier of grad_y g = 0 that the method
    defines (kkt="method" uses it). On a y box the implicit derivative is taken on the active
    set: coordinates of y that the lower level holds at a bound do not move with x, so the
    system and nu live on the free coordinates only (grad_yy g restricted to them; one more
    gradient of g a step to find them).
    """

    step_size: float | None = None
    x_scale: float = 0.2
    inner_steps: int = 10
    inner_step_size: float | None = None
    linear_solver: Any = field(default_factory=lambda: ConjugateGradient(iters=100))

    def validate(self) -> None:
        check_positive(self, "step_size", "inner_step_size", allow_none=True)
        check_positive(self, "x_scale")
        check_int(self, "inner_steps")
        object.__setattr__(self, "linear_solver", linear.from_spec(self.linear_solver))

    def batch_support(self) -> str:
        if isinstance(self.linear_solver, ConjugateGradient):
            return "conjugate gradient stops on a test of each member's residual (Neumann(...) runs batched)"
        return ""

    def multiplier(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None) -> Tensor:
        """nu at (x, y), from products with grad_yy g (restricted to the `free` coordinates of a y
        box: `hessian`) and the linear solver."""
        raise NotImplementedError

    @staticmethod
    def hessian(oracle: Oracle, x: Tensor, y: Tensor, free: Tensor | None) -> Callable[[Tensor], Tensor]:
        """u -> grad_yy g u at (x, y), on the free coordinates of a y box (from one graph of grad_y g,
        `Oracle.lower_jacobian`)."""
        vjp = oracle.lower_jacobian(x, y)[0]
        return lambda u: masked(vjp(masked(u, free))[1], free)

    def check(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None,
              nu: Tensor) -> dict[str, Tensor]:
        """Diagnostics of the multiplier nu (logged with the step's). Default: none."""
        return {}

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> ImplicitState:
        lipschitz_g = curvature_in_y(oracle, problem.x0, problem.y0, generator) if self.inner_step_size is None else None
        return ImplicitState(x=problem.x0, y=problem.y0, inner_step_size=step_or(self.inner_step_size, lipschitz_g, 0.1),
                             lipschitz_g=lipschitz_g)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: ImplicitState) -> tuple[ImplicitState, Aux]:
        x, y = state.x, state.y
        g, _, gy = oracle.grad_g(x, y)
        diagnostics = {"f": oracle.f(x, y), **lower_diagnostics(problem, y, g, gy)}
        step = state.inner_step_size
        y_new = descend(problem, oracle, x, y, steps=self.inner_steps, step_size=step, gradient=gy)
        # a safeguard: g's curvature can outgrow the step estimated at the start (ridge weights exp(x) that
        # rise along the run); where the steps raised g(x, .), keep y and halve the step
        raised = ~(oracle.g(x, y_new) <= g + 1e-8 * torch.abs(g))
        y = torch.where(raised, y, y_new)
        step = torch.where(raised, 0.5 * torch.as_tensor(step, dtype=g.dtype, device=g.device), step)
        _, fx, fy = oracle.grad_f(x, y)
        free = None if problem.y_bounds is None else problem.free_y(y, oracle.grad_g_y(x, y))
        nu = self.multiplier(oracle, x, y, masked(fy, free), free)
        diagnostics.update(self.check(oracle, x, y, masked(fy, free), free, nu))
        jx, _ = oracle.vjp_grad_y_g(x, y, nu)
        eta, memory = x_step(self.step_size, self.x_scale, state, fx + jx)
        x_new = problem.project_x(x - eta * (fx + jx))
        return (state.replace(x=x_new, y=y, k=state.k + 1, x_memory=memory, inner_step_size=step),
                Aux(diagnostics, nu=nu))


@dataclass(frozen=True)
class AIDBiO(ImplicitStep):
    """AID-BiO: implicit hypergradient with a warm-started lower level and an iterative solve.

        y <- T steps of y <- y - inner_step_size grad_y g(x, y)        (warm start: y persists)
        v  = linear_solver(grad_yy g, grad_y f)                       (N products with grad_yy g)
        x <- x - eta_k (grad_x f - grad_xy g v)

    with eta_k = step_size, or AdaGrad-norm (`base.x_step`) where step_size is None. The
    multiplier of grad_y g = 0 is nu = -v. The method needs grad_yy g nonsingular: each step
    logs `linear_residual` = ||grad_yy g v - grad_y f|| / ||grad_y f|| (one more
    Hessian-vector product), and the first time it exceeds 0.5 (a singular grad_yy g, as on a
    lower level with a continuum of solutions, or one too ill-conditioned for the solver) the
    step warns (`SingularHessianWarning`) that v, and so x, cannot be trusted, and
    `Result.message` says so (`caveats`).

    Cost per step: T gradients of g, N + 1 Hessian-vector products, one Jacobian-vector
    product (grad_xy g v), one gradient of f and one value of f.

    Args:
        step_size: a fixed step on x (the paper's; a = 0.1 there). Default None: AdaGrad-norm,
            whose first step moves x by x_scale per coordinate (root mean square).
        x_scale: the root-mean-square length of the first x step where step_size is None. Default 0.2.
        inner_steps: T. Default 10 (the paper uses 200 for data hyper-cleaning).
        inner_step_size: the lower-level step. Default None: min(0.1, 1/L_g), L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0) by 20 steps of power iteration
            (`ImplicitState.lipschitz_g`); the paper's analysis takes a step <= 1/L_g.
        linear_solver: solves grad_yy g v = grad_y f from products: default
            `bilevel.ConjugateGradient(iters=100)` (stops at relative residual 1e-10), or
            `bilevel.Neumann(...)` (the paper's N = 3 leaves v, and x's fixed point, biased).

    Measurements behind these defaults: benchmarks/RESULTS.md, section "baselines-a-suite".

    References:
        Ji, Yang, Liang. Bilevel Optimization: Convergence Analysis and Enhanced Design.
        ICML 2021.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "aid_bio", max_iter=300, log_every=100)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    name: ClassVar[str] = "aid_bio"
    summary: ClassVar[str] = "approximate implicit differentiation, CG on the Hessian (Ji et al. 2021)"
    cost: ClassVar[str] = "T grad g, N+2 Hessian-vector products, grad f"
    diagnostics: ClassVar[tuple[str, ...]] = ("linear_residual",)

    def multiplier(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None) -> Tensor:
        """nu = -v, with grad_yy g v = grad_y f."""
        return -self.linear_solver(self.hessian(oracle, x, y, free), grad_y_f)

    def check(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None,
              nu: Tensor) -> dict[str, Tensor]:
        """linear_residual = ||grad_yy g v - grad_y f|| / ||grad_y f|| with v = -nu (0 where grad_y f = 0)."""
        residual = self.hessian(oracle, x, y, free)(-nu) - grad_y_f
        scale = torch.linalg.vector_norm(grad_y_f)
        relative = torch.linalg.vector_norm(residual) / torch.clamp(scale, min=torch.finfo(scale.dtype).tiny)
        return {"linear_residual": torch.where(scale > 0, relative, torch.zeros_like(relative))}

    def step(self, problem: BilevelProblem, oracle: Oracle, state: ImplicitState) -> tuple[ImplicitState, Aux]:
        new, aux = super().step(problem, oracle, state)
        if not state.caveat:
            residual = as_float(aux.diagnostics["linear_residual"])
            if isinstance(residual, float) and not residual <= SINGULAR_RESIDUAL:   # (not under vmap)
                caveat = (f"grad_yy g v = grad_y f was not solved at iteration {state.k} (relative residual "
                          f"{residual:.3g} > {SINGULAR_RESIDUAL}): grad_yy g is singular (a lower level with a "
                          f"continuum of solutions?) or too ill-conditioned for linear_solver, so the hypergradient "
                          f"and x cannot be trusted; galet solves the least-squares system instead")
                warnings.warn(f"aid_bio: {caveat}", SingularHessianWarning, stacklevel=2)
                new = new.replace(caveat=caveat)
        return new, aux

    def caveats(self, state: ImplicitState) -> list[str]:
        return [state.caveat] if state.caveat else []
