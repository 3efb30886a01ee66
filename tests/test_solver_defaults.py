"""The baselines' default steps and schedules. Lower-level steps default to multiples of 1/L_g,
L_g estimated at (x0, y0): they converge where L_g is large, are invariant to the scale of g, cost
nothing when given, and a step that raises g is halved. The x step defaults to AdaGrad-norm, whose
first move is x_scale whatever the scale of f; the schedules remove the bias of a fixed penalty
(f2ba, vpbgd) or relaxation (sgf)."""
import math

import pytest
import torch
from conftest import HAND_X0 as X0
from conftest import HAND_Y0 as Y0
from conftest import hand_quadratic as problem
from conftest import roundoff

import bilevel
from bilevel import PROBLEMS, BilevelProblem, Status, solve
from bilevel.core.oracles import Autograd, Oracle
from bilevel.solvers import F2BA, GALET, SGF, VPBGD, AIDBiO
from bilevel.solvers.base import curvature_in_y

D = torch.float64
BASELINES = ("bome", "aid_bio", "vpbgd", "galet", "iaptt_gm", "meha", "f2ba", "hjfbio")


def stiff_quadratic(seed=0, n=3, m=4, low=50.0, high=100.0, coupling=5.0):
    """f = 1/2||x - a||^2 + 1/2||y - b||^2, g = 1/2 y^T Q y - y^T B x with eig(Q) in [low, high]:
    L_g = high. y*(x) = M x, M = Q^-1 B, x* = (I + M^T M)^-1 (a + M^T b)."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=D))
    Q = U @ torch.diag(torch.linspace(low, high, m, dtype=D)) @ U.T
    B = coupling * torch.randn(m, n, generator=gen, dtype=D) / math.sqrt(n)
    a, b = torch.randn(n, generator=gen, dtype=D), torch.randn(m, generator=gen, dtype=D)
    M = torch.linalg.solve(Q, B)
    x_star = torch.linalg.solve(torch.eye(n, dtype=D) + M.T @ M, a + M.T @ b)
    problem = BilevelProblem(lambda x, y: 0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum(),
                             lambda x, y: 0.5 * y @ (Q @ y) - y @ (B @ x),
                             torch.zeros(n, dtype=D), torch.zeros(m, dtype=D))
    return problem, x_star, Q


ITERS = {"bome": 2000, "aid_bio": 300, "vpbgd": 3000, "galet": 300, "iaptt_gm": 300, "meha": 3000, "f2ba": 500,
         "hjfbio": 2000}


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_defaults_converge_where_the_lower_level_is_stiff(method):
    """L_g = 100: fixed lower steps of 0.05 to 0.1 (> 2 / L_g) diverge within a few iterations
    for every baseline; steps from the estimate of L_g converge."""
    problem, x_star, _ = stiff_quadratic()
    r = solve(problem, method, max_iter=ITERS[method], log_every=ITERS[method], kkt="none")
    assert r.status is Status.COMPLETED, r.message
    assert float((r.x - x_star).norm()) < 2e-2
    assert r.state.lipschitz_g == pytest.approx(100.0, rel=5e-2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aid_bio", "galet", "iaptt_gm", "hjfbio"])
def test_hypergradient_methods_are_invariant_to_the_scale_of_g(method):
    """Scaling g by 64^k (same lower-level solutions, same x*) scales the estimate of L_g, and so
    divides the lower steps, by exactly 64^k once 1/L_g is below the cap 0.1 (L_g = 5 here, so
    from 4 g on): the methods whose x step follows the implicit hypergradient take the same
    iterates (a fixed lower step would not: too large for 4096 g, too small for 4 g).

    The scales are powers of two, which floating point multiplies exactly: the methods that use
    g only through its derivatives take bit-identical iterates. hjfbio's finite differences are
    the exception: they perturb y by delta v with v of size 1/scale, and the rounding of
    y + delta v (relative to the size of the difference) grows like eps * ratio / delta for a
    ratio of scales, once per iteration."""
    base = PROBLEMS["quadratic"](seed=0)
    scales = (4.0, 4.0 * 64, 4.0 * 64 ** 2)
    runs = []
    for scale in scales:
        problem = BilevelProblem(base.f, lambda x, y, s=scale: s * base.g(x, y), base.x0, base.y0)
        runs.append(solve(problem, method, max_iter=40, log_every=40, kkt="none", seed=3))
    assert runs[0].state.lipschitz_g == pytest.approx(20.0, rel=1e-3)
    for scale, r in zip(scales[1:], runs[1:]):
        assert r.state.lipschitz_g == runs[0].state.lipschitz_g * scale / scales[0]
        if method == "hjfbio":
            rtol = roundoff(operations=40, amplification=(scale / scales[0]) / 1e-5, margin=25)
        else:
            rtol = 0.0
        torch.testing.assert_close(r.x, runs[0].x, rtol=rtol, atol=rtol * 1e-2)
        torch.testing.assert_close(r.y, runs[0].y, rtol=rtol, atol=rtol * 1e-2)


def ring():
    """g = 1/4 (||y||^2 - 1 - x^2)^2: L_g is 0.5 at (x0, y0) and about 13 on the solution set."""
    c = torch.tensor([3.0, 0.0], dtype=D)
    return BilevelProblem(lambda x, y: 0.5 * ((x - 2.0) ** 2).sum() + 0.5 * ((y - c) ** 2).sum(),
                          lambda x, y: 0.25 * ((y ** 2).sum() - 1 - (x ** 2).sum()) ** 2,
                          torch.zeros(1, dtype=D), torch.tensor([0.5, 0.5], dtype=D))


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in BASELINES if m != "aid_bio"])
def test_default_steps_are_capped_where_the_curvature_grows_along_the_run(method):
    """1/L_g from the start (2.0) diverges once y reaches the ring (L_g about 13); the cap holds
    the steps at fixed values (0.05 to 0.1) at most there, and every baseline stays finite.
    (aid_bio is left out: CG on the singular grad_yy g of a ring of solutions blows up, with any
    step; see its docstring.)"""
    problem = ring()
    r = solve(problem, method, max_iter=300, log_every=300, kkt="none", seed=0)
    assert r.state.lipschitz_g == pytest.approx(0.5, rel=5e-2)
    assert r.status is Status.COMPLETED, r.message
    if method != "vpbgd":   # vpbgd's penalty 10 stops short of the ring (h about 2), whatever the steps
        assert r.final("h") < 1e-2


STEPS = {"bome": dict(inner_step_size=0.01, lower_step_size=0.01), "aid_bio": dict(inner_step_size=0.01),
         "vpbgd": dict(inner_step_size=0.01, lower_step_size=0.01), "galet": dict(inner_step_size=0.01),
         "iaptt_gm": dict(inner_step_size=0.01), "meha": dict(inner_step_size=0.01, lower_step_size=0.01),
         "f2ba": dict(inner_step_size=0.01), "hjfbio": dict(lower_step_size=0.01, v_step_size=0.01)}


@pytest.mark.parametrize("method", BASELINES)
def test_given_steps_are_used_as_given_and_cost_no_estimate(method):
    problem, _, _ = stiff_quadratic()
    oracle = Oracle(Autograd(problem.f, problem.g))
    solver = bilevel.SOLVERS[method](**STEPS[method])
    state = solver.init(problem, oracle, max_iter=1, generator=torch.Generator().manual_seed(0))
    assert state.lipschitz_g is None and getattr(state, "lipschitz_f_y", None) is None
    assert oracle.snapshot()["n_hvp"] == 0
    # with the defaults: 20 power-iteration products for L_g (and 20 for f's y-curvature where
    # a y step descends f / penalty + g)
    oracle = Oracle(Autograd(problem.f, problem.g))
    state = bilevel.SOLVERS[method]().init(problem, oracle, max_iter=1, generator=torch.Generator().manual_seed(0))
    uses_f = method in ("vpbgd", "meha", "f2ba")
    assert oracle.snapshot()["n_hvp"] == (40 if uses_f else 20)
    assert (getattr(state, "lipschitz_f_y", None) is not None) == uses_f


def test_curvature_in_y_estimates_the_largest_eigenvalue_from_below():
    problem, _, Q = stiff_quadratic(low=1.0, high=100.0)
    oracle = Oracle(Autograd(problem.f, problem.g))
    estimate = curvature_in_y(oracle, problem.x0, problem.y0, torch.Generator().manual_seed(0))
    assert isinstance(estimate, float)
    assert 0.95 * 100.0 <= estimate <= 100.0 * (1 + 1e-12)
    f_curvature = curvature_in_y(oracle, problem.x0, problem.y0, torch.Generator().manual_seed(0), of="f")
    assert f_curvature == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Invalid of"):
        curvature_in_y(oracle, problem.x0, problem.y0, torch.Generator(), of="h")


def test_defaults_run_batched_with_one_estimate_per_member():
    results = bilevel.solve_batch(lambda seed: PROBLEMS["quadratic"](seed=seed, cond=8.0), "hjfbio", seeds=[0, 1],
                                  max_iter=5, log_every=5, seed=0)
    for seed, r in zip([0, 1], results):
        single = solve(PROBLEMS["quadratic"](seed=seed, cond=8.0), "hjfbio", max_iter=5, log_every=5, kkt="none",
                       seed=0)
        assert float(r.state.lipschitz_g) == pytest.approx(single.state.lipschitz_g, rel=1e-10)
        assert float(r.state.lipschitz_g) == pytest.approx(8.0, rel=5e-2)


@pytest.mark.parametrize("cls", [AIDBiO, GALET])
def test_lower_step_that_raises_g_is_halved(cls):
    """grad_yy g = Q has largest eigenvalue 2.21: a step of 1.0 diverges (|1 - 2.21| > 1), 0.5 does not."""
    r = solve(problem(), cls(inner_step_size=1.0, inner_steps=5), max_iter=20, log_every=10, kkt="none")
    assert float(r.state.inner_step_size) == 0.5                 # halved once, then kept
    assert r.status is Status.COMPLETED and r.final("h") < 1e-3      # (x still moves; unguarded: inf)
    kept = solve(problem(), cls(inner_step_size=0.4, inner_steps=5), max_iter=20, log_every=10, kkt="none")
    assert float(kept.state.inner_step_size) == 0.4               # a stable step is never touched


@pytest.mark.parametrize("method, scale", [("aid_bio", 0.2), ("galet", 0.2), ("hjfbio", 0.1), ("iaptt_gm", 0.2),
                                           ("bome", 0.2)])
def test_default_x_step_is_adagrad_norm(method, scale):
    """step_size=None: the first x step has root-mean-square length x_scale whatever the scale of f,
    x_memory holds mean(d^2) of that direction, and the second step is x_scale / sqrt(S_2)."""
    first = {}
    for factor in (1.0, 1e3):      # f scaled by 1e3: a fixed step would move x 1e3 times as far
        p = BilevelProblem(lambda x, y, c=factor: c * problem().f(x, y), problem().g, X0, Y0)
        r = solve(p, method, max_iter=2, log_every=1, kkt="none", seed=0)
        one = solve(p, method, max_iter=1, kkt="none", seed=0)
        move = one.x - X0
        torch.testing.assert_close(move.pow(2).mean().sqrt(), torch.tensor(scale, dtype=D))
        d1 = move / -(scale / one.state.x_memory.sqrt())          # the first direction, recovered
        torch.testing.assert_close(one.state.x_memory, d1.pow(2).mean())
        d2_mean = r.state.x_memory - one.state.x_memory
        assert float(d2_mean) > 0
        torch.testing.assert_close((r.x - one.x).pow(2).mean().sqrt(),
                                   scale * d2_mean.sqrt() / r.state.x_memory.sqrt())
        first[factor] = move
    if method != "bome":   # (bome's direction grad f + lambda grad q is not linear in f: lambda depends on it)
        torch.testing.assert_close(first[1.0], first[1e3], rtol=1e-3, atol=1e-6)  # the first move is scale-free


SCHEDULE_METHODS = ("sgf", "f2ba", "vpbgd", "meha")


def scaled_quadratic(scale):
    p = PROBLEMS["quadratic"](seed=0)
    return BilevelProblem(lambda x, y: scale * p.f(x, y), lambda x, y: scale * p.g(x, y), p.x0, p.y0)


@pytest.mark.parametrize("method", SCHEDULE_METHODS)
def test_the_first_default_x_step_moves_x_by_x_scale_whatever_the_scale(method):
    """step_size=None: AdaGrad-norm, the first step moves x by x_scale in root mean square (a fixed
    step moves it in proportion to the scale of f and g)."""
    for scale in (1e-3, 1.0, 1e3):
        r = solve(scaled_quadratic(scale), method, max_iter=1, kkt="none", seed=0, options=dict(x_scale=0.3))
        moved = r.x - PROBLEMS["quadratic"](seed=0).x0
        assert float(moved.norm() / moved.numel() ** 0.5) == pytest.approx(0.3, rel=1e-9)
        fixed = solve(scaled_quadratic(scale), method, max_iter=1, kkt="none", seed=0, options=dict(step_size=1e-4))
        assert float((fixed.x - PROBLEMS["quadratic"](seed=0).x0).norm()) < 1e-2 * max(scale, 1e-2)


@pytest.mark.parametrize("method", SCHEDULE_METHODS)
def test_a_given_step_size_is_the_papers_fixed_step(method):
    r = solve(PROBLEMS["quadratic"](seed=0), method, max_iter=3, kkt="none", seed=0, options=dict(step_size=0.05))
    assert r.state.x_memory is None


@pytest.mark.slow
def test_f2ba_penalty_grows_and_removes_the_fixed_penalty_bias():
    """lam_k = lam_0 (k + 1)^p; with p = 0 (the paper's fixed lam = 10) x stops O(1/lam) from x*."""
    p = PROBLEMS["quadratic"](seed=0)
    grown = solve(p, "f2ba", max_iter=600, log_every=1, kkt="none", seed=0)
    assert grown.history["penalty"][:3] == pytest.approx([10.0, 10.0 * 2 ** 0.5, 10.0 * 3 ** 0.5])
    fixed = solve(p, F2BA(penalty_power=0.0), max_iter=600, log_every=600, kkt="none", seed=0)
    error = {name: float((r.x - p.info["x_star"]).norm()) for name, r in (("grown", grown), ("fixed", fixed))}
    assert error["fixed"] > 1e-2 and error["grown"] < error["fixed"] / 5, error


def test_f2ba_warm_starts_z():
    """z continues from the previous iteration's z (not from y): after two steps it is four
    gradient steps on g(x_1, .) after two on g(x_0, .) from y_0."""
    p = PROBLEMS["quadratic"](seed=0)
    solver = F2BA(step_size=0.1, inner_steps=2, inner_step_size=0.05)
    r = solve(p, solver, max_iter=2, log_every=1, kkt="none")
    oracle = bilevel.core.oracles.Oracle(bilevel.core.oracles.Autograd(p.f, p.g))
    x0, z = p.x0, p.y0
    for _ in range(2):
        z = z - 0.05 * oracle.grad_g_y(x0, z)
    first = solve(p, solver, max_iter=1, kkt="none")
    for _ in range(2):
        z = z - 0.05 * oracle.grad_g_y(first.x, z)
    torch.testing.assert_close(r.state.z, z)


@pytest.mark.slow
def test_vpbgd_growing_penalty_beats_the_fixed_one():
    p = PROBLEMS["quadratic"](seed=0)
    grown = solve(p, "vpbgd", max_iter=3000, log_every=3000, kkt="none", seed=0)
    fixed = solve(p, VPBGD(penalty_power=0.0), max_iter=3000, log_every=3000, kkt="none", seed=0)
    error = {name: float((r.x - p.info["x_star"]).norm()) for name, r in (("grown", grown), ("fixed", fixed))}
    assert error["grown"] < error["fixed"] / 2, error


@pytest.mark.slow
def test_sgf_relaxation_decays_and_removes_the_eps_bias():
    """f = (x - 1)^2 + (y - 2)^2, g = (y - x)^2 / 2: x* = 1.5. The fixed relaxation's flow rests
    where h = (y - x)^2 = eps^2, so |y - x| = eps = 0.1 and x = 1.5 - eps / 2; eps_k = eps (k + 1)^-1/2
    shrinks that bias with eps_k."""
    p = BilevelProblem(lambda x, y: ((x - 1) ** 2).sum() + ((y - 2) ** 2).sum(),
                       lambda x, y: 0.5 * ((y - x) ** 2).sum(), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D))
    r = solve(p, "sgf", max_iter=3000, log_every=1, kkt="none")
    assert r.history["eps"][:3] == pytest.approx([0.1, 0.1 / 2 ** 0.5, 0.1 / 3 ** 0.5])
    fixed = solve(p, SGF(eps_power=0.0), max_iter=3000, log_every=3000, kkt="none")
    assert float(fixed.x) == pytest.approx(1.5 - 0.1 / 2, abs=2e-3)
    assert fixed.final("h") == pytest.approx(0.01, rel=0.1)
    assert abs(float(r.x) - 1.5) < 2e-3 and r.final("h") < 1e-4


@pytest.mark.parametrize("options, message", [
    (dict(x_scale=0.0), "Invalid x_scale: 0.0"), (dict(penalty_power=-1.0), "Invalid penalty_power: -1.0")])
@pytest.mark.parametrize("solver", [F2BA, VPBGD])
def test_bad_schedule_options_name_the_argument(solver, options, message):
    with pytest.raises(ValueError, match=message):
        solver(**options)


def test_sgf_bad_eps_power_names_the_argument():
    with pytest.raises(ValueError, match="Invalid eps_power: -0.5"):
        SGF(eps_power=-0.5)
