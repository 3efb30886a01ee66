"""Verification at the end of a run: the lower level re-solved at the final x, honest values,
the second-order check, and success that means what it says."""

import pytest
import torch

from bilevel import PROBLEMS, BilevelProblem, Status, solve, solve_batch
from bilevel.core.lower import gradient_mapping, minimize
from bilevel.core.oracles import Autograd, Oracle
from bilevel.run.verify import verify

D = torch.float64


def test_re_solve_matches_the_closed_form_lower_solution():
    """quadratic: y*(x) = Q^-1 B x in closed form; at any x the re-solved y is y*(x) and the
    honest upper value is f(x, y*(x))."""
    p = PROBLEMS["quadratic"](seed=3, cond=50.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(p.x0.shape, generator=gen, dtype=D)
    y = torch.randn(p.y0.shape, generator=gen, dtype=D)
    Q, B = p.g.keywords["Q"], p.g.keywords["B"]
    y_star = torch.linalg.solve(Q, B @ x)
    found = verify(p, Oracle(Autograd(p.f, p.g)), x, y)
    # L-BFGS stops where g stops decreasing in float64: y to about sqrt(eps) cond relative
    tol = 1e3 * torch.finfo(D).eps ** 0.5
    torch.testing.assert_close(found["y_resolved"], y_star, rtol=tol, atol=tol)
    assert found["upper_value"] == pytest.approx(float(p.f(x, y_star)), rel=tol)
    assert found["lower_gap"] == pytest.approx(float(p.g(x, y) - p.g(x, y_star)), rel=tol)
    assert found["y_distance"] == pytest.approx(float((y - y_star).norm() / max(1.0, float(y_star.norm()))), rel=tol)
    assert not found["passed"] and "away from the lower-level solution" in found["reason"]
    assert found["metrics"]["distance_to_solution"] == pytest.approx(float((x - p.info["x_star"]).norm()))
    # the lowest and largest eigenvalues of grad_yy g = Q are 1 and 50
    assert found["min_curvature"] == pytest.approx(1.0, rel=1e-2) and found["max_curvature"] == pytest.approx(50, rel=1e-2)
    # y*(x) solves the lower level, but a random x is not stationary for the upper level
    at_lower = verify(p, Oracle(Autograd(p.f, p.g)), x, y_star)
    assert at_lower["lower_passed"] and at_lower["curvature_passed"] and not at_lower["passed"]
    assert "the upper level is not first-order stationary" in at_lower["reason"]
    x_star = p.info["x_star"]
    assert verify(p, Oracle(Autograd(p.f, p.g)), x_star, torch.linalg.solve(Q, B @ x_star))["passed"]


@pytest.mark.slow
def test_success_needs_the_lower_level_solved():
    """A run that stops early, with y far from argmin g(x, .), completes but does not succeed."""
    p = PROBLEMS["quadratic"](seed=0)
    slow = {"schedule": "diminishing"}           # 30 of its iterations leave y behind x
    short = solve(p, "pgdqp", max_iter=30, log_every=30, options=slow)
    assert short.status is Status.COMPLETED and not short.success
    assert "verification failed: y is" in short.message
    done = solve(p, "pgdqp", max_iter=2000, log_every=2000)
    assert done.success and done.verification["passed"] and done.verification["y_distance"] < 1e-2
    unchecked = solve(p, "pgdqp", max_iter=30, log_every=30, verify=False, options=slow)
    assert unchecked.success and unchecked.verification is None


@pytest.mark.slow
def test_the_verification_costs_little_next_to_the_run():
    p = PROBLEMS["synthetic-sc"](seed=1)
    r = solve(p, "pgdqp", max_iter=2000, log_every=2000, kkt="none")
    assert r.verification["cost"]["oracle_calls"] < 0.1 * r.history["oracle_calls"][-1]


def test_a_maximiser_of_g_does_not_succeed_even_when_converged():
    """g = (y^2 - 1)^2 / 4 has a maximiser at y = 0 with grad_y g = 0: the KKT residuals vanish
    there (CONVERGED) but the second-order check fails."""
    problem = BilevelProblem(lambda x, y: (x ** 2).sum() + (y ** 2).sum(), lambda x, y: ((y ** 2 - 1) ** 2).sum() / 4,
                             torch.tensor([1.0], dtype=D), torch.tensor([0.0], dtype=D))
    r = solve(problem, "pgdqp", max_iter=100, tol=1e-8)
    assert r.status is Status.CONVERGED and not r.success
    assert "y is not a minimiser of g(x, .)" in r.message
    assert r.verification["min_curvature"] == pytest.approx(-1.0, rel=1e-6)


def test_a_minimiser_on_a_y_bound_passes():
    """g = x y on y in [0, 1] with x > 0: the lower-level solution is the bound y = 0, where
    grad_y g = x is not zero; the verification's projected re-solve stays there. y* = 0 near
    x = 0.5, so F(x) = (x - 0.5)^2 and x = 0.5 is stationary."""
    problem = BilevelProblem(lambda x, y: ((x - 0.5) ** 2).sum() + y.sum(), lambda x, y: (x * y).sum(),
                             torch.tensor([0.5], dtype=D), torch.tensor([0.0], dtype=D), y_bounds=(0.0, 1.0))
    found = verify(problem, Oracle(Autograd(problem.f, problem.g)), torch.tensor([0.5], dtype=D),
                   torch.tensor([0.0], dtype=D))
    assert found["passed"], found["reason"]
    assert float(found["y_resolved"]) == 0.0 and found["lower_residual"] == 0.0
    far = verify(problem, Oracle(Autograd(problem.f, problem.g)), torch.tensor([0.5], dtype=D),
                 torch.tensor([0.7], dtype=D))
    assert not far["passed"] and float(far["y_resolved"]) == 0.0 and far["lower_gap"] == pytest.approx(0.35)


def test_minimize_reaches_box_kkt_points_and_unconstrained_minimisers():
    """The lower-level solver: a convex quadratic over a box against its KKT conditions, and
    Rosenbrock's function without a box."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=gen, dtype=D)
    H, b = A @ A.T + 0.1 * torch.eye(6, dtype=D), torch.randn(6, generator=gen, dtype=D) * 3
    bounds = (torch.full((6,), -0.5, dtype=D), torch.full((6,), 0.5, dtype=D))
    found = minimize(lambda y: (0.5 * y @ H @ y - b @ y, H @ y - b), torch.zeros(6, dtype=D), bounds=bounds,
                     tol=1e-10, max_iter=5000)
    assert found.converged
    grad = H @ found.y - b
    assert float(gradient_mapping(found.y, grad, bounds).norm()) <= 1e-10
    active = (found.y.abs() > 0.5 - 1e-12)
    assert bool(active.any()) and bool((grad[active] * found.y[active] <= 0).all())   # multipliers of the right sign

    def rosenbrock(y):
        y = y.detach().requires_grad_(True)
        value = 100 * (y[1] - y[0] ** 2) ** 2 + (1 - y[0]) ** 2
        return value.detach(), torch.autograd.grad(value, y)[0]
    found = minimize(rosenbrock, torch.tensor([-1.2, 1.0], dtype=D), tol=1e-9)
    torch.testing.assert_close(found.y, torch.ones(2, dtype=D), atol=1e-7, rtol=0)


def test_minimize_certifies_a_start_that_is_the_minimiser_to_the_last_digit():
    """A start one ulp from y* = sqrt(x) (g = (y^2 - x)^2 / 4): the Newton step is below y's
    resolution (y + d == y), which certifies y rather than reading as a step that fails to descend
    (it used to end uncertified after 30 Newton iterations that never moved y, failing the
    verification of an answer that was right)."""
    x = 0.25000000164801356
    y_star = torch.tensor([x], dtype=D).sqrt()

    def value_and_grad(y):
        return ((y ** 2 - x) ** 2 / 4).sum(), y * (y ** 2 - x)
    for start in (y_star, torch.nextafter(y_star, torch.tensor([1.0], dtype=D))):
        found = minimize(value_and_grad, start, hvp=lambda y, v: (3 * y ** 2 - x) * v, step_tol=1e-5, tol=1e-8)
        assert found.converged and found.step <= 1e-15, (float(start), found)
        assert abs(float(found.y - y_star)) <= 2 * torch.finfo(D).eps


def test_solve_batch_verifies_every_member():
    """20 iterations of the diminishing schedule leave y off the lower level: every member's
    verification says so; without verification, success is the loop's."""
    options = {"schedule": "diminishing"}
    results = solve_batch(lambda s: PROBLEMS["quadratic"](seed=s), "pgdqp", seeds=[0, 1], max_iter=20, log_every=20,
                          options=options)
    for r in results:
        assert r.verification is not None and not r.success
    results = solve_batch(lambda s: PROBLEMS["quadratic"](seed=s), "pgdqp", seeds=[0, 1], max_iter=20, log_every=20,
                          verify=False, options=options)
    assert all(r.success and r.verification is None for r in results)


@pytest.mark.parametrize("kwargs, message", [(dict(verify="yes"), "Invalid verify: 'yes'"),
                                             (dict(verify_tol=0.0), "Invalid verify_tol: 0.0")])
def test_bad_verification_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        solve(PROBLEMS["quadratic"](seed=0), "pgdqp", max_iter=2, **kwargs)


def test_non_finite_lower_level_is_reported():
    problem = BilevelProblem(lambda x, y: (x ** 2).sum() + (y ** 2).sum(), lambda x, y: -(y ** 3).sum() + y.sum(),
                             torch.tensor([1.0], dtype=D), torch.tensor([1.0], dtype=D))
    found = verify(problem, Oracle(Autograd(problem.f, problem.g)), problem.x0, problem.y0)
    assert not found["passed"] and not found["re_solve_converged"] and "y is not a minimiser" in found["reason"]
