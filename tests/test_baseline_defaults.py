"""The baselines' lower-level steps default to multiples of 1/L_g, L_g estimated at (x0, y0):
they converge where L_g is large, are invariant to the scale of g, and cost nothing when given."""
import math

import pytest
import torch
from conftest import roundoff

import bilevel
from bilevel import PROBLEMS, BilevelProblem, Status, solve
from bilevel.core.oracles import Autograd, Oracle
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
    """L_g = 100: the former fixed lower steps (0.05 to 0.1 > 2 / L_g) diverged within a few
    iterations for every baseline; steps from the estimate of L_g converge."""
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
    """1/L_g from the start (2.0) diverges once y reaches the ring (L_g about 13); the cap keeps
    the former fixed steps there, and every baseline stays finite. (aid_bio is left out: CG on
    the singular grad_yy g of a ring of solutions blows up, with any step; see its docstring.)"""
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
