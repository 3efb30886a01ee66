"""sgf, f2ba, vpbgd, meha: the scale-free x step and the schedules that remove the bias of a
fixed penalty (f2ba, vpbgd) or relaxation (sgf)."""
import pytest
import torch

import bilevel
from bilevel import PROBLEMS, BilevelProblem, solve
from bilevel.solvers import F2BA, SGF, VPBGD

D = torch.float64
METHODS = ("sgf", "f2ba", "vpbgd", "meha")


def scaled_quadratic(scale):
    p = PROBLEMS["quadratic"](seed=0)
    return BilevelProblem(lambda x, y: scale * p.f(x, y), lambda x, y: scale * p.g(x, y), p.x0, p.y0)


@pytest.mark.parametrize("method", METHODS)
def test_the_first_default_x_step_moves_x_by_x_scale_whatever_the_scale(method):
    """step_size=None: AdaGrad-norm, the first step moves x by x_scale in root mean square (a fixed
    step moves it in proportion to the scale of f and g)."""
    for scale in (1e-3, 1.0, 1e3):
        r = solve(scaled_quadratic(scale), method, max_iter=1, kkt="none", seed=0, options=dict(x_scale=0.3))
        moved = r.x - PROBLEMS["quadratic"](seed=0).x0
        assert float(moved.norm() / moved.numel() ** 0.5) == pytest.approx(0.3, rel=1e-9)
        fixed = solve(scaled_quadratic(scale), method, max_iter=1, kkt="none", seed=0, options=dict(step_size=1e-4))
        assert float((fixed.x - PROBLEMS["quadratic"](seed=0).x0).norm()) < 1e-2 * max(scale, 1e-2)


@pytest.mark.parametrize("method", METHODS)
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
