"""The verification's upper-level check and its re-solve: the projected hypergradient of
x -> f(x, y*(x)) against finite differences of closed forms, on x and y boxes, the
least-squares KKT residual where grad_yy g is singular, and a re-solve that reaches its
tolerance on an ill-conditioned lower level or says that it did not."""
import math

import numpy as np
import pytest
import scipy.optimize
import torch
from conftest import roundoff

from bilevel import BilevelProblem, Status, solve
from bilevel.core.lower import minimize
from bilevel.core.oracles import Autograd, Oracle
from bilevel.run.verify import UPPER_TOL, upper_stationarity, verify

D = torch.float64


def oracle_of(problem: BilevelProblem) -> Oracle:
    return Oracle(Autograd(problem.f, problem.g, problem.y_bounds))


def central_difference(F, x: torch.Tensor, delta: float) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = delta
        grad[i] = (F(x + e) - F(x - e)) / (2 * delta)
    return grad


def quadratic(seed: int = 0, n: int = 4, m: int = 6):
    """g = y^T Q y / 2 - y^T B x, so y*(x) = Q^-1 B x; f = ||y - c||^2 / 2 + ||x - d||^2 / 2 +
    y^T E x (f couples x and y directly too)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m, generator=gen, dtype=D)
    Q = A @ A.T + torch.eye(m, dtype=D)
    B, E = torch.randn(m, n, generator=gen, dtype=D), 0.1 * torch.randn(m, n, generator=gen, dtype=D)
    c, d = torch.randn(m, generator=gen, dtype=D), torch.randn(n, generator=gen, dtype=D)
    problem = BilevelProblem(lambda x, y: 0.5 * ((y - c) ** 2).sum() + 0.5 * ((x - d) ** 2).sum() + y @ E @ x,
                             lambda x, y: 0.5 * y @ Q @ y - y @ B @ x, torch.zeros(n, dtype=D), torch.zeros(m, dtype=D))
    return problem, (lambda x: torch.linalg.solve(Q, B @ x))


def duopoly(K: float, x_high: float = 10.0, x0: float = 1.0) -> BilevelProblem:
    """Stackelberg: leader x in [0, x_high], follower y in [0, K], price 12 - (x + y), cost 2:
    y*(x) = min((10 - x) / 2, K). K = 100: x* = 5, y* = 2.5; K = 2: x* = 4, y* = 2 (the leader's
    profit (8 - x) x); x_high = 3 < 5: x* = 3 on its bound."""
    def margin(x, y):
        return 10.0 - x.sum() - y.sum()
    return BilevelProblem(lambda x, y: -margin(x, y) * x.sum(), lambda x, y: -margin(x, y) * y.sum(),
                          torch.tensor([x0], dtype=D), torch.tensor([0.0], dtype=D),
                          x_bounds=(0.0, x_high), y_bounds=(0.0, K))


def test_hypergradient_matches_finite_differences_on_a_closed_form_quadratic():
    problem, y_star = quadratic()
    x = torch.randn(4, generator=torch.Generator().manual_seed(5), dtype=D)
    found = upper_stationarity(problem, oracle_of(problem), x, y_star(x))
    delta = 1e-5
    expected = central_difference(lambda z: problem.f(z, y_star(z)), x, delta)
    # F is quadratic: the central difference is exact up to round-off amplified by 1/delta
    assert found.measure == "hypergradient"
    torch.testing.assert_close(found.gradient, expected, rtol=0,
                               atol=roundoff(amplification=1 / delta) * (1 + float(expected.abs().max())))
    assert found.norm == pytest.approx(float(expected.norm()), rel=roundoff(amplification=1 / delta))


def test_hypergradient_matches_finite_differences_on_a_nonlinear_lower_level():
    """g = sum(exp(y) - x y) has y*(x) = log x; f = ||y - 1||^2 + ||x||^2 / 4 + sum(x y)."""
    problem = BilevelProblem(lambda x, y: ((y - 1) ** 2).sum() + 0.25 * (x ** 2).sum() + (x * y).sum(),
                             lambda x, y: (torch.exp(y) - x * y).sum(), torch.ones(3, dtype=D), torch.zeros(3, dtype=D))
    x = torch.tensor([0.5, 1.3, 2.0], dtype=D)
    found = upper_stationarity(problem, oracle_of(problem), x, torch.log(x))
    delta = 1e-6
    expected = central_difference(lambda z: problem.f(z, torch.log(z)), x, delta)
    # truncation delta^2 |F'''| (~1e-12 here) and round-off |F| eps / delta
    torch.testing.assert_close(found.gradient, expected, rtol=0, atol=roundoff(amplification=1 / delta))
    # through verify, from a y off the lower solution: the re-solve finds log x, the same gradient
    check = verify(problem, oracle_of(problem), x, torch.log(x) + 0.1)
    assert check["upper_stationarity"] == pytest.approx(float(expected.norm()), rel=1e-6)
    assert not check["upper_passed"] and check["re_solve_converged"]


def test_the_stationary_point_of_the_closed_form_passes_and_a_point_near_it_does_not():
    """F(x) = f(x, Q^-1 B x) is a strictly convex quadratic here: its stationary point solves a
    linear system. There the check passes; at x* + 0.01 its relative measure is about 0.01
    (> UPPER_TOL), and the message says by how much."""
    problem, y_star = quadratic()
    hessian = torch.func.hessian(lambda z: problem.f(z, y_star(z)))(torch.zeros(4, dtype=D))
    grad_at_0 = torch.func.grad(lambda z: problem.f(z, y_star(z)))(torch.zeros(4, dtype=D))
    assert bool((torch.linalg.eigvalsh(hessian) > 0).all())
    x_star = torch.linalg.solve(hessian, -grad_at_0)
    oracle = oracle_of(problem)
    assert verify(problem, oracle, x_star, y_star(x_star))["passed"]
    near = x_star + 0.01
    check = verify(problem, oracle, near, y_star(near))
    expected = float((hessian @ (near - x_star)).norm() / grad_at_0.norm())     # x0 = 0
    assert check["upper_relative"] == pytest.approx(expected, rel=1e-3)
    assert check["lower_passed"] and not check["passed"]
    assert f"{check['upper_relative']:.3g} of its value" in check["reason"]


def test_the_x_box_projects_the_hypergradient():
    """Duopoly with the leader capped at 3 (x* = 3 < 5, F'(3) = 3 - 5 < 0 points out of the box):
    stationary on its bound; at x = 2.9 inside, |F'| = 2.1 against 4 at x0 = 1."""
    problem = duopoly(100.0, x_high=3.0)
    oracle = oracle_of(problem)
    at_bound = verify(problem, oracle, torch.tensor([3.0], dtype=D), torch.tensor([3.5], dtype=D))
    assert at_bound["passed"], at_bound["reason"]
    assert at_bound["upper_stationarity"] == 0.0
    inside = verify(problem, oracle, torch.tensor([2.9], dtype=D), torch.tensor([3.55], dtype=D))
    assert inside["upper_stationarity"] == pytest.approx(2.1, rel=1e-8)
    assert inside["upper_stationarity_x0"] == pytest.approx(4.0, rel=1e-6)
    assert not inside["passed"] and inside["lower_passed"]


def test_a_hyper_objective_flat_in_x_passes_at_round_off():
    """f = y, g = x (y^2 - 1/5)^2 on y in [0, 2], x in [0.1, 1]: y*(x) = 1/sqrt(5) for every x > 0,
    so F is constant and every x is stationary, x0 too (the relative measure has no scale). The
    hypergradient is grad_yx g^T v = 4 y (y^2 - 1/5) v, round-off of (y^2 - 1/5) at the rounded
    root, and must pass as the round-off it is."""
    problem = BilevelProblem(f=lambda x, y: y.sum(), g=lambda x, y: (x * (y ** 2 - 0.2) ** 2).sum(),
                             x0=torch.ones(1, dtype=D), y0=torch.ones(1, dtype=D), x_bounds=(0.1, 1.0),
                             y_bounds=(0.0, 2.0))
    check = verify(problem, oracle_of(problem), torch.tensor([0.5], dtype=D),
                   torch.tensor([math.sqrt(0.2)], dtype=D))
    assert check["passed"], check["reason"]
    assert check["upper_stationarity"] <= 1e-12       # 6e-17 on x86_64 against 0 at x0: the old floor failed it


def test_a_y_at_its_bound_stays_put_as_x_moves():
    """Duopoly with K = 2: at x near 4 the follower sits on y = 2, so F(x) = -(8 - x) x and
    F'(x) = 2 x - 8 (the interior formula would give x - 5). x = 4 passes; x = 3.9 does not."""
    problem = duopoly(2.0)
    oracle = oracle_of(problem)
    solved = verify(problem, oracle, torch.tensor([4.0], dtype=D), torch.tensor([2.0], dtype=D))
    assert solved["passed"], solved["reason"]
    off = verify(problem, oracle, torch.tensor([3.9], dtype=D), torch.tensor([2.0], dtype=D))
    assert off["upper_stationarity"] == pytest.approx(0.2, rel=1e-8)
    assert off["upper_relative"] == pytest.approx(0.2 / 6.0, rel=1e-6)
    assert not off["passed"] and "the upper level is not first-order stationary" in off["reason"]


def test_a_continuum_of_lower_solutions_takes_the_least_squares_kkt_residual():
    """g = (y1 - x)^2 does not depend on y2: every y2 solves the lower level and grad_yy g is
    singular. With f = (y1 - 1)^2 + (x - 1)^2 + y2^2 the optimistic answer is x = 1, y = (1, 0);
    at y2 = 0.5 the least-squares KKT residual is ||grad_y2 f|| = 1 (y2 should move)."""
    problem = BilevelProblem(lambda x, y: (y[0] - 1) ** 2 + ((x - 1) ** 2).sum() + y[1] ** 2,
                             lambda x, y: ((y[0] - x) ** 2).sum(), torch.tensor([0.0], dtype=D),
                             torch.zeros(2, dtype=D))
    oracle = oracle_of(problem)
    answer = verify(problem, oracle, torch.tensor([1.0], dtype=D), torch.tensor([1.0, 0.0], dtype=D))
    assert answer["passed"], answer["reason"]
    off = upper_stationarity(problem, oracle, torch.tensor([1.0], dtype=D), torch.tensor([1.0, 0.5], dtype=D))
    assert off.measure == "kkt_least_squares" and off.norm == pytest.approx(1.0, rel=1e-8)


def logistic_with_tiny_weights(log_weight: float = -19.8):
    """A logistic regression of our own on scikit-learn's wine data (class 0 against the rest,
    13 standardised features): g = mean log-loss + sum_j exp(x_j) W_j^2 / 2, f = the loss on a
    held-out half. Half the weights at exp(-19.8) make grad_yy g ill-conditioned."""
    from sklearn.datasets import load_wine
    data = load_wine()
    order = np.random.default_rng(3).permutation(len(data.target))
    a = torch.tensor(data.data[order], dtype=D)
    a = (a - a.mean(0)) / a.std(0)
    t = torch.tensor((data.target[order] == 0).astype(np.float64))
    train, val = slice(0, 90), slice(90, None)

    def loss(y, rows):
        return torch.nn.functional.binary_cross_entropy_with_logits(a[rows] @ y[:-1] + y[-1], t[rows])

    problem = BilevelProblem(lambda x, y: loss(y, val),
                             lambda x, y: loss(y, train) + 0.5 * (torch.exp(x) * y[:-1] ** 2).sum(),
                             torch.zeros(13, dtype=D), torch.zeros(14, dtype=D))
    x = torch.where(torch.arange(13) % 2 == 0, torch.tensor(log_weight, dtype=D), torch.tensor(-2.0, dtype=D))
    return problem, x


@pytest.mark.slow
def test_the_re_solve_reaches_its_tolerance_on_an_ill_conditioned_lower_level():
    """Against an independent solve: scipy's L-BFGS-B (gtol 1e-10), polished by Newton's method
    with the dense Hessian and a direct solve until its step is below 1e-12. The verification's
    y_resolved is within its certified distance of it and upper_value agrees to first order.
    First-order methods alone fall short here: L-BFGS from the same y, and scipy's own answer
    before the polish."""
    problem, x = logistic_with_tiny_weights()

    def grad(v):
        return torch.func.grad(problem.g, argnums=1)(x, v)
    y = minimize(lambda v: (problem.g(x, v), grad(v)), problem.y0, max_iter=30).y      # a y from a short run
    found = verify(problem, oracle_of(problem), x, y)

    def fun(v):
        v = torch.tensor(v, dtype=D)
        return float(problem.g(x, v)), grad(v).numpy()
    scipy_answer = torch.tensor(scipy.optimize.minimize(
        fun, y.numpy(), jac=True, method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 0, "maxiter": 100000, "maxfun": 100000}).x)
    reference = scipy_answer.clone()
    for _ in range(20):
        step = torch.linalg.solve(torch.func.hessian(problem.g, argnums=1)(x, reference), -grad(reference))
        reference = reference + step
        if float(step.norm()) < 1e-12 * float(reference.norm()):
            break
    assert found["re_solve_converged"] and found["re_solve_step"] <= found["re_solve_tol"]
    assert float((found["y_resolved"] - reference).norm()) <= found["re_solve_tol"]
    grad_f = torch.func.grad(problem.f, argnums=1)(x, reference)
    bound = 2 * float(grad_f.norm()) * found["re_solve_tol"]          # first order in the distance
    assert abs(found["upper_value"] - float(problem.f(x, reference))) <= bound
    assert found["lower_residual"] == pytest.approx(float(grad(found["y_resolved"]).norm()), rel=1e-6, abs=1e-15)
    first_order = minimize(lambda v: (problem.g(x, v), grad(v)), y, max_iter=100).y
    for short in (first_order, scipy_answer):
        assert float((short - reference).norm()) > 10 * found["re_solve_tol"]


def test_a_re_solve_that_falls_short_is_reported_and_fails():
    """cond(grad_yy g) = 1e10 is beyond what float64's conjugate gradient can certify (a
    residual of sqrt(eps) leaves the step unknown to a factor cond sqrt(eps) > 1): the
    verification says the re-solve fell short, and success is False."""
    gen = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=D))
    Q = U @ torch.diag(torch.logspace(0, -10, 20, dtype=D)) @ U.T
    b = torch.randn(20, generator=gen, dtype=D)
    problem = BilevelProblem(lambda x, y: ((x - 1) ** 2).sum() + 1e-12 * (y ** 2).sum(),
                             lambda x, y: 0.5 * y @ Q @ y - (b + x) @ y, torch.zeros(20, dtype=D),
                             torch.zeros(20, dtype=D))
    check = verify(problem, oracle_of(problem), problem.x0, problem.y0)
    assert not check["re_solve_converged"] and math.isinf(check["re_solve_step"])
    assert not check["lower_passed"] and "fell short of its tolerance" in check["reason"]
    r = solve(problem, "pgdqp", max_iter=5, log_every=5, kkt="none")
    assert not r.success and "fell short of its tolerance" in r.message


@pytest.mark.slow
def test_success_is_the_verdict_on_the_answer_whatever_the_loop_status():
    """A tol the loop never meets ends MAX_ITER, yet the answer (x* = 4, y* = 2) is solved."""
    r = solve(duopoly(2.0), "aid_bio", max_iter=1000, log_every=1000, tol=1e-30)
    assert r.status is Status.MAX_ITER
    assert abs(float(r.x[0]) - 4.0) <= 1e-2 * 4.0
    assert r.verification["passed"] and r.success
    assert r.verification["upper_relative"] <= UPPER_TOL
