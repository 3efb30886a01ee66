"""solve_batch: members solved together under torch.func.vmap equal the runs solved alone."""
import math
from functools import partial

import pytest
import torch
from conftest import roundoff

import bilevel
from bilevel import PROBLEMS, BilevelProblem, Status, solve, solve_batch

D = torch.float64
SEEDS = [0, 1, 2, 3]


def quadratic(seed):
    return PROBLEMS["quadratic"](seed=seed)


@pytest.mark.parametrize("method, options", [("sgf", {}), ("pgdqp", dict(schedule="constant", step_size=0.02)),
                                             ("pgdqp", dict(schedule="theorem", rho="grad")), ("vpbgd", {}),
                                             ("meha", {}),
                                             ("hjfbio", {}), ("f2ba", dict(inner_steps=3)),
                                             # bome's fixed x step: its lambda reaches 30 by iteration 60 with
                                             # the AdaGrad-norm one (x_step, run batched by hjfbio here), which
                                             # amplifies round-off beyond these tolerances on seed 2
                                             ("bome", dict(inner_steps=3, step_size=0.02))])
@pytest.mark.slow
def test_members_equal_runs_solved_alone(method, options):
    batch = solve_batch(quadratic, method, seeds=SEEDS, max_iter=60, log_every=20, seed=0, options=options)
    # derivatives by torch.func here and autograd alone differ by round-off, over 60 iterations of
    # up to 4 dependent gradients each; hjfbio's finite differences (delta = 1e-5) amplify it 1/delta times;
    # sgf's lambda = [alpha (h - eps_k^2) - <grad h, grad f>]_+ / ||grad h||^2 cancels terms of the size of
    # |grad f| / ||grad h|| >> lambda as h -> eps_k^2 -> 0 (its relaxation decays): about 10 times
    rtol = roundoff(operations=60 * 4, amplification={"hjfbio": 1e5, "sgf": 10.0}.get(method, 1.0))
    atol = 1e-2 * rtol
    for s, member in zip(SEEDS, batch):
        alone = solve(quadratic(s), method, max_iter=60, log_every=20, seed=0, kkt="none", options=options)
        assert member.status is alone.status is Status.COMPLETED
        torch.testing.assert_close(member.x, alone.x, rtol=rtol, atol=atol)
        torch.testing.assert_close(member.y, alone.y, rtol=rtol, atol=atol)
        assert member.history["iter"] == alone.history["iter"] == [0.0, 20.0, 40.0, 60.0]
        assert member.history["oracle_calls"] == alone.history["oracle_calls"]
        for column in ("f", "h", "distance_to_solution"):      # the member's own metric
            assert member.history[column] == pytest.approx(alone.history[column], rel=rtol, abs=atol)


@pytest.mark.slow
def test_pgdqp_projected_members_follow_their_lone_runs():
    """pgdqp's projected schedule converges in its last iterate, so a member solved
    under torch.func.vmap and its lone run stay together to round-off and both reach x*
    (1000 iterations: each batched one runs its conjugate gradients to their full length)."""
    seeds = SEEDS[:2]
    options = {"schedule": "projected"}
    batch = solve_batch(quadratic, "pgdqp", seeds=seeds, max_iter=1000, log_every=1000, seed=0, options=options)
    for s, member in zip(seeds, batch):
        alone = solve(quadratic(s), "pgdqp", max_iter=1000, log_every=1000, seed=0, kkt="none", options=options)
        x_star = quadratic(s).info["x_star"]
        assert float((member.x - alone.x).norm()) <= 1e-8
        assert float((member.x - x_star).norm()) <= 1e-6
        assert member.history["distance_to_solution"][-1] == pytest.approx(float((member.x - x_star).norm()), abs=1e-12)


def test_starting_points_of_one_problem():
    base = quadratic(0)

    def start(seed):
        gen = torch.Generator().manual_seed(seed)
        return base.with_start(x0=torch.randn(base.x0.shape, generator=gen, dtype=D))
    batch = solve_batch(start, "sgf", seeds=SEEDS, max_iter=40, log_every=40)
    for s, member in zip(SEEDS, batch):
        alone = solve(start(s), "sgf", max_iter=40, log_every=40, kkt="none")
        torch.testing.assert_close(member.x, alone.x, rtol=roundoff(operations=40), atol=roundoff(operations=40))
    assert not torch.equal(batch[0].x, batch[1].x)


def scaled_upper(x, y, *, c):
    return c * ((x - 1) ** 2).sum() + ((y - 1) ** 2).sum()


def tracking_lower(x, y):
    return 0.5 * ((y - x) ** 2).sum()


def test_a_diverging_member_stops_alone_on_a_finite_iterate():
    """f = c ||x - 1||^2 with c = seed: sgf's step 0.25 is stable for c <= 3 and blows up beyond."""
    def build(seed):
        return BilevelProblem(partial(scaled_upper, c=torch.tensor(float(seed), dtype=D)), tracking_lower,
                              torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))
    batch = solve_batch(build, "sgf", seeds=[1, 2, 40, 80], max_iter=300, log_every=10, options=dict(step_size=0.25))
    # the blow-ups stop at the first logged row where they have grown a million-fold (RUNAWAY),
    # or when they overflow between two logged rows (DIVERGED)
    assert [r.status for r in batch[:2]] == [Status.COMPLETED, Status.COMPLETED]
    assert all(r.status in (Status.RUNAWAY, Status.DIVERGED) for r in batch[2:])
    for r in batch:
        assert torch.isfinite(r.x).all() and torch.isfinite(r.y).all()
        assert all(math.isfinite(v) for v in r.history["f"])
    assert batch[2].n_iter < 300 and "iteration" in batch[2].message
    torch.testing.assert_close(batch[0].x, torch.ones(3, dtype=D), atol=1e-6, rtol=0)


def test_what_cannot_be_batched_is_refused_clearly():
    with pytest.raises(ValueError, match=r"Invalid solver for solve_batch: aid_bio \(conjugate gradient stops .*Neumann"):
        solve_batch(quadratic, "aid_bio", seeds=SEEDS)
    with pytest.raises(ValueError, match=r"Invalid solver for solve_batch: pgdqp \(rho='warm'"):
        solve_batch(quadratic, "pgdqp", seeds=SEEDS, options=dict(rho="warm", schedule="constant"))
    with pytest.raises(ValueError, match=r"Invalid problem_factory: x0 of seed 1 has shape \(4,\)"):
        solve_batch(lambda s: PROBLEMS["quadratic"](dim_x=3 + s, seed=s), "sgf", seeds=[0, 1])

    def closures(seed):
        a = torch.full((2,), float(seed), dtype=D)
        return BilevelProblem(lambda x, y: ((x - a) ** 2).sum() + (y ** 2).sum(), tracking_lower,
                              torch.zeros(2, dtype=D), torch.zeros(2, dtype=D))
    with pytest.raises(ValueError, match=r"Invalid problem_factory: the seeds' f differ, and are not functools.partial"):
        solve_batch(closures, "sgf", seeds=[0, 1])
    with pytest.raises(ValueError, match=r"Invalid seeds: \[\]"):
        solve_batch(quadratic, "sgf", seeds=[])


def test_aid_bio_with_neumann_runs_batched():
    solver = bilevel.solvers.AIDBiO(linear_solver=bilevel.Neumann(iters=10, step_size=0.1))
    batch = solve_batch(quadratic, solver, seeds=SEEDS[:2], max_iter=30, log_every=30, seed=0)
    for s, member in zip(SEEDS[:2], batch):
        alone = solve(quadratic(s), solver, max_iter=30, log_every=30, seed=0, kkt="none")
        rtol = roundoff(operations=30 * 20)      # 10 inner steps and 10 Neumann terms an iteration
        torch.testing.assert_close(member.x, alone.x, rtol=rtol, atol=1e-2 * rtol)


@pytest.mark.parametrize("method, options", [("pgdqp", dict(schedule="constant", step_size=0.02)), ("soba", {})])
def test_members_stop_converged_at_their_own_iteration_as_alone(method, options):
    """With tol, each member stops CONVERGED at the logged row where its own residual passes,
    the iteration and the iterate of its run solved alone; the others go on."""
    def f(x, y):
        return ((x - 1) ** 2).sum() + ((y - 2) ** 2).sum()

    def g(x, y):
        return 0.5 * ((y - x) ** 2).sum()

    def build(seed):   # one problem from starts at different distances: different stopping rows
        return BilevelProblem(f, g, torch.full((3,), 0.5 * seed, dtype=D), torch.zeros(3, dtype=D))
    seeds = [0, 4, 12]
    batch = solve_batch(build, method, seeds=seeds, max_iter=4000, log_every=10, tol=1e-6, seed=0, options=options)
    iterations = []
    for s, member in zip(seeds, batch):
        alone = solve(build(s), method, max_iter=4000, log_every=10, tol=1e-6, seed=0, options=options)
        assert alone.status is Status.CONVERGED and member.status is Status.CONVERGED, (member.status, alone.status)
        assert member.n_iter == alone.n_iter
        torch.testing.assert_close(member.x, alone.x, rtol=roundoff(operations=4 * alone.n_iter), atol=1e-12)
        iterations.append(member.n_iter)
    assert len(set(iterations)) > 1, iterations       # the members stopped at different rows
