"""galet: the generalized alternating method for bilevel problems with PL lower levels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..oracles import Oracle
from .aid_bio import ImplicitStep


@dataclass(frozen=True)
class GALET(ImplicitStep):
    """GALET: alternating steps on y, the shadow w, and x.

        y <- N steps of y <- y - inner_step_size grad_y g(x, y)             (warm start)
        w  = argmin_w 1/2 ||grad_y f + grad_yy g w||^2, approximately:
             T steps of w <- w - rho grad_yy g (grad_y f + grad_yy g w) from w = 0,
             which is the Neumann series rho sum_{i<T} (I - rho H^2)^i (-H grad_y f), H = grad_yy g
        x <- x - step_size (grad_x f + grad_xy g w)

    The shadow w is the minimum-norm least-squares multiplier; it is the method's nu.
    Implementation choice (the card marks details unverified): the w problem is solved by the
    `linear_solver` object on the normal equations H^2 w = -H grad_y f; `Neumann(iters=T,
    step_size=rho)` is exactly the paper's T gradient steps from w = 0, and the default,
    conjugate gradient with at most 100 products (early stop at relative residual 1e-10),
    reaches the same w in far fewer products (measured: with Neumann(10, 0.01) x stays 0.4
    from x* on `quadratic` after 3000 steps).

    Cost per step: N gradients of g, 2T - 1 Hessian-vector products for w (the normal
    matrix H^2 costs two per product, plus one for the right-hand side), one
    Jacobian-vector product, one gradient of f.

    Args:
        step_size: the step on x. Default 0.1.
        inner_steps: N. Default 10.
        inner_step_size: the lower-level step. Default None: min(0.1, 1/L_g), with L_g the largest
            |eigenvalue| of grad_yy g at (x0, y0), estimated at the start by 20 steps of power
            iteration on Hessian-vector products (`ImplicitState.lipschitz_g`): gradient descent
            on the L_g-smooth g(x, .), which the paper's analysis (PL lower level) runs with a
            step <= 1/L_g (a fixed 0.1 diverges once L_g > 20).
        linear_solver: solves H^2 w = -H grad_y f. Default ConjugateGradient(iters=100)
            (stops early at relative residual 1e-10); Neumann(iters=T, step_size=rho) is the
            paper's loop of T gradient steps. The normal matrix H^2 has condition number
            cond(H)^2: the former default, 10 products without the early stop, left w
            inexact and x 0.14 to 0.54 from x* at cond(H) = 10..100 although h ~ 1e-31
            (measured); 100 products reach w there.

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

    def multiplier(self, oracle: Oracle, x: Tensor, y: Tensor, grad_y_f: Tensor, free: Tensor | None) -> Tensor:
        """nu = w, the least-squares solution of grad_yy g w = -grad_y f (H^2 w = -H grad_y f)."""
        hessian = self.hessian(oracle, x, y, free)
        return self.linear_solver(lambda u: hessian(hessian(u)), -hessian(grad_y_f))
