"""pgdqp: the QP step in closed form, the schedules, and convergence to known answers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel import PROBLEMS, BilevelProblem, Status, solve
from bilevel.core.oracles import Autograd, Oracle
from bilevel.solvers import PGDQP
from bilevel.solvers.pgdqp import qp_step

D = torch.float64


def test_qp_step_matches_eq8_when_the_constraint_is_active():
    fx, fy = torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0], dtype=D)
    hx, hy = torch.tensor([-1.0, 0.0], dtype=D), torch.tensor([0.0], dtype=D)
    # <grad h, grad f> = -1, alpha rho = 0.5: lambda = (1 + 0.5) / 1 = 1.5
    dx, dy, lam = qp_step((fx, fy), (hx, hy), torch.tensor(0.5, dtype=D))
    assert float(lam) == 1.5
    torch.testing.assert_close(dx, torch.tensor([0.5, 0.0], dtype=D))
    # the constraint holds with equality: <grad h, d> + alpha rho = 0
    assert abs(float(hx @ dx + 0.5)) < 1e-15


def test_qp_step_is_gradient_descent_when_inactive_or_grad_h_is_zero():
    fx, fy = torch.tensor([1.0, 2.0], dtype=D), torch.tensor([3.0], dtype=D)
    hx, hy = torch.tensor([1.0, 1.0], dtype=D), torch.tensor([1.0], dtype=D)
    dx, dy, lam = qp_step((fx, fy), (hx, hy), torch.tensor(0.1, dtype=D))  # <h, f> = 6 > 0.1: inactive
    assert float(lam) == 0.0
    torch.testing.assert_close(torch.cat([dx, dy]), -torch.cat([fx, fy]))
    zero = torch.zeros(2, dtype=D), torch.zeros(1, dtype=D)
    dx, dy, lam = qp_step((fx, fy), zero, torch.tensor(0.0, dtype=D))
    assert float(lam) == 0.0 and torch.equal(dx, -fx) and torch.equal(dy, -fy)


def test_qp_step_with_y_scaling_solves_the_scaled_qp():
    gen = torch.Generator().manual_seed(0)
    fx, fy, hx, hy = (torch.randn(3, generator=gen, dtype=D) for _ in range(4))
    r = 0.25
    dx, dy, lam = qp_step((fx, fy), (hx, hy), torch.tensor(2.0, dtype=D), y_scale=r)
    assert float(lam) > 0
    assert abs(float(hx @ dx + hy @ dy + 2.0)) < 1e-12                 # active constraint, equality
    torch.testing.assert_close(dy, -r * (fy + lam * hy))


def test_one_constant_step_is_algorithm_1_by_hand():
    """On g = 1/2 ||y - A x||^2 and f = 1/2||x||^2 + 1/2||y - b||^2, compute eq. 8 by hand."""
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D)
    b = torch.tensor([1.0, -1.0], dtype=D)
    x0, y0 = torch.tensor([0.5, -0.5], dtype=D), torch.tensor([1.0, 1.0], dtype=D)
    problem = BilevelProblem(lambda x, y: 0.5 * (x @ x) + 0.5 * ((y - b) ** 2).sum(),
                             lambda x, y: 0.5 * ((y - A @ x) ** 2).sum(), x0, y0)
    gamma, alpha = 0.1, 0.7
    r = y0 - A @ x0                                     # grad_y g
    hx, hy = 2 * (-A).T @ r, 2 * r                      # grad h = 2 J^T grad_y g, J = [-A, I]
    fx, fy = x0, y0 - b
    rho = hx @ hx + hy @ hy
    lam = max(0.0, float(-(hx @ fx + hy @ fy) + alpha * rho)) / float(rho)
    x1, y1 = x0 - gamma * (fx + lam * hx), y0 - gamma * (fy + lam * hy)
    result = solve(problem, "pgdqp", max_iter=1, options=dict(schedule="constant", step_size=gamma, alpha=alpha))
    torch.testing.assert_close(result.x, x1)
    torch.testing.assert_close(result.y, y1)
    assert math.isclose(result.history["lambda"][0], lam, rel_tol=1e-12)
    # one step costs one grad f and one double backward (grad_y g and its backward)
    assert (result.history["n_grad_f"][1], result.history["n_grad_g"][1], result.history["n_hvp"][1]) == (1, 1, 1)


def _distance(problem, result):
    return float((result.x - problem.info["x_star"]).norm())


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(seed=0), dict(dim_x=10, dim_y=8, cond=10.0, seed=3),
                                    dict(dim_x=3, dim_y=6, cond=3.0, seed=7)])
def test_default_reaches_closed_form_solution_of_quadratic(kwargs):
    problem = PROBLEMS["quadratic"](**kwargs)
    result = solve(problem, "pgdqp", max_iter=2000, log_every=1000)
    assert result.status is Status.COMPLETED
    assert _distance(problem, result) < 1e-6


@pytest.mark.slow
def test_constant_step_hovers_and_theorem_schedule_improves_with_max_iter():
    problem = PROBLEMS["quadratic"](seed=2)
    errors = [_distance(problem, solve(problem, "pgdqp", max_iter=k, log_every=k, options=dict(schedule="theorem")))
              for k in (1000, 10000)]
    assert errors[1] < 0.7 * errors[0]


def test_warm_rho_warm_starts_y0_and_converges():
    problem = PROBLEMS["quadratic"](seed=5)
    result = solve(problem, "pgdqp", max_iter=3000, log_every=3000, options=dict(rho="warm", schedule="constant", step_size=0.05, alpha=0.5))
    assert result.history["h"][0] < 1e-9          # the warm start made h(x0, y0) small
    assert _distance(problem, result) < 0.2


@pytest.mark.slow
def test_nonconvex_lower_level_reaches_approximate_kkt_point():
    # the default decay of 10 leaves h near 1e-4 here after 20000 iterations; a slower decay
    # with a full feasibility step reaches an exact KKT point (benchmarks/RESULTS.md)
    problem = PROBLEMS["synthetic-nc"](seed=0)
    result = solve(problem, "pgdqp", max_iter=20000, log_every=2000, options=dict(schedule="diminishing", decay=30.0, feasibility=1.0))
    assert result.final("h") <= 1e-6
    assert result.final("delta_norm") ** 2 <= 1e-3


@pytest.mark.slow
def test_many_lower_level_solutions_reaches_approximate_kkt_point():
    """g = 1/2 ||P y - x||^2 with P of rank 1 in R^3: the lower level has a line of solutions."""
    P = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    target = torch.tensor([1.0, -2.0, 3.0], dtype=D)
    problem = BilevelProblem(lambda x, y: ((y - target) ** 2).sum() + (x ** 2).sum(),
                             lambda x, y: 0.5 * ((P @ y - x) ** 2).sum(),
                             torch.zeros(2, dtype=D), torch.zeros(3, dtype=D))
    # an approximate KKT point: some multiplier makes the residual small (the least-squares one)
    result = solve(problem, "pgdqp", max_iter=2000, log_every=1000, kkt="least_squares")
    assert result.final("h") <= 1e-6
    assert result.final("kkt_stationarity") <= 1e-3
    # the optimistic solution: y3 = 3, y1 + y2 = x1 = 2 x*, x2 = 0 with x1 = (y1 + y2) minimising
    # (y1 - 1)^2 + (y2 + 2)^2 + x1^2  ->  y1 - y2 = 3, y1 + y2 = -1/3
    torch.testing.assert_close(result.y, torch.tensor([4 / 3, -5 / 3, 3.0], dtype=D), atol=1e-2, rtol=0)


@pytest.mark.slow
def test_coreset_reaches_its_known_optimum():
    problem = PROBLEMS["coreset"](seed=0)
    result = solve(problem, "pgdqp", max_iter=1000, log_every=100)
    assert result.final("upper_objective") < 1e-6


def test_lipschitz_estimates_match_the_quadratic():
    problem = PROBLEMS["quadratic"](seed=0)
    state = PGDQP(schedule="diminishing").init(problem, Oracle(Autograd(problem.f, problem.g)), max_iter=10,
                         generator=torch.Generator().manual_seed(0))
    # f = 1/2||x - a||^2 + 1/2||y - b||^2 has curvature 1; at z0 = 0 the floor ||grad f(z0)|| / max(1, ||z0||)
    # = ||(a, b)|| is above it (a step 1/L_f moves z by at most 1)
    assert float(problem.x0.norm() + problem.y0.norm()) == 0.0
    floor = float(torch.cat(Oracle(Autograd(problem.f, problem.g)).grad_f(problem.x0, problem.y0)[1:]).norm())
    assert floor > 1.0 and abs(state.lipschitz_f - floor) < 1e-12
    assert state.lipschitz_h > 0


def _ring():
    """g = 1/4 (||y||^2 - 1 - x^2)^2: a circle of lower-level solutions whose curvature grows
    from the start (L_h about 2.5 at (x0, y0)) to the solution (about 660)."""
    c = torch.tensor([3.0, 0.0], dtype=D)
    return BilevelProblem(lambda x, y: 0.5 * ((x - 2.0) ** 2).sum() + 0.5 * ((y - c) ** 2).sum(),
                          lambda x, y: 0.25 * ((y ** 2).sum() - 1 - (x ** 2).sum()) ** 2,
                          torch.zeros(1, dtype=D), torch.tensor([0.5, 0.5], dtype=D))


def test_default_adapts_to_curvature_that_grows_beyond_the_start():
    problem = _ring()
    fixed = solve(problem, "pgdqp", max_iter=2000, log_every=500, options=dict(schedule="diminishing", adaptive=False))
    assert fixed.status is Status.DIVERGED and fixed.n_iter < 20      # the start's L_h: steps far too long
    result = solve(problem, "pgdqp", max_iter=2000, log_every=500, options=dict(schedule="diminishing"))
    assert result.status is Status.COMPLETED
    assert float(result.state.lipschitz_h) > 100 * fixed.state.lipschitz_h   # raised by the secants
    # x* minimises 1/2 (x - 2)^2 + 1/2 (3 - sqrt(1 + x^2))^2 (closed-form stationarity, by bisection)
    lo, hi = 0.0, 3.0
    for _ in range(100):
        mid = (lo + hi) / 2
        r = math.sqrt(1 + mid * mid)
        lo, hi = (mid, hi) if (mid - 2) - (3 - r) * mid / r < 0 else (lo, mid)
    assert abs(float(result.x[0]) - lo) < 1e-2
    assert result.final("h") < 1e-3


def test_given_constants_stay_fixed_and_estimated_ones_only_grow():
    problem = _ring()
    result = solve(problem, "pgdqp", max_iter=50, log_every=10, options=dict(schedule="diminishing", lipschitz_h=5000.0))
    assert result.state.lipschitz_h == 5000.0                          # a given bound is kept
    assert result.history["alpha"][1] == pytest.approx(0.5 / (result.history["step_size"][1] * 5000.0))
    start = solve(problem, "pgdqp", max_iter=1, seed=0, options=dict(schedule="diminishing", adaptive=False)).state      # the estimates at (x0, y0)
    adaptive = solve(problem, "pgdqp", max_iter=50, log_every=10, seed=0, options=dict(schedule="diminishing"))
    assert float(adaptive.state.lipschitz_h) > start.lipschitz_h
    assert float(adaptive.state.lipschitz_f) >= start.lipschitz_f
    # the constant and theorem schedules keep their constants (Algorithm 1 and the theorems as written)
    theorem = solve(PROBLEMS["quadratic"](seed=0), "pgdqp", max_iter=50, options=dict(schedule="theorem", rho="grad"))
    assert isinstance(theorem.state.lipschitz_h, float) and theorem.state.grads is None


@pytest.mark.slow
def test_linear_upper_level_gets_a_step_on_the_problems_scale():
    """f = y is linear: power iteration finds L_f = 0 at z0, and the step 1/L_f used to be 1e12.
    The floor L_f >= ||grad f(z0)|| / max(1, ||z0||) bounds the first step by sqrt(2) here.
    F(x) = x^2 (y*(x) = x^2): x* = 0."""
    problem = BilevelProblem(lambda x, y: y[0], lambda x, y: 0.5 * (y[0] - x[0] ** 2) ** 2,
                             torch.tensor([1.0], dtype=D), torch.tensor([1.0], dtype=D))
    result = solve(problem, "pgdqp", max_iter=1000, log_every=1)
    assert result.status is Status.COMPLETED
    assert max(result.history["step_size"]) <= math.sqrt(2) * (1 + 1e-9)
    assert torch.isfinite(result.x).all() and torch.isfinite(result.y).all()
    assert abs(float(result.x[0])) < 1e-2 and abs(float(result.y[0])) < 0.1


@pytest.mark.parametrize("options, message", [
    (dict(block_steps="yes"), r"Invalid block_steps: 'yes' \(expected True or False\)"),
    (dict(ratio_growth=0.9), r"Invalid ratio_growth: 0.9 \(expected a finite number >= 1.0\)"),
    (dict(max_ratio=0.0), r"Invalid max_ratio: 0.0 \(expected a finite number > 0\)"),
    (dict(ratio_warm_start=-1), r"Invalid ratio_warm_start: -1"),
])
def test_block_step_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        PGDQP(**options)


def test_block_steps_ramp_to_the_ratio_of_the_curvature_blocks():
    """f = 1/2 ||y - b||^2 + eps/2 ||x||^2 and g = 1/2 ||y - c x||^2 (c = 0.1): grad^2 f has blocks
    (eps, 1), grad^2 h = 2 J^T J with J = [-c I, I] has blocks (2 c^2, 2). So rho* = min(1/c^2, 1/eps)
    = 100 for eps = 1e-3, reached by the ramp 1.1^(k+1) after 49 steps; x moves rho times faster
    than with one step (block_steps=False)."""
    b, c, eps = torch.tensor([1.0, -2.0], dtype=D), 0.1, 1e-3
    problem = BilevelProblem(lambda x, y: 0.5 * ((y - b) ** 2).sum() + 0.5 * eps * (x ** 2).sum(),
                             lambda x, y: 0.5 * ((y - c * x) ** 2).sum(), torch.zeros(2, dtype=D),
                             torch.zeros(2, dtype=D))
    result = solve(problem, "pgdqp", max_iter=60, log_every=1, seed=0, options=dict(schedule="diminishing"))
    ratios = [s / ls for s, ls in zip(result.history["step_size"], result.history["lower_step_size"])]
    assert ratios[0] == pytest.approx(1.1)
    assert ratios[10] == pytest.approx(1.1 ** 11)
    assert ratios[-1] == pytest.approx(1 / c ** 2, rel=1e-3)
    assert float(result.state.ratio_target) == pytest.approx(1 / c ** 2, rel=1e-3)
    # F(x) = 1/2 ||c x - b||^2 + eps/2 ||x||^2: x* = c b / (c^2 + eps); block steps get closer in 60 steps
    x_star = c * b / (c ** 2 + eps)
    joint = solve(problem, "pgdqp", max_iter=60, log_every=60, seed=0, options=dict(schedule="diminishing", block_steps=False))
    assert float((result.x - x_star).norm()) < 0.5 * float((joint.x - x_star).norm())


@pytest.mark.slow
def test_escapes_lower_level_maximisers_and_non_global_minimisers():
    """h = ||grad_y g||^2 vanishes at every stationary point of g, so the QP alone keeps y where
    grad_y g = 0. g = y^4/4 - y^2/2 from y0 = 0 (a maximiser; minimisers +-1) and f = y^2 + (x-1)^2/2,
    which pulls y to 0: the negative-curvature check (grad_yy g = -1 there) moves y to a minimiser.
    g = y^2/2 - y^3 on [-1, 1] from y0 = 0.1: y = 0 is a local minimiser (g = 0), y = 1 the global
    one (g = -1/2), found from points drawn in the box."""
    f = lambda x, y: (y ** 2).sum() + 0.5 * ((x - 1) ** 2).sum()
    saddle = BilevelProblem(f, lambda x, y: (y ** 4 / 4 - y ** 2 / 2).sum(), torch.zeros(1, dtype=D),
                            torch.zeros(1, dtype=D))
    stuck = solve(saddle, "pgdqp", max_iter=300, log_every=300, options=dict(escape_every=0))
    assert float(stuck.y.abs()) < 1e-12
    escaped = solve(saddle, "pgdqp", max_iter=1000, log_every=1000)
    assert abs(float(escaped.y.abs()) - 1) < 0.01 and escaped.final("h") < 1e-4
    local = BilevelProblem(f, lambda x, y: (y ** 2 / 2 - y ** 3).sum(), torch.zeros(1, dtype=D),
                           torch.tensor([0.1], dtype=D), y_bounds=(-1.0, 1.0))
    stuck = solve(local, "pgdqp", max_iter=300, log_every=300, options=dict(escape_starts=0))
    assert abs(float(stuck.y)) < 0.05
    escaped = solve(local, "pgdqp", max_iter=300, log_every=300)
    assert float(escaped.y) == 1.0


# ----- the QP of eq. 7 ------------------------------------------------------------------------
def bisection_qp(fx, fy, hx, hy, alpha_rho, y_scale):
    """An independent solution of the QP: the dual of one linear constraint is a 1-d concave
    problem; its maximiser lambda >= 0 is where <grad h, d(lambda)> + alpha rho crosses zero,
    with d(lambda) = -D (grad f + lambda grad h), found by bisection."""
    def slack(lam):
        dx, dy = -(fx + lam * hx), -y_scale * (fy + lam * hy)
        return float(hx @ dx + hy @ dy + alpha_rho)

    if slack(0.0) <= 0:
        return 0.0
    hi = 1.0
    while slack(hi) > 0:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slack(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=64), min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(fx=vectors, fy=vectors, hx=vectors, hy=vectors, alpha_rho=st.floats(0, 1e3),
       y_scale=st.sampled_from([1.0, 0.01, 30.0]), scale=st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]),
       case=st.sampled_from(["random", "zero_h", "parallel", "opposite"]))
def test_qp_step_is_the_qp_solution(fx, fy, hx, hy, alpha_rho, y_scale, scale, case):
    fx, fy, hx, hy = (torch.tensor(v, dtype=D) for v in (fx, fy, hx, hy))
    if case == "zero_h":
        hx, hy, alpha_rho = torch.zeros(3, dtype=D), torch.zeros(3, dtype=D), 0.0  # rho = 0 where grad h = 0
    elif case in ("parallel", "opposite"):
        c = 2.5 if case == "parallel" else -2.5
        fx, fy = c * hx, c * hy
    hx, hy, alpha_rho = hx * scale, hy * scale, alpha_rho * scale * scale
    dx, dy, lam = qp_step((fx, fy), (hx, hy), torch.tensor(alpha_rho, dtype=D), y_scale)
    lam = float(lam)
    assert lam >= 0
    hdh = float(hx @ hx + y_scale * (hy @ hy))
    if hdh == 0:  # grad h = 0: no direction can meet a positive margin; eq. 8 takes lambda = 0
        assert lam == 0.0
        torch.testing.assert_close(dx, -fx)
        torch.testing.assert_close(dy, -y_scale * fy)
        return
    size = (float(hx.norm() + hy.norm()) * float(fx.norm() + fy.norm() + 1) * max(y_scale, 1) + alpha_rho) * 1e-9
    constraint = float(hx @ dx + hy @ dy) + alpha_rho
    assert constraint <= size                                      # feasible
    assert abs(lam * constraint) <= size * (lam + 1)               # complementary slackness
    torch.testing.assert_close(dx, -(fx + lam * hx))                # stationarity of the Lagrangian
    torch.testing.assert_close(dy, -y_scale * (fy + lam * hy))
    if hdh > 0 and case == "random" and scale == 1.0:
        expected = bisection_qp(fx, fy, hx, hy, alpha_rho, y_scale)
        assert lam == pytest.approx(expected, rel=1e-7, abs=1e-9)
