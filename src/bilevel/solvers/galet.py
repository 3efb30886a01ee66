"""galet: the generalized alternating method for bilevel problems with PL lower levels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..core.oracles import Oracle
from .aid_bio import ImplicitStep


@dataclass(frozen=True)
class GALET(ImplicitStep):
    """GALET: alternating steps on y, the shadow w, and x.

        y <- N steps of y <- y - inner_step_size grad_y g(x, y)             (warm start)
        w  = argmin_w 1/2 ||grad_y f + grad_yy g w||^2, the minimum-norm solution: the paper runs
             T steps of w <- w - rho grad_yy g (grad_y f + grad_yy g w) from w = 0
        x <- x - eta_k (grad_x f + grad_xy g w)

    with eta_k = step_size, or AdaGrad-norm (`base.x_step`) where step_size is None. The
    shadow w is the method's nu. It needs no invertible grad_yy g (a PL lower level, e.g. one
    with a continuum of solutions): the least-squares w gives the hypergradient of the
    solution set's value there. GALET's y step is gradient descent on g alone, so y stays
    in the solution set where gradient descent from the previous y lands: x reaches x*, y
    need not be the optimistic solution. The w problem is solved by `linear_solver` on the
    normal equations H^2 w = -H grad_y f (H = grad_yy g): `Neumann(iters=T, step_size=rho)`
    is exactly the paper's T gradient steps from w = 0; the default conjugate gradient
    reaches the same minimum-norm w (from w = 0 its iterates stay in the range of H) in
    far fewer products.

    Cost per step: N gradients of g, 2T - 1 Hessian-vector products for w (the normal
    matrix H^2 costs two per product, plus one for the right-hand side), one
    Jacobian-vector product, one gradient of f.

    Args:
        step_size: a fixed step on x (the paper's). Default None: AdaGrad-norm, whose first
            step moves x by x_scale per coordinate (root mean square).
        x_scale: the root-mean-square length of the first x step where step_size is None. Default 0.2.
        inner_steps: N. Default 10.
        inner_step_size: the lower-level step. Default None: min(0.1, 1/L_g), L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0) by 20 steps of power iteration
            (`ImplicitState.lipschitz_g`); the paper runs gradient descent on the L_g-smooth
            g(x, .) with a step <= 1/L_g.
        linear_solver: solves H^2 w = -H grad_y f. Default ConjugateGradient(iters=100)
            (stops at relative residual 1e-10); Neumann(iters=T, step_size=rho) is the paper's
            loop (rho < 2 / L_g^2; H^2 has condition number cond(H)^2).

    Measurements behind these defaults: benchmarks/RESULTS.md, section "baselines-a-suite".

    References:
        Xiao, Lu, Chen. A Generalized Alternating Method for Bilevel Learning under the
        Polyak-Lojasiewicz Condition. NeurIPS 2023.

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> r = bilevel.solve(p, "galet", max_iter=300, log_every=100)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    name: ClassVar[str] = "galet"
    summary: ClassVar[str] = "alternating y, least-squares shadow w and x steps (Xiao et al. 2023)"
    cost: ClassVar[str] = "N grad g, 2T Hessian-vector products, grad f"

    def multiplier(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None) -> Tensor:
        """nu = w, the least-squares solution of grad_yy g w = -grad_y f (H^2 w = -H grad_y f)."""
        hessian = self.hessian(oracle, x, y, free)
        return self.linear_solver(lambda u: hessian(hessian(u)), -hessian(grad_y_f))
