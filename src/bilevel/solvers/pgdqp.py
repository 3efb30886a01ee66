"""pgdqp: perturbed gradient descent with a convex QP step (the seed paper, Algorithm 1)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from ..core import checks
from ..core.kkt import masked
from ..core.linear import power_iteration
from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux, State, checksum
from .base import (AdaptiveXState, Solver, as_float, check_choice, check_int, check_positive, curvature_in_y, descend,
                   lower_diagnostics, x_step)


def qp_step(grad_f: tuple[Tensor, Tensor], grad_h: tuple[Tensor, Tensor], alpha_rho: Tensor,
            y_scale: float = 1.0, hdh: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The closed-form solution of the QP of eq. 7 (eq. 8).

        min_d 1/2 ||d + D grad f||^2_{D^-1}  s.t.  <grad h, d> + alpha rho <= 0,
        lambda = [ -<grad h, D grad f> + alpha rho ]_+ / <grad h, D grad h>,
        d = -D (grad f + lambda grad h),

    with D = diag(I_x, y_scale I_y); y_scale = 1 is eq. 8 exactly. Where grad h = 0,
    lambda = 0 and d = -D grad f. `hdh`: <grad h, D grad h> where the caller has it (rho = "grad"
    is that value), else computed here.

    Returns:
        (d_x, d_y, lambda).
    """
    (fx, fy), (hx, hy) = grad_f, grad_h
    plain = isinstance(y_scale, float) and y_scale == 1.0   # eq. 8 as written, in fewer operations
    hdf = inner(hx, fx) + (inner(hy, fy) if plain else y_scale * inner(hy, fy))
    if hdh is None:
        hdh = inner(hx, hx) + (inner(hy, hy) if plain else y_scale * inner(hy, hy))
    lam = torch.where(hdh > 0, torch.clamp(alpha_rho - hdf, min=0) / hdh, 0.0)   # (the 0/0 branch not taken)
    dx, dy = torch.addcmul(fx, lam, hx).neg_(), torch.addcmul(fy, lam, hy).neg_()
    return dx, (dy if plain else y_scale * dy), lam


class Gradients(NamedTuple):
    """grad f and grad h at an iterate, kept for the secant estimates of L_f and L_h."""

    fx: Tensor
    fy: Tensor
    hx: Tensor
    hy: Tensor


@dataclass(frozen=True)
class PGDQPState(State):
    """pgdqp's state: also the constants in use and the memory of the last step."""

    h0: Tensor | None = None               # h(x0, y0) after the warm start, for rho = "warm"
    lipschitz_f: float | Tensor | None = None   # None where the schedule does not use it
    lipschitz_h: float | Tensor | None = None
    gamma0: float | Tensor = math.nan      # the step size (before any decay)
    velocity: tuple | None = None          # heavy-ball memory (x, y) when momentum > 0
    alpha0: float | Tensor | None = None   # None in "diminishing": set per iteration
    grads: Gradients | None = None         # at the previous iterate, for the secants ("diminishing")
    ratio: float | Tensor = 1.0            # block steps: (x step) / (y step) of the last step
    ratio_target: float | Tensor = 1.0     # block steps: rho*, the ratio the ramp grows to
    escape_next: int = 0                   # the iteration of the next negative-curvature check
    escape_interval: int = 0               # iterations from that check to the one after
    multiplier: Tensor | None = None       # "projected": u of the last step (the warm start of its solve)
    penalty: float | Tensor = 0.0          # "projected": mu of the merit f + mu ||c||
    grad_f: tuple | None = None            # "projected": grad f at the previous iterate (its secant)


QP_DIAGNOSTICS = ("f", "g", "h", "kkt_stationarity", "kkt_feasibility", "lambda", "step_size", "lower_step_size",
                  "alpha")   # the diagnostics of the closed-form step (`PGDQP._direction`)


class _Derivatives:
    """The derivatives of a fused step (`Oracle.fused`'s ops, on the current batches) where the
    step asks an oracle; inside the graph nothing fuses further."""

    fuses = False

    def __init__(self, ops, stochastic: bool):
        self.ops, self.stochastic = ops, stochastic

    def __getattr__(self, name: str):
        return getattr(self.__dict__["ops"], name)


def _graph_diagnostics(new: State, aux: Aux) -> tuple[tuple[Tensor, ...], Tensor]:
    """(the `QP_DIAGNOSTICS` of a fused step as tensors, their guard sum with the new iterate's)."""
    values = tuple(torch.as_tensor(aux.diagnostics[name], dtype=new.x.dtype, device=new.x.device)
                   for name in QP_DIAGNOSTICS)
    return values, checksum(new.x, new.y, values)


@dataclass(frozen=True)
class Direction:
    """The QP step at an iterate: d = (dx, dy), its multiplier lambda and step gamma, the
    constants L_f, L_h it used (raised by the secants) and the gradients behind them."""

    dx: Tensor
    dy: Tensor
    gamma: float | Tensor
    lipschitz_f: float | Tensor | None
    lipschitz_h: float | Tensor | None
    grads: Gradients | None
    aux: Aux
    ratio: float | Tensor = 1.0


@dataclass(frozen=True)
class PGDQP(Solver):
    """Perturbed gradient descent whose direction solves a convex QP in closed form.

    Each iteration solves (eq. 7-8 of the seed paper)

        (dx, dy) = argmin 1/2 ||d + grad f||^2  s.t.  <grad h, d> + alpha rho <= 0,
        lambda = [ -<grad h, grad f> + alpha rho ]_+ / ||grad h||^2,
        (x, y) <- (x, y) - gamma (grad f + lambda grad h),

    with h = ||grad_y g||^2 (grad h from one double backward) and
    rho = ||grad h||^2 (rho="grad", Theorem 4.2) or rho = ||grad h|| sqrt(h(x0, y0))
    (rho="warm", Theorem 4.5, after a warm start of y0 by gradient descent on g(x0, .)).

    Parameter schedules:
        "projected" (the default): the QP of eq. 7 with its constraint on h = ||c||^2,
            c = grad_y g, replaced by the linearised condition c itself (a vector equality; where
            it holds, <grad h, s> = -2h, the paper's constraint with alpha rho = 2h). Its solution is
            a tangent step plus a step to c = 0, and the latter is taken in y alone (moving x to
            make grad_y g vanish is not solving the lower level), except on a bound where g is
            linear in y (r below):

                s = theta t + (0, -v),   J = [grad_yx g, grad_yy g],
                t = argmin 1/2 ||t + gamma P grad f||^2_{P^-1}  s.t.  J t = -r:
                    t = -P (gamma grad f + J^T (u + w)),   (J P J^T + ||c||^2 I) u = -gamma J P grad f,
                    J P J^T w = r,
                grad_yy g v = c   (truncated Newton: -v descends on g(x, .) where grad_yy g is indefinite),

            in the metric P = diag(rho_k I_x, I_y) of the block steps (below; P = I without them),
            u by conjugate gradients (cg_iters, cg_tol) warm-started at the last u, so that the
            multiplier nu = u / gamma varies smoothly (||c||^2 I bounds u where J loses rank), v by
            at most cg_iters conjugate-gradient steps from 0. ||v|| estimates the distance of y to
            the lower-level solution, scale-free in its curvature: theta = min(1, certify
            max(1, ||y||) / ||v||) keeps x from following f until y is certified. z <- P_Z(z + t s)
            with t from Armijo backtracking on the exact penalty f + mu ||c|| (t = 1 under
            solve_batch), a rejected full step tested once more with y returned to the lower
            level at its x by one Newton step (the second-order correction, `_corrected`);
            gamma = step_scale / L_f, L_f of f in the metric P from power iteration (floored only
            where f is linear at z0) and raised by the secants of grad f.
            kkt_stationarity = ||grad f + J^T nu||^2 = ||P^-1 t||^2 / gamma^2, which vanishes along the
            iterates instead of chattering as the scalar constraint's [.]_+ multiplier does (grad h ->
            0 there). On a y box, c and J's rows and y-columns are restricted to the free
            coordinates, all but those at a bound that c pushes against (y_i = low_i with c_i > 0,
            y_i = high_i with c_i < 0). r = 0 but where g has no curvature along c (v = 0) and f
            holds y_i on the bound that c points away from (`restored_through_x`): there r_i = c_i
            (x restores the lower level, y_i keeps its bound) where f after x's part of -P J^T w is
            no more than f with those y_i on their far bounds (y's way to the lower level). On an
            x box, the coordinates of x on a bound that t leaves are held and t solved again
            without them (`held_by_x_bounds`: the projection would cut t_x and leave J t != 0). No
            momentum. Lower-level escapes as in "diminishing". On minibatches it runs as
            "diminishing".
        "constant": Algorithm 1 as written: gamma = step_size (default 0.01) and
            alpha = alpha (default 1.0) at every iteration.
        "theorem": Algorithm 1 as written (its line 2, h(x0, y0) <= alpha^2 C_0, holds for
            C_0 = h(x0, y0) / alpha^2), and rho="warm" (the default here): alpha = K^(-1/6),
            gamma = min(K^(-2/3), 1/L_f) (Theorem 4.5);
            rho="grad": alpha = K^(-1/3), gamma = min(alpha, 1/(L_f + alpha L_h)) (Theorem 4.2);
            K = max_iter and L_f, L_h estimated by power iteration with Hessian-vector products at
            the start unless given. Theorem 4.2's bound on the mean ||grad h||^2 keeps the term
            alpha^2 L_h^2 C_f^2 = K^(-2/3) L_h^2 C_f^2, above h's level until K >> (L_h C_f)^3, and its
            iterates can settle into a two-cycle across the valley of h (gamma lambda L_h > 2);
            Theorem 4.5's terms carry no L_h, and its error and h shrink with K (RESULTS "pgdqp-quality").
        "diminishing": gamma_k = step_size / (1 + k / decay) with
            step_size = step_scale / L_f,k by default; alpha_k = feasibility / (gamma_k L_h,k),
            so that where the constraint is active the step is a projected gradient step on f
            plus a gradient step of fixed length feasibility / L_h,k on h; and heavy-ball
            momentum 0.9 on the whole step. With a fixed gamma the iterates hover at a
            distance O(gamma) from the solution (grad h vanishes on the lower-level
            solution set while lambda grows); the decaying gamma removes that floor and
            the fixed feasibility step keeps h falling. The constants adapt (adaptive=True):
            L_f,0 and L_h,0 come from power iteration at (x0, y0), and every iteration
            raises them to the secants of the gradients it already has,

                L_f,k = max(L_f,k-1, ||grad f(z_k) - grad f(z_k-1)|| / ||z_k - z_k-1||),
                L_h,k = max(L_h,k-1, ||grad h(z_k) - grad h(z_k-1)|| / ||z_k - z_k-1||),

            (no extra oracle call), so that the steps shrink where the curvature grows
            beyond its value at the start (nonconvex lower levels). A constant given as
            lipschitz_f / lipschitz_h is taken as a global bound and kept fixed; a given
            step_size fixes gamma_0 (L_f unused), a given alpha fixes alpha (L_h unused). The
            estimates are floored at the problem's scale, L >= ||grad(z0)|| / max(1, ||z0||) (a first
            step 1/L moves z by at most max(1, ||z0||); where f is linear power iteration finds 0).

    Block steps (block_steps=True, the default of "projected" and "diminishing" on full data when neither
    step_size nor lower_step_size is given): x's step is rho_k times y's, the QP in the metric P = diag(rho_k I, I),

        lambda_k = [ alpha_k ||grad h||_P^2 - <grad h, grad f>_P ]_+ / ||grad h||_P^2,
        (x, y) <- (x, y) - gamma_k P (grad f + lambda_k grad h),    <a, b>_P = rho_k <a_x, b_x> + <a_y, b_y>,

    (qp_step with y_scale = 1 / rho_k and step rho_k gamma_k), gamma_k, alpha_k as above with L_f, L_h
    in that metric (secants ||P^1/2 (grad' - grad)|| / ||P^-1/2 (z' - z)||), and

        rho* = clip(L_h,y / L_h,x, 1, min(L_f,y / L_f,x, max_ratio)),   rho_k = min(rho*, ratio_growth^(k+1)),

    L_.,x = |grad^2_xx .|, L_.,y = |grad^2_yy .| by power iteration with the other block zero: f's at
    (x0, y0), h's at (x0, y_w), y_w after ratio_warm_start steps y <- P_Y(y - grad_y g(x0, y) / L_g)
    (for the estimate only; at y0 the x block can vanish, e.g. grad_yx g = diag(exp(x) y) = 0 at
    y0 = 0). Where x enters g weakly (per-sample weights in hyper-cleaning, per-feature L2 weights),
    one step for x and y, set by the joint curvature, moves x by O(gamma ||grad_yx g||) and the
    decay freezes it; rho* balances the blocks of grad^2 h so that restoring feasibility moves x
    and y alike, and never lets x's step exceed step_scale / L_f,x. The ramp keeps x's steps short
    while y is far from feasible. rho* = 1 where f is as curved in x as in y (the closed-form
    quadratics). Cost: about 130 products at the start, none per iteration.

    With oracle="compiled", the closed-form step on full data (every schedule but "projected") and the
    minibatch step (`fused_stochastic_step`) each run as one compiled graph, after a first eager step.

    Lower-level escapes ("diminishing" and "projected" on full data, escape_every > 0; not under solve_batch):
    h = ||grad_y g||^2 vanishes at every stationary point of g(x, .), maximisers and saddles included, so the QP
    alone can settle there. At iterations escape_every, then at doubling intervals while a check
    changes nothing, pgdqp takes mu = <v, grad_yy g v> along v from power iteration on
    L_g I - grad_yy g (free coordinates of a y box) and descends on g(x, .) (Armijo, escape_steps
    steps) from P_Y(y +- t v) where mu < -escape_tol L_g (t = 0.1 max(1, ||y||)), and from
    escape_starts points drawn uniformly in a bounded y box; y jumps to the best end point when

        g(x, y') < g(x, y) - escape_gain max(1, |g(x, y)|),

    and the heavy ball and secant memories restart. Under "projected" (select_tol > 0), where none is lower,
    the check makes the optimistic selection among the lower-level solutions it found: y jumps to the end
    point of least f(x, .) among those with

        g(x, y') <= g(x, y) + select_tol max(1, |g(x, y)|)   and   f(x, y') < f(x, y) - escape_gain max(1, |f(x, y)|)

    (the Newton step keeps the lower-level solution nearest y; the bilevel problem asks, of the equally good
    ones, for the best for f). Algorithm 1 itself has no such step (its
    "perturbed" is the QP's minimal change of -grad f).

    Minibatches (`solve(..., batch_size=B)`, `bilevel.core.data`): h = ||grad_y g||^2 and grad h =
    2 J^T grad_y g from one batch are biased, upwards by the batch variance of grad_y g. Where y is
    near the lower-level solution, what drives x is nu = 2 lambda c, c = grad_y g: at y's equilibrium
    grad_y f + lambda grad_y h = 0 gives nu = -[grad_yy g]^-1 grad_y f and d_x = -(grad_x f + grad_xy g nu)
    the hypergradient, with an O(1/lambda) bias, while the noise of one batch's c enters d_x
    multiplied by lambda. With estimator="tracked" (the default on minibatches) c is a recursive
    (STORM) estimate on the loop's lower batch B (`tracked_h_and_grad`),

        c_k = grad_y g_B(z_k) + (1 - tracking) (c_(k-1) - grad_y g_B(z_(k-1))),
        h ~ ||c_k||^2,   grad h ~ 2 J_B^T c_k,

    whose error averages the batches' over about 1/tracking steps (its drift term is a difference
    of one batch's gradients over a step); estimator="independent" takes the unbiased two-batch
    estimates h ~ <grad_y g_B1, grad_y g_B2>, grad h ~ J_B1^T grad_y g_B2 + J_B2^T grad_y g_B1
    (`independent_h_and_grad`). With schedule="diminishing" on minibatches (`stochastic_step`),

        gamma_k = gamma_0 / (1 + k/noise_decay),   gamma_k alpha_k L_h = feasibility,
        y <- P_Y(y + gamma_k d_y),   x <- P_X(x + eta_k d_x),
        eta_k = 0 for k < x_wait,   then x_scale / sqrt(sum_(x_wait<=i<=k) ||d_x,i||^2 / dim x)
                                                               (AdaGrad-norm, `base.x_step`),

    so that the step on h keeps its length while the step on f decays (lambda grows like k and the
    penalty's bias falls like 1/k), and x's step is scale-free and shrinks as the noise of d_x
    accumulates. x waits x_wait steps (default 1/tracking, the horizon of c's tracked average): before
    them c is still mostly the first batches' and y is far from the lower-level solution, so d_x
    mostly moves x to make y look feasible, and AdaGrad-norm would spend its first steps, its
    largest, on that. Where each coordinate of x is drawn rarely (a weight per sample) those
    moves are never undone (benchmarks/RESULTS.md, "pgdqp-minibatch").
    A given step_size fixes eta_k = gamma_k (x and y on one step, as in Algorithm 1),
    a given lower_step_size makes y's step lower_step_size / (1 + k/noise_decay) (the QP in the
    metric D = diag(I, lower_step_size / gamma_0)). No momentum unless given; L_f and L_h from power
    iteration at the start, kept fixed (secants of noisy gradients over short steps blow up).
    Block steps and escapes are off on minibatches. Measured against the previous estimator and
    schedule: benchmarks/RESULTS.md, section "pgdqp-minibatch".

    Measurements behind these defaults: benchmarks/RESULTS.md, sections "pgdqp-defaults",
    "pgdqp-schedules" and "stochastic-defaults".

    Args:
        step_size: gamma (the step on x; also on y unless lower_step_size). Default per schedule.
        alpha: the QP's margin alpha. Default per schedule.
        rho: "grad" (Theorem 4.2) or "warm" (Theorem 4.5). Default: "warm" under schedule="theorem"
            (the parameters whose guarantee shrinks at the K of practice, below), "grad" otherwise.
        schedule: "projected", "diminishing", "constant" or "theorem". Default "projected" (its last
            iterate converges and its residual vanishes; "diminishing" hovers at O(gamma) until the
            step has decayed).
        lower_step_size: a separate step on y; the QP then uses the matching metric
            D = diag(I, lower_step_size / step_size), which keeps the constraint's
            guarantee. Default None (same step).
        decay: in "diminishing", gamma has halved after this many iterations. Default 10.
        feasibility: gamma alpha L_h in "diminishing". Default 0.5.
        momentum: heavy-ball coefficient. Default 0.9 for "diminishing", 0 otherwise
            (Algorithm 1 as written).
        lipschitz_f: L_f; estimated when None (and then raised by secants in
            "diminishing" with adaptive=True); kept fixed when given.
        lipschitz_h: L_h; as lipschitz_f.
        step_scale: in "diminishing", step_size = step_scale / L_f when step_size is None.
            Default 1. Smaller values trade progress on f for a lower floor on strongly
            convex problems whose J = [grad_yx g, grad_yy g] is ill-conditioned.
        adaptive: in "diminishing", raise the estimated L_f and L_h by secants. Default True.
        block_steps: x's own step, rho_k times y's (see above). Default True.
        ratio_growth: the ramp, rho_k <= ratio_growth rho_(k-1) (>= 1). Default 1.1.
        max_ratio: the largest rho. Default 1e6.
        ratio_warm_start: gradient steps on g(x0, .) before the blocks of grad^2 h are
            estimated (for the estimate only). Default 30.
        escape_every: the first lower-level check (0: none). Default 50.
        escape_steps: descent steps on g(x, .) from each start of a check. Default 100.
        escape_tol: the negative curvature that counts, relative to L_g. Default 1e-3.
        escape_starts: points drawn in a bounded y box per check. Default 4.
        escape_gain: the relative fall of g that moves y (and of f, for the optimistic selection). Default 1e-3.
        select_tol: in "projected", how far above g(x, y), relative to max(1, |g(x, y)|), an escape's
            end point still counts as a lower-level solution as good as y for the optimistic selection
            (above; 0: no selection). Default 1e-6.
        power_iters: power iterations for those estimates. Default 20.
        warm_start_steps: gradient steps on g(x0, .) for rho="warm". Default 1000.
        warm_start_tol: stop the warm start when h(x0, y0) <= this. Default 1e-10.
        estimator: how h and grad h are estimated: "tracked" (recursive estimate of grad_y g, in the
            stochastic schedule; two independent batches elsewhere), "independent" (two independent lower
            batches, unbiased) or "plain" (one batch, as on full data). Default None: "tracked" on
            minibatches, "plain" on full data.
        noise_decay: tau of the stochastic schedule (minibatches, schedule="diminishing"). Default 10.
        tracking: beta of the tracked estimate of grad_y g (estimator="tracked"), in (0, 1]; 1 is one
            batch's gradient. Default 0.02.
        x_scale: on minibatches without step_size, the root-mean-square length of x's first step
            (AdaGrad-norm). Default 0.1 (soba's).
        x_wait: on minibatches without step_size, the steps at the start that move y only. Default
            None: ceil(1 / tracking) = 50 with the tracked estimate, 0 with estimator="independent".
        cg_iters: conjugate-gradient steps per iteration for each of the two solves of "projected", at most.
            Default 5.
        cg_tol: stop them once the residual is below cg_tol (||c|| + gamma ||J P grad f||). Default 1e-8.
        certify: in "projected", the distance to the lower-level solution, ||v|| with H v = c
            (Newton), relative to max(1, ||y||), under which f is trusted: the tangent step is scaled by
            min(1, certify max(1, ||y||) / ||v||). Default 1e-2 (the verification's y tolerance).
        second_order_correction: in "projected", where the Armijo test rejects the full step, test
            it once more with y moved back to the lower level at the trial x by one Newton step
            (`_corrected`) before backtracking. Default True.
        penalty_decay: in "projected", mu_k = max(penalty_decay mu_(k-1), 2 ||nu_k||, the step's
            need), in (0, 1]; 1 is the monotone rule of Nocedal and Wright, under which a mu
            inflated in the first steps keeps cutting the steps for the rest of the run. Default 0.9.

    References:
        Abolfazli, Sharifi, Fazlyab, Hamedani. Perturbed Gradient Descent via Convex
        Quadratic Approximation for Nonconvex Bilevel Optimization. 2025 (Algorithm 1).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["quadratic"](seed=1)
        >>> r = bilevel.solve(p, bilevel.solvers.PGDQP(), max_iter=3000, log_every=500)
        >>> float((r.x - p.info["x_star"]).norm()) < 5e-2
        True
    """

    step_size: float | None = None
    alpha: float | None = None
    rho: str | None = None
    schedule: str = "projected"
    lower_step_size: float | None = None
    decay: float = 10.0
    feasibility: float = 0.5
    lipschitz_f: float | None = None
    lipschitz_h: float | None = None
    power_iters: int = 20
    warm_start_steps: int = 1000
    warm_start_tol: float = 1e-10
    momentum: float | None = None
    step_scale: float = 1.0
    adaptive: bool = True
    block_steps: bool = True
    ratio_growth: float = 1.1
    max_ratio: float = 1e6
    ratio_warm_start: int = 30
    escape_every: int = 50
    escape_steps: int = 100
    escape_tol: float = 1e-3
    escape_starts: int = 4
    escape_gain: float = 1e-3
    cg_iters: int = 5
    cg_tol: float = 1e-8
    certify: float = 1e-2
    select_tol: float = 1e-6
    second_order_correction: bool = True
    penalty_decay: float = 0.9
    # ----- minibatches (bilevel.core.data): the stochastic code path, see `_stochastic_direction` -----
    estimator: str | None = None
    noise_decay: float = 10.0
    tracking: float = 0.02
    x_scale: float = 0.1
    x_wait: int | None = None

    name: ClassVar[str] = "pgdqp"
    summary: ClassVar[str] = "perturbed gradient descent with a closed-form convex QP step (seed, Alg. 1)"
    cost: ClassVar[str] = ("grad f, grad g, two CG solves of at most 5 steps (about 3 + 3 x 5 Jacobian products), "
                           "an Armijo search")
    diagnostics: ClassVar[tuple[str, ...]] = ("alpha", "lambda", "lower_step_size", "multiplier_norm", "step_size",
                                              "trust")
    schedules: ClassVar[tuple[str, ...]] = ("diminishing", "projected", "constant", "theorem")

    @property
    def x_wait_steps(self) -> int:
        """x_wait as it runs: unless given, ceil(1 / tracking) with the tracked estimate (its horizon), 0
        with estimator="independent" (nothing to average: there waiting only lets lambda grow)."""
        if self.x_wait is not None:
            return self.x_wait
        return 0 if self.estimator == "independent" else math.ceil(1 / self.tracking)

    @property
    def rho_rule(self) -> str:
        """rho as it runs: "warm" (Theorem 4.5) under schedule="theorem" unless rho is given, else "grad"."""
        return self.rho or ("warm" if self.schedule == "theorem" else "grad")

    def validate(self) -> None:
        if self.rho is not None:
            check_choice(self, "rho", ("grad", "warm"))
        check_choice(self, "schedule", self.schedules)
        check_positive(self, "step_size", "alpha", "lower_step_size", "lipschitz_f", "lipschitz_h", allow_none=True)
        check_positive(self, "decay", "feasibility", "step_scale", "max_ratio")
        for name in ("block_steps", "second_order_correction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid {name}: {getattr(self, name)!r} (expected True or False)")
        checks.number("ratio_growth", self.ratio_growth, minimum=1.0)
        check_int(self, "ratio_warm_start", "escape_every", "escape_steps", "escape_starts", minimum=0)
        check_positive(self, "escape_tol", "escape_gain")
        check_positive(self, "warm_start_tol", allow_zero=True)
        check_int(self, "power_iters", "cg_iters")
        check_positive(self, "cg_tol", allow_zero=True)
        check_positive(self, "certify")
        if checks.number("penalty_decay", self.penalty_decay, positive=True) > 1:
            raise ValueError(f"Invalid penalty_decay: {self.penalty_decay!r} (expected a number in (0, 1])")
        check_positive(self, "select_tol", allow_zero=True)
        check_int(self, "warm_start_steps", minimum=0)
        if self.momentum is not None and not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"Invalid momentum: {self.momentum!r} (expected a number in [0, 1) or None)")
        if self.estimator is not None:
            check_choice(self, "estimator", ("plain", "independent", "tracked"))
        check_positive(self, "noise_decay", "x_scale")
        if self.x_wait is not None:
            check_int(self, "x_wait", minimum=0)
        if not (checks.number("tracking", self.tracking, positive=True) <= 1):
            raise ValueError(f"Invalid tracking: {self.tracking!r} (expected a number in (0, 1])")
        if self.schedule == "theorem" and (self.step_size is not None or self.alpha is not None):
            raise ValueError(f"Invalid step_size/alpha: {self.step_size!r}/{self.alpha!r} with schedule='theorem' "
                             "(the theorem sets both from max_iter; use schedule='constant' to set them)")

    # ----- set-up ---------------------------------------------------------------------
    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> PGDQPState:
        if self._stochastic_fallback(oracle):
            return self._as_diminishing().init(problem, oracle, max_iter=max_iter, generator=generator)
        if self._noisy_schedule(oracle):
            return stochastic_init(self, problem, oracle, generator)
        x = problem.x0
        y, h0 = self._start_y(problem, oracle, generator)
        needs_lf = self.schedule == "theorem" or (self.schedule in ("diminishing", "projected")
                                                  and self.step_size is None)
        needs_lh = self.schedule == "diminishing" or (self.schedule == "theorem" and self.rho_rule == "grad")
        lf = lh = None
        if needs_lf:
            estimate = power_iteration(lambda v: oracle.hvp_f(x, y, *v), (x, y), self.power_iters, generator)
            floored = curvature_floor(estimate, oracle.grad_f(x, y)[1:], x, y)
            if self.schedule == "projected":   # its line search guards the step: the floor only where f is linear
                floored = torch.where(estimate > 1e-6 * floored, estimate, floored)
            lf = self.lipschitz_f or as_float(floored)
        if needs_lh:
            lh = self.lipschitz_h or as_float(curvature_floor(
                power_iteration(lambda v: oracle.hvp_h(x, y, *v), (x, y), self.power_iters, generator),
                oracle.h_and_grad(x, y)[3:], x, y))
        for name, value in (("lipschitz_f", lf), ("lipschitz_h", lh)):
            # (under vmap: solve_batch checks)
            if isinstance(value, float) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"Invalid problem for pgdqp: the estimate of {name} at (x0, y0) is {value} (the "
                                 f"curvature overflows there); give {name}=... or schedule='constant' with step_size")
        K = max(max_iter, 1)
        if self.schedule == "constant":
            gamma, alpha = self.step_size or 0.01, self.alpha or 1.0
        elif self.schedule == "theorem":
            if self.rho_rule == "grad":
                alpha = K ** (-1 / 3)
                gamma = _minimum(alpha, 1.0 / (lf + alpha * lh))
            else:
                alpha = K ** (-1 / 6)
                gamma = _minimum(K ** (-2 / 3), 1.0 / lf)
        elif self.schedule == "projected":
            target = self._ratio_target(problem, oracle, x, y, generator) if self._blocks(oracle) else 1.0
            if self._blocks(oracle) and lf is not None and self.lipschitz_f is None:   # L_f in the metric P*
                root = torch.sqrt(torch.as_tensor(target, dtype=x.dtype))
                lf = as_float(torch.maximum(torch.as_tensor(lf, dtype=x.dtype), power_iteration(
                    lambda v: _scaled(oracle.hvp_f(x, y, *_scaled(v, root)), root), (x, y), self.power_iters,
                    generator)))
            gamma = self.step_size or self.step_scale / lf
            gy = oracle.grad_g_y(x, y)
            return PGDQPState(x=x, y=y, h0=h0, lipschitz_f=lf, gamma0=gamma, multiplier=torch.zeros_like(gy),
                              ratio_target=target, escape_next=self.escape_every, escape_interval=self.escape_every)
        else:
            gamma, alpha = self.step_size or self.step_scale / lf, None
        target = self._ratio_target(problem, oracle, x, y, generator) if self._blocks(oracle) else 1.0
        return PGDQPState(x=x, y=y, h0=h0, lipschitz_f=lf, lipschitz_h=lh, gamma0=gamma, alpha0=alpha,
                          ratio_target=target, escape_next=self.escape_every, escape_interval=self.escape_every)

    def _start_y(self, problem: BilevelProblem, oracle: Oracle, generator: torch.Generator) -> tuple:
        """(y0, None), or for rho="warm" (y0 warm-started on g(x0, .), h there)."""
        if self.rho_rule != "warm":
            return problem.y0, None
        y = warm_start(problem, oracle, problem.x0, problem.y0, self.warm_start_steps, self.warm_start_tol,
                       self.power_iters, generator)
        gy = oracle.grad_g_y(problem.x0, y)
        return y, inner(gy, gy)

    # ----- escape from lower-level saddles and maximisers ----------------------------------
    def _escape(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> PGDQPState:
        """At the checks (iterations escape_every, then at doubling intervals while nothing is
        found): where grad_yy g(x, y) (on the free coordinates of a y box) has an eigenvalue
        mu < -escape_tol L_g along v, y <- the better of descent on g(x, .) from P_Y(y +- t v),
        t = 0.1 max(1, ||y||), kept only if g falls (h, the QP's only view of the lower level,
        is as small at a maximiser of g as at a minimiser); under "projected", where g does not fall, y <- the
        `optimistic_choice` among the end points (select_tol). Not under torch.func.vmap."""
        x, y, k = state.x, state.y, state.k
        if (not self.escape_every or self.schedule not in ("diminishing", "projected") or k < state.escape_next
                or not isinstance(as_float(torch.sum(y)), float)):
            return state
        found = negative_curvature(problem, oracle, x, y, self.power_iters, k)
        starts = []
        if found is not None and found[0] < -self.escape_tol * found[1]:
            t = 0.1 * max(1.0, float(torch.linalg.vector_norm(y)))
            starts = [problem.project_y(y + t * found[2]), problem.project_y(y - t * found[2])]
        starts += box_points(problem, y, self.escape_starts, k)
        if starts:
            g0 = float(oracle.g(x, y))
            lipschitz_g = found[1] if found is not None else curvature_in_y(oracle, x, y,
                                                                            torch.Generator().manual_seed(k))
            step = 1.0 / lipschitz_g
            ends = [armijo_descent(problem, oracle, x, start, self.escape_steps, step) for start in starts]
            lower = [float(oracle.g(x, end)) for end in ends]
            moved = lower_escape(g0, ends, lower, self.escape_gain)
            if moved is None and self.schedule == "projected" and self.select_tol:
                moved = optimistic_choice(oracle, x, y, g0, ends, lower, self.select_tol, self.escape_gain)
            if moved is not None:
                return state.replace(y=moved, velocity=None, grads=None, grad_f=None,
                                     escape_next=k + self.escape_every, escape_interval=self.escape_every)
        interval = 2 * state.escape_interval
        return state.replace(escape_next=k + interval, escape_interval=interval)

    # ----- block steps: x's step rho_k times y's ------------------------------------------
    def _blocks(self, oracle: Oracle) -> bool:
        """Whether x and y get their own steps: block_steps in "diminishing" on full data, steps not given."""
        return (self.block_steps and self.schedule in ("diminishing", "projected") and self.step_size is None
                and self.lower_step_size is None and not (oracle.stochastic or self._independent(oracle)))

    def _ratio_target(self, problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor,
                      generator: torch.Generator) -> float | Tensor:
        """rho* = clip(L_h,y / L_h,x, 1, min(L_f,y / L_f,x, max_ratio)): the diagonal blocks of
        grad^2 f at (x0, y0) and of grad^2 h at (x0, y_w), y_w after ratio_warm_start gradient
        steps y <- P_Y(y - grad_y g(x0, y) / L_g) (for the estimate only)."""
        zx, zy = torch.zeros_like(x), torch.zeros_like(y)

        def block(hvp, at, which):
            if which == "x":
                return power_iteration(lambda v: (hvp(x, at, v[0], zy)[0], zy), (x, y), self.power_iters, generator)
            return power_iteration(lambda v: (zx, hvp(x, at, zx, v[1])[1]), (x, y), self.power_iters, generator)

        cap = _ratio(block(oracle.hvp_f, y, "y"), block(oracle.hvp_f, y, "x"), self.max_ratio)
        warm = y
        if self.ratio_warm_start:
            lipschitz_g = power_iteration(lambda v: (oracle.vjp_grad_y_g(x, y, v[0])[1],), (y,), self.power_iters,
                                          generator)
            warm = descend(problem, oracle, x, y, steps=self.ratio_warm_start, step_size=1.0 / lipschitz_g)
        target = _ratio(block(oracle.hvp_h, warm, "y"), block(oracle.hvp_h, warm, "x"), self.max_ratio)
        return as_float(torch.clamp(torch.minimum(target, cap), min=1.0))

    def _next_ratio(self, state: PGDQPState) -> float | Tensor:
        """rho_k = min(rho*, ratio_growth rho_(k-1)), rho_(-1) = 1: a float where both are (a tensor
        under torch.func.vmap), so that rho = 1 keeps eq. 8's plain form and costs no tensor ops."""
        if isinstance(state.ratio_target, float) and isinstance(state.ratio, float):
            return min(state.ratio_target, state.ratio * self.ratio_growth)
        return torch.minimum(torch.as_tensor(state.ratio_target, dtype=torch.float64),
                             torch.as_tensor(state.ratio, dtype=torch.float64) * self.ratio_growth)

    # ----- one iteration ------------------------------------------------------------------
    def _momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.schedule == "diminishing" else 0.0

    def _adapts(self) -> tuple[bool, bool]:
        """(raise L_f, raise L_h) by secants: in "diminishing", the estimated constants only."""
        on = self.schedule == "diminishing" and self.adaptive
        return (on and self.step_size is None and self.lipschitz_f is None,
                on and self.alpha is None and self.lipschitz_h is None)

    def _lipschitz(self, state: PGDQPState, grads: Gradients) -> tuple:
        """L_f and L_h raised to the secants of grad f and grad h over the last step."""
        lf, lh = state.lipschitz_f, state.lipschitz_h
        adapt_f, adapt_h = self._adapts()
        if not (adapt_f or adapt_h) or state.grads is None or state.velocity is None:
            return lf, lh
        vx, vy = state.velocity
        # in the metric P = diag(rho I, I) of the last step: ||P^1/2 (grad' - grad)|| / ||P^-1/2 (z' - z)||
        scale = torch.sqrt(torch.as_tensor(state.ratio, dtype=vx.dtype, device=vx.device))
        step = torch.hypot(torch.linalg.vector_norm(vx) / scale, torch.linalg.vector_norm(vy))
        inv = torch.where(step > 0, step.reciprocal(), 0.0)   # a step of length 0 tells nothing
        old = state.grads
        if adapt_f:
            secant = torch.hypot(scale * torch.dist(grads.fx, old.fx), torch.dist(grads.fy, old.fy)) * inv
            lf = torch.maximum(torch.as_tensor(lf, dtype=secant.dtype, device=secant.device), secant)
        if adapt_h:
            secant = torch.hypot(scale * torch.dist(grads.hx, old.hx), torch.dist(grads.hy, old.hy)) * inv
            lh = torch.maximum(torch.as_tensor(lh, dtype=secant.dtype, device=secant.device), secant)
        return lf, lh

    def _parameters(self, state: PGDQPState, lf, lh) -> tuple:
        if self.schedule != "diminishing":
            return state.gamma0, state.alpha0
        gamma0 = self.step_scale / lf if self._adapts()[0] else state.gamma0
        gamma = gamma0 / (1.0 + state.k / self.decay)
        alpha = self.alpha or self.feasibility / (gamma * lh)
        return gamma, alpha

    def _direction(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> Direction:
        x, y = state.x, state.y
        f, fx, fy = oracle.grad_f(x, y)
        g, gy, h, hx, hy = oracle.h_and_grad(x, y)
        grads = Gradients(fx, fy, hx, hy)
        lf, lh = self._lipschitz(state, grads)
        gamma, alpha = self._parameters(state, lf, lh)
        ratio = state.ratio
        if self._blocks(oracle):   # x steps rho times y's: the QP in the metric D = diag(I, I / rho)
            ratio = self._next_ratio(state)
            y_scale = 1.0 / ratio
            gamma_y, gamma = gamma, gamma * ratio
        else:
            y_scale = 1.0 if self.lower_step_size is None else self.lower_step_size / gamma
            gamma_y = gamma if self.lower_step_size is None else self.lower_step_size
        dx, dy, lam = self._qp((fx, fy), (hx, hy), alpha, y_scale, state.h0)
        # KKT residual of Definition 2.4 with nu = 2 lambda grad_y g (grad h = 2 J^T grad_y g):
        # grad f + lambda grad h = (-dx, -dy / y_scale)
        plain = isinstance(y_scale, float) and y_scale == 1.0
        stationarity = inner(dx, dx) + (inner(dy, dy) if plain else inner(dy, dy) / y_scale ** 2)
        aux = Aux(dict(zip(QP_DIAGNOSTICS, (f, g, h, stationarity, h, lam, gamma, gamma_y, alpha))),
                  nu=2 * lam * masked(gy, problem.free_y(y, gy)))
        return Direction(dx, dy, gamma, lf, lh, grads if any(self._adapts()) else None, aux, ratio)

    def _qp(self, grad_f: tuple[Tensor, Tensor], grad_h: tuple[Tensor, Tensor], alpha: float | Tensor,
            y_scale: float | Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """`qp_step` with rho from the rho rule: rho = <grad h, D grad h> ("grad") or sqrt(that h0) ("warm")."""
        hx, hy = grad_h
        hh = inner(hx, hx) + y_scale * inner(hy, hy)
        rho = hh if self.rho_rule == "grad" else torch.sqrt(hh * h0)
        return qp_step(grad_f, grad_h, alpha * rho, y_scale, hh)

    def step(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> tuple[PGDQPState, Aux]:
        if self._fuses(oracle, state):   # (full data, not "projected")
            new, aux = self._fused_step(problem, oracle, state)
            return self._escape(problem, oracle, new), aux
        if self._stochastic_fallback(oracle):
            return self._as_diminishing().step(problem, oracle, state)
        if self.schedule == "projected":
            return self._projected_step(problem, oracle, state)
        if self._noisy_schedule(oracle):
            return stochastic_step(self, problem, oracle, state)
        d = (self._stochastic_direction(problem, oracle, state) if self._independent(oracle)
             else self._direction(problem, oracle, state))
        new = self._advance(problem, state, d, 0.0 if self.momentum is None and self._noisy_schedule(oracle)
                            else self._momentum())
        if not oracle.stochastic:
            new = self._escape(problem, oracle, new)
        return new, d.aux

    def _advance(self, problem: BilevelProblem, state: PGDQPState, d: Direction, momentum: float) -> PGDQPState:
        """z <- P(z + gamma d + momentum (z - z_prev)), with the constants and gradients the step used."""
        vx, vy = d.gamma * d.dx, d.gamma * d.dy
        if momentum > 0 and state.velocity is not None:
            vx, vy = vx + momentum * state.velocity[0], vy + momentum * state.velocity[1]
        x = problem.project_x(state.x + vx)
        y = problem.project_y(state.y + vy)
        return state.replace(x=x, y=y, k=state.k + 1, velocity=(x - state.x, y - state.y),
                             lipschitz_f=d.lipschitz_f, lipschitz_h=d.lipschitz_h, grads=d.grads, ratio=d.ratio)

    # ----- oracle="compiled": the closed-form step as one graph ---------------------------------
    def _fuses(self, oracle: Oracle, state: PGDQPState) -> bool:
        """Whether the step runs as one compiled graph (`_fused_step`): oracle="compiled" in one
        process, full data, the closed-form QP of eq. 8 (every schedule but "projected", whose line
        search tests values), once the memories of a step exist (not at the first step, nor at the
        one after an escape)."""
        return (oracle.fuses and not oracle.stochastic and self.schedule != "projected"
                and not self._independent(oracle) and state.velocity is not None
                and (state.grads is not None or not any(self._adapts())))

    def _fused_step(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> tuple[PGDQPState, Aux]:
        """`_direction` and `_advance` as one call of a compiled graph (`Oracle.fused`), counted as the
        oracle calls inside (a gradient of f, one of g and one backward product): the iteration
        counter, the constants L_f, L_h (where the schedule has them) and the block ratio (with
        block steps) enter as tensors, so that one graph serves the whole run; the guard's sum is
        made inside (`Aux.checksum`). Only what changes leaves the graph (each output costs an
        allocation). The same iterates as the eager step up to round-off."""
        x = state.x

        def tensor(value: float | Tensor, dtype: torch.dtype = x.dtype) -> Tensor:   # after a fused step, a tensor
            return value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=dtype, device=x.device)
        blocks = self._blocks(oracle)
        update = oracle.fused("pgdqp", lambda: self._fused_update(problem, state, blocks), n_grad_f=1, n_grad_g=1,
                              n_hvp=1)
        constants = [tensor(c) for c in (state.lipschitz_f, state.lipschitz_h) if c is not None]
        ratio = [tensor(state.ratio, torch.float64)] if blocks else []
        x, y, vx, vy, nu, total, *rest = update(x, state.y, *state.velocity, tensor(state.k), *constants, *ratio,
                                                *(state.grads or ()))
        values, rest = rest[:len(QP_DIAGNOSTICS)], iter(rest[len(QP_DIAGNOSTICS):])
        adapts = self._adapts()
        lf, lh = (None if c is None else next(rest) if adapt else tensor(c)
                  for c, adapt in zip((state.lipschitz_f, state.lipschitz_h), adapts))
        new = state.replace(x=x, y=y, k=state.k + 1, velocity=(vx, vy), lipschitz_f=lf, lipschitz_h=lh,
                            ratio=next(rest) if blocks else state.ratio,
                            grads=Gradients(*rest) if any(adapts) else None)
        return new, Aux(dict(zip(QP_DIAGNOSTICS, values)), nu=nu, checksum=total)

    def _fused_update(self, problem: BilevelProblem, start: PGDQPState, blocks: bool):
        """The function of tensors that `_fused_step` compiles: (x, y, velocity, k, the constants
        L_f and L_h that `start` has, the ratio with block steps, the last gradients where the
        secants need them) -> (x, y, velocity, nu, the guard's sum, the `QP_DIAGNOSTICS`, the
        constants the secants raised, the ratio with block steps, the gradients for the next
        secants). The run's fixed constants (h0, gamma0, alpha0, rho*) are those of `start`;
        `blocks`: whether x and y take block steps."""
        momentum = self._momentum()
        adapts = self._adapts()
        has = [c is not None for c in (start.lipschitz_f, start.lipschitz_h)]

        def update(ops, x, y, vx, vy, k, *rest):
            rest = iter(rest)
            lf, lh = (next(rest) if present else None for present in has)
            ratio = next(rest) if blocks else start.ratio
            grads = tuple(rest)
            state = start.replace(x=x, y=y, k=k, velocity=(vx, vy), ratio=ratio, lipschitz_f=lf, lipschitz_h=lh,
                                  grads=Gradients(*grads) if grads else None)
            d = self._direction(problem, _Derivatives(ops, stochastic=False), state)
            new = self._advance(problem, state, d, momentum)
            values, total = _graph_diagnostics(new, d.aux)
            raised = [torch.as_tensor(c, dtype=x.dtype) for c, adapt in zip((new.lipschitz_f, new.lipschitz_h), adapts)
                      if adapt]
            ratio = [torch.as_tensor(new.ratio, dtype=torch.float64)] if blocks else []
            return (new.x, new.y, *new.velocity, d.aux.nu, total, *values, *raised, *ratio, *(new.grads or ()))
        return update

    def batch_support(self) -> str:
        if self.rho_rule == "warm":
            return ("rho='warm' (schedule='theorem' takes it unless rho='grad' is given) warm-starts y0 by a loop "
                    "that stops on a test of each member's h")
        return ""

    def diagnose(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> Aux:
        if self._stochastic_fallback(oracle):
            return self._as_diminishing().diagnose(problem, oracle, state)
        if self.schedule == "projected":
            return self._projected(problem, oracle, state)[1]
        if self._noisy_schedule(oracle):
            dx, _, gamma, _, aux = stochastic_direction(self, oracle, state)
            aux.diagnostics["step_size"] = x_step_size(self, state, dx, gamma)[0]
            return aux
        if self._independent(oracle):
            return self._stochastic_direction(problem, oracle, state).aux
        return self._direction(problem, oracle, state).aux

    # ----- "projected": the QP with grad_y g = 0 linearized as a vector equality ---------------
    def _stochastic_fallback(self, oracle: Oracle) -> bool:
        """Whether schedule="projected" runs as "diminishing": on minibatches (or with the
        independent estimator), where J J^T u = c cannot be solved from one batch without bias."""
        return self.schedule == "projected" and (oracle.stochastic or self.estimator == "independent")

    def _as_diminishing(self) -> "PGDQP":
        return replace(self, schedule="diminishing")

    def _projected(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> tuple:
        """(s, Aux, u, grad f, L_f, ratio, (f, ||c||, ||c + J s||, <grad f, s>, ||nu||)): the step
        s = theta t + (0, -v) of "projected" (class docstring), on the free coordinates of a y box (c
        and J's rows and y-columns masked elsewhere). gamma = step_scale / L_f, L_f in the metric P,
        raised by the secants ||P^1/2 (grad f' - grad f)|| / ||P^-1/2 (z' - z)||. The multiplier of
        Definition 2.4 is nu = u / gamma, and ||P^-1 t||^2 / gamma^2 = ||grad f + J^T nu||^2."""
        x, y = state.x, state.y
        f, fx, fy = oracle.grad_f(x, y)
        g, _, gy = oracle.grad_g(x, y)
        free = free_coordinates(y, gy, problem.y_bounds)
        mask = (lambda t: t) if free is None else (lambda t: t * free)
        ratio = self._next_ratio(state) if self._blocks(oracle) else 1.0
        lf = state.lipschitz_f
        if self.step_size is None and state.grad_f is not None and state.velocity is not None:
            vx, vy = state.velocity
            last = torch.sqrt(torch.as_tensor(state.ratio, dtype=vx.dtype, device=vx.device))
            step = torch.hypot(torch.linalg.vector_norm(vx) / last, torch.linalg.vector_norm(vy))
            secant = torch.hypot(last * torch.dist(fx, state.grad_f[0]), torch.dist(fy, state.grad_f[1]))
            secant = secant * torch.where(step > 0, step.reciprocal(), 0.0)
            lf = torch.maximum(torch.as_tensor(lf, dtype=secant.dtype, device=secant.device), secant)
            lf = as_float(lf)
        gamma = state.gamma0 if self.step_size is not None else self.step_scale / lf

        vjp, jvp = oracle.lower_jacobian(x, y)

        def operators(x_free: Tensor | None) -> tuple[Callable, Callable]:
            """(J, P J^T) on the free coordinates of y's box, and of x's where x_free (0/1) is given."""
            def mask_x(t: Tensor) -> Tensor:
                return t if x_free is None else t * x_free

            def jac(vx: Tensor, vy: Tensor) -> Tensor:
                return mask(jvp(mask_x(vx), mask(vy)))

            def jac_t(w: Tensor) -> tuple[Tensor, Tensor]:
                jx, jy = vjp(mask(w))
                return ratio * mask_x(jx), mask(jy)        # P J^T w
            return jac, jac_t
        jac, jac_t = operators(None)

        def hess(v: Tensor) -> Tensor:
            return mask(vjp(mask(v))[1])

        c = mask(gy)
        damping = inner(c, c)
        step_fx = gamma * ratio * fx
        u, (jx, jy), tangent_residual = multiplier_steps(jac, jac_t, torch.zeros_like(c), (step_fx, gamma * mask(fy)),
                                                         damping, state.multiplier, self.cg_iters, self.cg_tol)
        held_x = held_by_x_bounds(x, step_fx + jx, problem.x_bounds)
        if held_x is not None:   # x on a bound that the tangent leaves: the tangent on x's other coordinates
            step_fx = torch.where(held_x, 0.0, step_fx)
            u, (jx, jy), tangent_residual = multiplier_steps(*operators((~held_x).to(x.dtype)), torch.zeros_like(c),
                                                             (step_fx, gamma * mask(fy)), damping, state.multiplier,
                                                             self.cg_iters, self.cg_tol)
        newton, newton_residual = newton_steps(hess, c, self.cg_iters, self.cg_tol)
        distance = torch.linalg.vector_norm(newton)
        restore = restored_through_x(y, c, mask(fy), distance, problem.y_bounds)
        # J t = r_t + damping u so far (r_t the solve's residual); u alone starts the next step's solve
        warm, held, tangent_gap = u, None, tangent_residual + damping * u
        if restore is None:
            restore = torch.zeros_like(c)
        else:   # J t_r = -r by its own undamped solve (a tolerance relative to r, small near the end)
            ur, (rx, ry), restore_residual = multiplier_steps(
                jac, jac_t, restore, (torch.zeros_like(fx), torch.zeros_like(fy)), torch.zeros_like(damping),
                torch.zeros_like(c), self.cg_iters, self.cg_tol)
            # x's way to the lower level against y's: f after x's step of t_r, against f with the held
            # y_i moved to the bounds that g's slope points to; the cheaper is taken
            through_x = oracle.f(problem.project_x(x - rx), y)
            through_y = oracle.f(x, problem.project_y(torch.where(restore != 0, y - torch.sign(c) * torch.inf, y)))
            keep = through_x <= torch.nan_to_num(through_y, nan=torch.inf)
            restore = torch.where(keep, restore, 0.0)
            held = restore != 0
            keep = keep.to(c.dtype)
            u, jx, jy = u + keep * ur, jx + keep * rx, jy + keep * ry
            tangent_gap = tangent_gap + keep * restore_residual
        tx, ty = -(step_fx + jx), -mask(gamma * fy + jy)
        reach = self.certify * torch.clamp(torch.linalg.vector_norm(y), min=1.0)
        trust = torch.where(distance > reach, reach / torch.where(distance > reach, distance, 1.0), 1.0)
        sx, sy = trust * tx, trust * ty - newton
        if held is not None:    # y_i stays on its bound while x restores c_i: no step of y_i (nor in the slope)
            sy = torch.where(held, 0.0, sy)
        stationarity = (inner(tx, tx) / ratio ** 2 + inner(ty, ty)) / gamma ** 2
        nu_norm = torch.linalg.vector_norm(u) / gamma
        diag = {"f": f, **lower_diagnostics(problem, y, g, gy), "kkt_stationarity": stationarity,
                "step_size": gamma, "multiplier_norm": nu_norm, "trust": trust}
        slope = inner(fx, sx) + inner(fy, sy)
        # c + J s = trust (r_t + damping u + r_r - r) + r_n, from the residuals of the solves and the part r of c
        # that t restores
        linearized = torch.linalg.vector_norm(trust * (tangent_gap - restore) + newton_residual)
        return ((sx, sy), Aux(diag, nu=u / gamma), warm, (fx, fy), lf, ratio,
                (f, torch.linalg.vector_norm(c), linearized, slope, nu_norm))

    def _projected_step(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> tuple:
        """z <- P(z + t s), t the first of 1, 1/2, 1/4, ... with (Armijo on the exact penalty)

            phi(P(z + t s)) <= phi(z) + 1e-4 t (<grad f, s> + mu (||c + J s|| - ||c||)) + 1e-10 (|f| + mu ||c||),
            phi = f + mu ||c||,

        mu = max(penalty_decay mu_prev, 2 ||nu||, 2 <grad f, s>_+ / (||c|| - ||c + J s||)) (Nocedal and
        Wright's rule, which keeps mu_prev, relaxed: s descends on phi with every such mu, and a mu
        inflated by the first steps no longer cuts every later one; c + J s = theta (r_u + ||c||^2 u) + r_v
        from the residuals r_u, r_v of the two solves, so its norm is known without a product). The
        relative slack 1e-10 lies far above round-off in phi: where the decrease is at round-off level (near a
        solution), every order of summation accepts t = 1 alike. t = 1 under torch.func.vmap (no
        test on values there)."""
        (sx, sy), aux, u, grad_f, lf, ratio, (f, c_norm, linearized, slope, nu_norm) = self._projected(
            problem, oracle, state)
        reduction = c_norm - linearized
        needed = torch.where(reduction > 0, 2 * torch.clamp(slope, min=0) / torch.where(reduction > 0, reduction, 1.0),
                             0.0)
        penalty = torch.maximum(self.penalty_decay * torch.as_tensor(state.penalty, dtype=f.dtype),
                                torch.maximum(2 * nu_norm, needed))
        t, corrected = 1.0, None
        if isinstance(as_float(f), float):
            merit = float(f + penalty * c_norm)
            decrease = 1e-4 * float(slope + penalty * (linearized - c_norm))
            slack = 1e-10 * (abs(float(f)) + float(penalty * c_norm))
            for trial_number in range(40):
                x, y = problem.project_x(state.x + t * sx), problem.project_y(state.y + t * sy)
                trial, c, free = penalty_merit(problem, oracle, x, y, penalty)
                if math.isfinite(trial) and trial <= merit + t * decrease + slack:
                    break
                if trial_number == 0 and self.second_order_correction:
                    corrected = self._corrected(problem, oracle, x, y, c, free, penalty)
                    if corrected is not None and corrected[1] <= merit + decrease + slack:
                        break
                    corrected = None
                t *= 0.5
        x, y = problem.project_x(state.x + t * sx), problem.project_y(state.y + t * sy)
        if corrected is not None:   # (t = 1)
            y = corrected[0]
        new = state.replace(x=x, y=y, k=state.k + 1, velocity=(x - state.x, y - state.y), multiplier=u,
                            grad_f=grad_f, lipschitz_f=lf, penalty=as_float(penalty), ratio=ratio)
        return self._escape(problem, oracle, new), aux

    def _corrected(self, problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, c: Tensor,
                   free: Tensor | None, penalty: Tensor) -> tuple | None:
        """The second-order correction of a rejected full step (Nocedal and Wright, 18.3): at the trial
        point z+ = (x, y), y+ <- P_Y(y+ - v) with v the Newton step H v = c(z+) (`newton_steps`, H = grad_yy g
        there). A tangent step keeps c = grad_y g = 0 only to first order: where the lower-level solutions
        curve in x (c grows as |t_x|^2), the merit f + mu ||c|| rejects the long steps that follow them, and
        x crawls at the step lengths of backtracking (the Maratos effect); the correction returns y to the
        lower level at x+, so that the test weighs f along it. Returns (y', the merit at (x, y')) or None."""
        mask = (lambda t: t) if free is None else (lambda t: t * free)
        vjp, _ = oracle.lower_jacobian(x, y)
        v, _ = newton_steps(lambda w: mask(vjp(mask(w))[1]), c, self.cg_iters, self.cg_tol)
        y = problem.project_y(y - v)
        merit = penalty_merit(problem, oracle, x, y, penalty)[0]
        return (y, merit) if math.isfinite(merit) else None

    # ----- minibatches: two independent lower batches (estimator="independent") -------------------
    def _noisy_schedule(self, oracle: Oracle) -> bool:
        """Whether the steps follow the stochastic schedule: "diminishing" on minibatches with the
        independent estimator."""
        return self.schedule == "diminishing" and oracle.stochastic and self._independent(oracle)

    def _independent(self, oracle: Oracle) -> bool:
        """Whether h and grad h come from two independent lower batches: estimator="independent",
        or by default (estimator=None) whenever the oracle evaluates minibatches; "tracked" outside the
        stochastic schedule, which alone keeps its memory."""
        return self.estimator in ("independent", "tracked") or (self.estimator is None and oracle.stochastic)

    def _stochastic_direction(self, problem: BilevelProblem, oracle: Oracle, state: PGDQPState) -> Direction:
        """The QP step from unbiased estimates of h and grad h on two independent lower batches
        B1 (the loop's) and B2 (`independent_h_and_grad`; J = [grad_yx g, grad_yy g]), at the
        schedule's steps (schedule="diminishing" on minibatches runs `stochastic_step` instead)."""
        x, y = state.x, state.y
        f, fx, fy = oracle.grad_f(x, y)
        g, gy1, gy2, h, hx, hy = independent_h_and_grad(oracle, x, y)
        lf, lh = state.lipschitz_f, state.lipschitz_h
        gamma, alpha = self._parameters(state, lf, lh)
        y_scale = 1.0 if self.lower_step_size is None else self.lower_step_size / gamma
        dx, dy, lam = self._qp((fx, fy), (hx, hy), alpha, y_scale, state.h0)
        stationarity = inner(dx, dx) + (inner(dy, dy) if self.lower_step_size is None else inner(dy, dy) / y_scale ** 2)
        aux = Aux({"f": f, "g": g, "h": h, "kkt_stationarity": stationarity, "kkt_feasibility": h, "lambda": lam,
                   "step_size": gamma, "alpha": alpha}, nu=lam * (gy1 + gy2))
        return Direction(dx, dy, gamma, lf, lh, None, aux)


def independent_h_and_grad(oracle: Oracle, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
    """(g_B1, grad_y g_B1, grad_y g_B2, h, grad_x h, grad_y h) with the unbiased two-batch estimates

        h ~ <grad_y g_B1, grad_y g_B2>,   grad h ~ J_B1^T grad_y g_B2 + J_B2^T grad_y g_B1,

    B1 the oracle's current lower batch, B2 a new one (`oracle.resample("lower")`); the oracle is
    left on B1. Two gradients of g and two backward products through grad_y g."""
    first = oracle.batches
    g, _, gy1 = oracle.grad_g(x, y)
    oracle.resample("lower")
    gy2 = oracle.grad_g_y(x, y)
    hx2, hy2 = oracle.vjp_grad_y_g(x, y, gy1)       # J_B2^T grad_y g_B1
    oracle.batches = first
    hx1, hy1 = oracle.vjp_grad_y_g(x, y, gy2)       # J_B1^T grad_y g_B2
    return g, gy1, gy2, inner(gy1, gy2), hx1 + hx2, hy1 + hy2


@dataclass(frozen=True)
class StochasticState(PGDQPState, AdaptiveXState):
    """pgdqp's state on minibatches: also the tracked estimate c_k of grad_y g at (x_k, y_k) and
    the memory of the adaptive x step (`base.x_step`)."""

    lower_grad: Tensor | None = None


def stochastic_init(solver: PGDQP, problem: BilevelProblem, oracle: Oracle,
                    generator: torch.Generator) -> StochasticState:
    """L_f and L_h by power iteration at (x0, y0) on the first batches (floored as on full data),
    kept fixed; gamma_0 = step_size or step_scale / L_f; y0 warm-started for rho="warm"."""
    x = problem.x0
    y, h0 = solver._start_y(problem, oracle, generator)
    lf = solver.lipschitz_f or as_float(curvature_floor(
        power_iteration(lambda v: oracle.hvp_f(x, y, *v), (x, y), solver.power_iters, generator),
        oracle.grad_f(x, y)[1:], x, y))
    lh = solver.lipschitz_h or as_float(curvature_floor(
        power_iteration(lambda v: oracle.hvp_h(x, y, *v), (x, y), solver.power_iters, generator),
        oracle.h_and_grad(x, y)[3:], x, y))
    return StochasticState(x=x, y=y, h0=h0, lipschitz_f=lf, lipschitz_h=lh,
                           gamma0=solver.step_size or solver.step_scale / lf)


def tracked_h_and_grad(oracle: Oracle, state: StochasticState, beta: float) -> tuple[Tensor, ...]:
    """(g_B, c_k, h, grad_x h, grad_y h) from the recursive (STORM) estimate of c = grad_y g,

        c_k = grad_y g_B(z_k) + (1 - beta) (c_(k-1) - grad_y g_B(z_(k-1))),   c_0 = grad_y g_B(z_0),
        h ~ ||c_k||^2,   grad h ~ 2 J_B(z_k)^T c_k,

    both gradients on the loop's lower batch B. c_k - grad_y g(z_k) is a sum of the batches' errors
    weighted (1 - beta)^j and of the differences grad_y g_B(z_i) - grad_y g_B(z_(i-1)) - (the same on
    all the data), which shrink with the steps: near the lower-level solution, where c is small
    and the steps are short, its variance is about beta / 2 that of one batch. Two gradients of g
    and one backward product."""
    x, y = state.x, state.y
    g, _, gy = oracle.grad_g(x, y)
    c = gy
    if state.lower_grad is not None and state.velocity is not None:
        previous = oracle.grad_g_y(x - state.velocity[0], y - state.velocity[1])
        c = gy + (1 - beta) * (state.lower_grad - previous)
    hx, hy = oracle.vjp_grad_y_g(x, y, c)
    return g, c, inner(c, c), 2 * hx, 2 * hy


def stochastic_direction(solver: PGDQP, oracle: Oracle, state: StochasticState) -> tuple:
    """(d_x, d_y, gamma_k, c_k, Aux): the QP step of eq. 8 on the minibatch estimates, with

        gamma_k = gamma_0 / (1 + k/noise_decay),   alpha_k = feasibility / (gamma_k L_h)."""
    x, y = state.x, state.y
    f, fx, fy = oracle.grad_f(x, y)
    if solver.estimator == "independent":
        g, gy1, gy2, h, hx, hy = independent_h_and_grad(oracle, x, y)
        c = 0.5 * (gy1 + gy2)
    else:
        g, c, h, hx, hy = tracked_h_and_grad(oracle, state, solver.tracking)
    gamma = state.gamma0 / (1.0 + state.k / solver.noise_decay)
    alpha = solver.alpha or solver.feasibility / (gamma * state.lipschitz_h)
    y_scale = 1.0 if solver.lower_step_size is None else solver.lower_step_size / state.gamma0
    dx, dy, lam = solver._qp((fx, fy), (hx, hy), alpha, y_scale, state.h0)
    stationarity = inner(dx, dx) + inner(dy, dy) / y_scale ** 2
    aux = Aux(dict(zip(QP_DIAGNOSTICS, (f, g, h, stationarity, h, lam, gamma, gamma * y_scale, alpha))), nu=2 * lam * c)
    return dx, dy, gamma, c, aux


def x_step_size(solver: PGDQP, state: StochasticState, dx: Tensor, gamma: float | Tensor) -> tuple:
    """(eta_k, the AdaGrad memory): gamma_k where step_size is given, else 0 for the first x_wait
    steps and then AdaGrad-norm on d_x from there, eta_k = x_scale / sqrt(sum_(x_wait<=i<=k)
    ||d_x,i||^2 / dim x) (`base.x_step`). The memory is made at the first step that moves x, so
    the compiled step (which starts from a memory) never waits."""
    if solver.step_size is not None:
        return gamma, None
    if state.x_memory is None and state.k < solver.x_wait_steps:
        return dx.new_zeros(()), None
    return x_step(None, solver.x_scale, state, dx)


def stochastic_step(solver: PGDQP, problem: BilevelProblem, oracle: Oracle,
                    state: StochasticState) -> tuple[StochasticState, Aux]:
    """y <- P_Y(y + gamma_k d_y), x <- P_X(x + eta_k d_x): eta_k = gamma_k where step_size is given,
    else 0 for x_wait steps and AdaGrad-norm on d_x from there (`x_step_size`); heavy ball only where
    momentum is given.
    One compiled graph where the oracle compiles (`fused_stochastic_step`)."""
    if (oracle.fuses and solver.estimator != "independent" and state.lower_grad is not None
            and state.velocity is not None and (solver.step_size is not None or state.x_memory is not None)):
        return fused_stochastic_step(solver, problem, oracle, state)
    dx, dy, gamma, c, aux = stochastic_direction(solver, oracle, state)
    eta, memory = x_step_size(solver, state, dx, gamma)
    aux.diagnostics["step_size"] = eta
    vx, vy = eta * dx, gamma * dy
    if solver.momentum and state.velocity is not None:
        vx, vy = vx + solver.momentum * state.velocity[0], vy + solver.momentum * state.velocity[1]
    x, y = problem.project_x(state.x + vx), problem.project_y(state.y + vy)
    new = state.replace(x=x, y=y, k=state.k + 1, velocity=(x - state.x, y - state.y), x_memory=memory,
                        lower_grad=c)
    return new, aux


def fused_stochastic_step(solver: PGDQP, problem: BilevelProblem, oracle: Oracle,
                          state: StochasticState) -> tuple[StochasticState, Aux]:
    """`stochastic_step` (tracked estimator) as one call of a compiled graph on the current batches
    (`Oracle.fused`; the batches are inputs of the graph, so one graph serves every batch of one
    shape), counted as the calls inside (two gradients of g, one of f, one backward product): the
    iteration counter and the AdaGrad memory enter as tensors; the guard's sum is made inside
    (`Aux.checksum`). From the second step on (the first makes the memories), the iterates of the
    eager step up to round-off."""
    x = state.x
    adaptive = solver.step_size is None
    update = oracle.fused(("pgdqp-stochastic", adaptive), lambda: _fused_stochastic_update(solver, problem, state),
                          n_grad_f=1, n_grad_g=2, n_hvp=1)
    x, y, vx, vy, c, nu, total, *rest = update(x, state.y, *state.velocity, state.lower_grad,
                                               torch.as_tensor(state.k, dtype=x.dtype, device=x.device),
                                               *((state.x_memory,) if adaptive else ()))
    new = state.replace(x=x, y=y, k=state.k + 1, velocity=(vx, vy), lower_grad=c,
                        x_memory=rest[len(QP_DIAGNOSTICS)] if adaptive else state.x_memory)
    return new, Aux(dict(zip(QP_DIAGNOSTICS, rest[:len(QP_DIAGNOSTICS)])), nu=nu, checksum=total)


def _fused_stochastic_update(solver: PGDQP, problem: BilevelProblem, start: StochasticState):
    """The function of tensors that `fused_stochastic_step` compiles; the run's fixed constants
    (gamma_0, L_h, h0) are those of `start`."""
    adaptive = solver.step_size is None

    def update(ops, x, y, vx, vy, c, k, *memory):
        state = start.replace(x=x, y=y, k=k, velocity=(vx, vy), lower_grad=c,
                              x_memory=memory[0] if adaptive else start.x_memory)
        new, aux = stochastic_step(solver, problem, _Derivatives(ops, stochastic=True), state)
        values, total = _graph_diagnostics(new, aux)
        return (new.x, new.y, *new.velocity, new.lower_grad, aux.nu, total, *values,
                *((new.x_memory,) if adaptive else ()))
    return update


def multiplier_steps(jac, jac_t, c: Tensor, step_f: tuple[Tensor, Tensor], damping: Tensor, start: Tensor,
                     iters: int, tol: float) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
    """Conjugate gradients from `start` on the multiplier equation of "projected",

        (J P J^T + damping I) u = c - J w,   w = gamma P grad f (`step_f`),

    with jac(v) = J v and jac_t(u) = P J^T u, stopped after `iters` steps or once the residual r
    is below tol (||c|| + ||J w||); returns (u, P J^T u, r). P J^T u is carried along (P J^T of
    each search direction is a by-product of its matrix product): 3 + 2 (steps) products. The
    threshold is loose enough to be met well above round-off (a step more or less changes u by
    about tol). A direction of zero curvature ends the steps."""
    u = start
    tx, ty = jac_t(u)
    jw = jac(*step_f)
    r = c - jw - jac(tx, ty) - damping * u
    bound = tol ** 2 * (torch.linalg.vector_norm(c) + torch.linalg.vector_norm(jw)) ** 2
    p, rr = r, inner(r, r)
    tiny = torch.finfo(c.dtype).tiny
    for _ in range(iters):
        if isinstance(as_float(rr), float) and float(rr) <= float(bound):
            break
        px, py = jac_t(p)
        ap = jac(px, py) + damping * p
        curvature = inner(p, ap)
        step = torch.where(curvature > tiny, rr / torch.clamp(curvature, min=tiny), 0.0)
        u, tx, ty = u + step * p, tx + step * px, ty + step * py
        r = r - step * ap
        rr_next = inner(r, r)
        p = r + torch.where(rr > tiny, rr_next / torch.clamp(rr, min=tiny), 0.0) * p
        rr = rr_next
    return u, (tx, ty), r


def newton_steps(hess, c: Tensor, iters: int, tol: float) -> tuple[Tensor, Tensor]:
    """Truncated conjugate gradients from 0 on the Newton equation of the lower level, H v = c
    (H = grad_yy g, c = grad_y g): at most `iters` steps, stopped once ||c - H v|| <= tol ||c|| or at a
    direction of curvature <= 0 (Steihaug; there the first step is taken with |curvature|), so that
    -v is a descent direction of g(x, .) also where H is indefinite. Returns (v, c - H v). One
    product a step; the stops are masks under torch.func.vmap."""
    v, r = torch.zeros_like(c), c
    p, rr = r, inner(r, r)
    bound = tol ** 2 * rr
    tiny = torch.finfo(c.dtype).tiny
    live = torch.ones((), dtype=torch.bool, device=c.device)
    for k in range(iters):
        if isinstance(as_float(rr), float) and (float(rr) <= float(bound) or not bool(live)):
            break
        hp = hess(p)
        curvature = inner(p, hp)
        if k == 0:
            curvature = curvature.abs()
        live = live & (curvature > tiny) & (rr > bound)
        step = torch.where(live, rr / torch.clamp(curvature, min=tiny), 0.0)
        v, r = v + step * p, r - step * hp
        rr_next = inner(r, r)
        p = r + torch.where(rr > tiny, rr_next / torch.clamp(rr, min=tiny), 0.0) * p
        rr = rr_next
    return v, r


def restored_through_x(y: Tensor, c: Tensor, fy: Tensor, newton_length: Tensor,
                       bounds: tuple | None) -> Tensor | None:
    """The part r of c = grad_y g that "projected"'s tangent step may restore (J t = -r), through x:
    c_i where f holds y_i on a bound that g's slope points away from (y_i = low_i with c_i < 0 and
    grad_y f_i > 0, or y_i = high_i with c_i > 0 and grad_y f_i < 0) and grad_yy g has no curvature
    along c (`newton_steps` gives v = 0: newton_length = ||v|| = 0); zero elsewhere, and None
    where nothing is restored (a value test, skipped under torch.func.vmap).

    There g is linear in y: its solution lies on the far bound, and y_i stays a lower-level solution
    on f's side of the box only where x makes c_i vanish (the complementarity c_i >= 0 at y_i = low_i).
    The Newton step has no length there and J t = 0 would keep x still, away from the lower level
    (BOLIB's Yezza1996Ex31: y = 0, x short of 1/4). The step takes r only where x's way costs f no
    more than y's move to its far bound. An interior y_i, or one that f does not hold, keeps J t = 0
    and reaches its bound by the lower-level checks (f = x, g = x y in tests/test_statuses.py:
    restoring c = x through x there would pin x at 0, where every y is a solution)."""
    if bounds is None:
        return None
    # on a bound that f's slope pushes against and that g's descent -c leaves
    held = ~free_coordinates(y, fy, bounds) & ~free_coordinates(y, -c, bounds) & (newton_length == 0)
    any_held = as_float(held.any())
    if isinstance(any_held, float) and not any_held:
        return None
    return torch.where(held, c, torch.zeros_like(c))


def held_by_x_bounds(x: Tensor, slope: Tensor, bounds: tuple | None) -> Tensor | None:
    """The coordinates of x on a bound that the step -slope pushes against (a bool mask), or None
    where there are none (a value test; under torch.func.vmap the mask is returned whatever it
    holds, and the caller's second solve with an all-free mask repeats the first bit for bit).

    "projected"'s tangent step keeps J t = 0; where the projection onto the x box then cuts t_x,
    the y part of t no longer matches, and y is pushed off the lower-level solution by |t_y| at
    every step (a fixed point with grad_y g != 0). The tangent is solved again with those
    coordinates of x held (the bound's multiplier takes their part of grad f + J^T nu)."""
    free = free_coordinates(x, slope, bounds)
    if free is None:
        return None
    held = ~free
    any_held = as_float(held.any())
    if isinstance(any_held, float) and not any_held:
        return None
    return held


def penalty_merit(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor,
                  penalty: Tensor) -> tuple[float, Tensor, Tensor | None]:
    """(f + mu ||c||, c, the free mask) at (x, y), "projected"'s merit: c = grad_y g on the free
    coordinates of a y box (`free_coordinates`; the mask None without one)."""
    gy = oracle.grad_g_y(x, y)
    free = free_coordinates(y, gy, problem.y_bounds)
    c = gy if free is None else gy * free
    return float(oracle.f(x, y) + penalty * torch.linalg.vector_norm(c)), c, free


def free_coordinates(t: Tensor, slope: Tensor | None, bounds: tuple | None) -> Tensor | None:
    """The coordinates that a step -slope may move (a bool mask), or None without a box: all but
    those at a bound that -slope pushes against, t_i = low_i with slope_i > 0 or t_i = high_i with
    slope_i < 0. (`BilevelProblem.free_y` tests a unit step, t - slope inside the box, which also
    holds a coordinate whose unit step crosses the whole box: y = 1 with slope 3 in [0, 1].)"""
    if bounds is None or slope is None:
        return None
    low, high = bounds
    held = torch.zeros_like(t, dtype=torch.bool)
    if low is not None:
        held = held | ((t <= low) & (slope > 0))
    if high is not None:
        held = held | ((t >= high) & (slope < 0))
    return ~held


def curvature_floor(estimate: Tensor, gradient: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """A curvature estimate L (power iteration at z0 = (x0, y0)) floored at the problem's scale,

        L >= ||grad(z0)|| / max(1, ||z0||),

    so that a first step 1/L along the gradient moves z by at most max(1, ||z0||): power
    iteration finds no curvature where the function is linear at z0 (f = y: L = 0, a step of
    1e12); the secants raise L from there where curvature shows up later."""
    norm = torch.sqrt(sum(inner(t, t) for t in gradient))
    scale = torch.clamp(torch.sqrt(inner(x, x) + inner(y, y)), min=1.0)
    return torch.maximum(estimate, (norm / scale).to(estimate.dtype))


def negative_curvature(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, iters: int,
                       seed: int) -> tuple[float, float, Tensor] | None:
    """(mu, L_g, v): L_g the largest |eigenvalue| of H = grad_yy g(x, y) on the free coordinates of y
    (power iteration), v the unit vector of power iteration on L_g I - H (its largest eigenvalue is
    L_g - mu_min) and mu = <v, H v>; None where no coordinate is free. 2 iters products."""
    free = problem.free_y(y, oracle.grad_g_y(x, y))
    if free is not None and not bool(free.any()):
        return None

    def hess(v: Tensor) -> Tensor:
        v = v if free is None else v * free
        out = oracle.vjp_grad_y_g(x, y, v)[1]
        return out if free is None else out * free

    generator = torch.Generator().manual_seed(seed)
    lipschitz_g = float(power_iteration(lambda v: (hess(v[0]),), (y,), iters, generator))
    v = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    v = v if free is None else v * free
    for _ in range(iters):
        v = v / torch.clamp(torch.linalg.vector_norm(v), min=torch.finfo(v.dtype).tiny)
        v = lipschitz_g * v - hess(v)
    v = v / torch.clamp(torch.linalg.vector_norm(v), min=torch.finfo(v.dtype).tiny)
    return float(inner(v, hess(v))), lipschitz_g, v


def lower_escape(g0: float, ends: list[Tensor], lower: list[float], gain: float) -> Tensor | None:
    """The end point y' of least g(x, .) (`lower`: g(x, y') of each end point) where
    g(x, y') < g(x, y) - gain max(1, |g(x, y)|) (y is not a global lower-level solution), else None."""
    best, best_g = None, g0 - gain * max(1.0, abs(g0))
    for end, value in zip(ends, lower):
        if math.isfinite(value) and value < best_g:
            best, best_g = end, value
    return best


def optimistic_choice(oracle: Oracle, x: Tensor, y: Tensor, g0: float, ends: list[Tensor], lower: list[float],
                      tie: float, gain: float) -> Tensor | None:
    """The optimistic selection among lower-level solutions at x: of the end points y' (`lower`: their
    g(x, y')) with as low a lower level, g(x, y') <= g(x, y) + tie max(1, |g(x, y)|), the one of least
    f(x, .) where f(x, y') < f(x, y) - gain max(1, |f(x, y)|), else None. The Newton step goes to the
    stationary point of g(x, .) nearest y; the bilevel problem wants, of the equally good ones, the best for f."""
    f0 = float(oracle.f(x, y))
    level = g0 + tie * max(1.0, abs(g0))
    best, best_f = None, f0 - gain * max(1.0, abs(f0))
    for end, g_end in zip(ends, lower):
        if not (math.isfinite(g_end) and g_end <= level):
            continue
        value = float(oracle.f(x, end))
        if math.isfinite(value) and value < best_f:
            best, best_f = end, value
    return best


def box_points(problem: BilevelProblem, y: Tensor, n: int, seed: int) -> list[Tensor]:
    """n points drawn uniformly from the y box (none unless every coordinate has two finite bounds)."""
    bounds = problem.y_bounds
    if not n or bounds is None or bounds[0] is None or bounds[1] is None:
        return []
    low, high = (torch.broadcast_to(b, y.shape) for b in bounds)
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        return []
    generator = torch.Generator().manual_seed(seed)
    return [low + (high - low) * torch.rand(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            for _ in range(n)]


def armijo_descent(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, steps: int,
                   step_size: float) -> Tensor:
    """`steps` projected gradient steps on g(x, .) from y, each step halved until g falls
    (Armijo: g(y') <= g(y) - 1/2 <grad, y - y'>), and the next tried at twice the last accepted."""
    value = oracle.g(x, y)
    for _ in range(steps):
        gy = oracle.grad_g_y(x, y)
        for _ in range(30):
            trial = problem.project_y(y - step_size * gy)
            trial_value = oracle.g(x, trial)
            if bool(trial_value <= value - 0.5 * inner(gy, y - trial)):
                break
            step_size *= 0.5
        else:
            return y
        y, value, step_size = trial, trial_value, 2 * step_size
    return y


def _ratio(num: Tensor, den: Tensor, largest: float) -> Tensor:
    """num / den within (0, largest], and `largest` where den is 0."""
    value = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), largest)
    return torch.clamp(value, max=largest)


def _scaled(v: tuple[Tensor, Tensor], root: Tensor) -> tuple[Tensor, Tensor]:
    """P^1/2 v for P = diag(root^2 I_x, I_y)."""
    return root * v[0], v[1]


def _minimum(a: float | Tensor, b: float | Tensor) -> float | Tensor:
    """min(a, b) for floats or (batched) 0-d tensors."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.minimum(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return min(a, b)


def warm_start(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, steps: int, tol: float,
               power_iters: int, generator: torch.Generator) -> Tensor:
    """y after gradient descent on g(x, .) with step 1/L_g (L_g by power iteration on grad_yy g),
    stopped once h <= tol."""
    if steps == 0:
        return y
    lipschitz_g = curvature_in_y(oracle, x, y, generator, iters=power_iters)
    return descend(problem, oracle, x, y, steps=steps, step_size=1.0 / lipschitz_g, tol=tol)
