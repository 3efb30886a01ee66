"""meha: Moreau-envelope-based single-loop Hessian-free bilevel method (Liu et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core import kkt
from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import AdaptiveXState, Solver, capped, check_positive, curvature_in_y, lower_diagnostics, x_step


@dataclass(frozen=True)
class MEHAState(AdaptiveXState):
    """meha's state: also theta, the proximal point of the Moreau envelope, the steps on theta
    and y resolved by init, and the estimates behind their defaults (None where given)."""

    theta: Tensor | None = None
    inner_step_size: float | Tensor = 0.0
    lower_step_size: float | Tensor = 0.0
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


@dataclass(frozen=True)
class MEHA(Solver):
    """Moreau envelope based Hessian-free algorithm: one loop, gradients only.

    The lower level is replaced by the constraint g(x, y) - v_gamma(x, y) <= 0 with the
    Moreau envelope v_gamma(x, y) = min_theta g(x, theta) + ||theta - y||^2 / (2 gamma),
    penalised with weight c_k = c_0 (k + 1)^p (p < 1/2). Iteration k:

        theta <- P_Y(theta - eta (grad_y g(x, theta) + (theta - y) / gamma))
        d_x = grad_x f(x, y) / c_k + grad_x g(x, y) - grad_x g(x, theta)
        d_y = grad_y f(x, y) / c_k + grad_y g(x, y) - (y - theta) / gamma
        x <- P_X(x - alpha d_x),   y <- P_Y(y - beta d_y)

    (the paper's statement, f divided by c_k; theta is always updated, never checked
    against a known solution). The multiplier of grad_y g = 0 that this defines is
    nu = c_k (y - theta) (the gradient of c_k (g - v_gamma) is J^T nu to first order);
    `kkt_stationarity` uses it with one extra second-order product per iteration.

    Cost per iteration: one gradient of f, three gradients of g (grad_y g at theta, the
    full grad g at (x, y), grad_x g at the new theta), plus one product for the KKT
    residual.

    Defaults: the paper's nonconvex example uses eta = 1e-3, 1/gamma = 0.005, c_0 = 50,
    p = 0.48, alpha = beta = 5e-4, tuned for that problem; the defaults keep p = 0.48 and take
    gamma = 1, c_0 = 1, a scale-free x step and lower-level steps from L_g. gamma and c_0 are
    fixed numbers, so the penalty is not scale-free: in 5000 iterations x stays 0.1 to 0.9 from
    x* where f and g are scaled by 1e-2 (condition 1 and 10), at condition 1000, and where f is
    scaled by 1e-2 and g by 1e4. Measurements: benchmarks/RESULTS.md, sections
    "baseline-schedules" and "baseline-notes".

    Args:
        step_size: alpha, a fixed step on x (the former default 0.05). Default None: AdaGrad-norm
            on d_x (`base.x_step`), alpha_k = x_scale / sqrt(sum_(i<=k) ||d_x,i||^2 / dim x).
        x_scale: the root-mean-square length of the first x step when step_size is None. Default 0.5
            (larger than the other baselines' 0.2: d_x carries f only as grad_x f / c_k).
        lower_step_size: beta, the step on y. Default None: min(0.05, 1 / (L_g + 1/gamma + L_f,y / c_0)),
            a bound on the y-curvature of d_y (grad_yy f / c_k + grad_yy g - I / gamma, with
            c_k >= c_0), so that the explicit y step is stable. L_g and L_f,y are the largest
            |eigenvalues| of grad_yy g and grad_yy f at (x0, y0), estimated at the start by 20
            steps of power iteration on Hessian-vector products (`MEHAState.lipschitz_g`,
            `.lipschitz_f_y`).
        inner_step_size: eta, the step on theta. Default None: min(0.1, 1 / (L_g + 1/gamma)), the
            gradient step on theta -> g(x, theta) + ||theta - y||^2 / (2 gamma), which is
            (L_g + 1/gamma)-smooth (and strongly convex where g is rho_g-weakly convex with
            rho_g < 1/gamma, as the paper assumes).
        gamma: the Moreau envelope's parameter. Default 1.0.
        c0: c_0, the first penalty weight. Default 1.0.
        power: p in c_k = c_0 (k + 1)^p, in [0, 1/2). Default 0.48.

    References:
        Liu, Liu, Yuan, Zeng, Zhang. Moreau Envelope for Nonconvex Bi-Level Optimization:
        A Single-loop and Hessian-free Solution Strategy. ICML 2024 (MEHA, Algorithm 1).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "meha", max_iter=3000, log_every=500)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    x_scale: float = 0.5
    lower_step_size: float | None = None
    inner_step_size: float | None = None
    gamma: float = 1.0
    c0: float = 1.0
    power: float = 0.48

    name: ClassVar[str] = "meha"
    summary: ClassVar[str] = "Moreau envelope penalty, single loop, Hessian-free (Liu et al. 2024)"
    cost: ClassVar[str] = "3 grad g, grad f"
    diagnostics: ClassVar[tuple[str, ...]] = ("penalty",)

    def validate(self) -> None:
        check_positive(self, "gamma", "c0", "x_scale")
        check_positive(self, "step_size", "lower_step_size", "inner_step_size", allow_none=True)
        check_positive(self, "power", allow_zero=True)
        if self.power >= 0.5:
            raise ValueError(f"Invalid power: {self.power!r} (expected 0 <= power < 0.5)")

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> MEHAState:
        x, y = problem.x0, problem.y0
        needs_g = self.inner_step_size is None or self.lower_step_size is None
        lipschitz_g = curvature_in_y(oracle, x, y, generator) if needs_g else None
        lipschitz_f_y = curvature_in_y(oracle, x, y, generator, of="f") if self.lower_step_size is None else None
        eta, beta = self.inner_step_size, self.lower_step_size
        if eta is None:
            eta = capped(0.1, lipschitz_g + 1.0 / self.gamma)
        if beta is None:
            beta = capped(0.05, lipschitz_g + 1.0 / self.gamma + lipschitz_f_y / self.c0)
        return MEHAState(x=x, y=y, theta=y, inner_step_size=eta, lower_step_size=beta, lipschitz_g=lipschitz_g,
                         lipschitz_f_y=lipschitz_f_y)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: MEHAState) -> tuple[MEHAState, Aux]:
        x, y = state.x, state.y
        c = self.c0 * (state.k + 1) ** self.power
        theta = problem.project_y(state.theta - state.inner_step_size
                                  * (oracle.grad_g_y(x, state.theta) + (state.theta - y) / self.gamma))
        f, fx, fy = oracle.grad_f(x, y)
        g, gx, gy = oracle.grad_g(x, y)
        d_x = fx / c + gx - oracle.grad_g_x(x, theta)
        d_y = fy / c + gy - (y - theta) / self.gamma
        nu = c * (y - theta)
        aux = Aux({"f": f, **lower_diagnostics(problem, y, g, gy), "penalty": c,
                   "kkt_stationarity": kkt.kkt_stationarity(oracle, x, y, nu, (fx, fy), problem.free_y(y, gy))},
                  nu=nu)
        alpha, memory = x_step(self.step_size, self.x_scale, state, d_x)
        return state.replace(x=problem.project_x(x - alpha * d_x), y=problem.project_y(y - state.lower_step_size * d_y),
                             theta=theta, k=state.k + 1, x_memory=memory), aux
