"""HPO problems (bilevel.problems.hpo): derivatives, the honest value against scikit-learn, the
best shared weight, the closed-form ridge lower level, and the builders' contract."""
import math

import numpy as np
import pytest
import torch

import bilevel
from bilevel.core.oracles import Autograd, Oracle
from bilevel.problems.hpo import (best_shared_weight, feature_weight_decay, honest_upper_value, lbfgs_lower,
                                  ridge_lower, ridge_weights)

D = torch.float64


def central_difference(fn, t, eps=1e-6):
    out = torch.zeros(t.numel(), dtype=D)
    for i in range(t.numel()):
        e = torch.zeros(t.numel(), dtype=D)
        e[i] = eps
        e = e.reshape(t.shape)
        out[i] = (fn(t + e) - fn(t - e)) / (2 * eps)
    return out.reshape(t.shape)


@pytest.mark.parametrize("build", [lambda: feature_weight_decay(seed=0), lambda: feature_weight_decay("wine", seed=0),
                                   lambda: ridge_weights(seed=0)])
def test_lower_level_gradients_match_finite_differences(build):
    problem = build()
    gen = torch.Generator().manual_seed(1)
    x = -2.0 + torch.randn(problem.x0.shape, generator=gen, dtype=D)
    y = 0.3 * torch.randn(problem.y0.shape, generator=gen, dtype=D)
    _, gx, gy = Oracle(Autograd(problem.f, problem.g)).grad_g(x, y)
    torch.testing.assert_close(gx, central_difference(lambda t: float(problem.g(t, y)), x), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gy, central_difference(lambda t: float(problem.g(x, t)), y), rtol=1e-6, atol=1e-8)
    # the penalty's scaling as documented: 1/2 sum_j exp(x_j) ||W_j||^2, the intercept (last row) free
    bump = torch.zeros_like(y)
    bump.view(bump.shape[0], -1)[-1, 0] = 1.0
    assert float(problem.g(x, y + bump) - problem.g(x, y)) != 0.0          # the intercept changes the loss
    zero = torch.zeros_like(y)
    W = zero.clone()
    W[0] = 1.0
    data_term = float(problem.g(x, zero))
    assert float(problem.g(x, W)) - float(problem.g(torch.full_like(x, -60.0), W)) == pytest.approx(
        0.5 * math.exp(float(x[0])) * (W[0] ** 2).sum().item(), rel=1e-10)
    assert data_term == pytest.approx(float(problem.g(torch.full_like(x, 30.0), zero)))


def test_honest_value_at_the_start_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    problem = feature_weight_decay(seed=0)
    (a_tr, t_tr), (a_val, t_val) = problem.info["_data"]["train"], problem.info["_data"]["val"]
    C = problem.info["sklearn_C"](0.0)
    assert C == pytest.approx(1 / 284)
    model = LogisticRegression(C=C, fit_intercept=True, tol=1e-12, max_iter=10000).fit(a_tr.numpy(), t_tr.numpy())
    expected = log_loss(t_val.numpy(), model.predict_proba(a_val.numpy())[:, 1])
    assert honest_upper_value(problem, problem.x0) == pytest.approx(expected, abs=1e-4)
    # the same with a shared weight far from the start
    c = -5.0
    model = LogisticRegression(C=problem.info["sklearn_C"](c), tol=1e-12, max_iter=10000).fit(a_tr.numpy(),
                                                                                             t_tr.numpy())
    expected = log_loss(t_val.numpy(), model.predict_proba(a_val.numpy())[:, 1])
    assert honest_upper_value(problem, torch.full_like(problem.x0, c)) == pytest.approx(expected, abs=1e-4)


def test_multinomial_honest_value_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    problem = feature_weight_decay("wine", seed=0)
    (a_tr, t_tr), (a_val, t_val) = problem.info["_data"]["train"], problem.info["_data"]["val"]
    model = LogisticRegression(C=problem.info["sklearn_C"](-1.0), tol=1e-12, max_iter=10000).fit(a_tr.numpy(),
                                                                                               t_tr.numpy())
    expected = log_loss(t_val.numpy(), model.predict_proba(a_val.numpy()), labels=[0, 1, 2])
    assert honest_upper_value(problem, torch.full_like(problem.x0, -1.0)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_best_shared_weight_beats_the_start():
    problem = feature_weight_decay(seed=0)
    start = honest_upper_value(problem, problem.x0)
    best = best_shared_weight(problem)
    assert best["value"] < 0.5 * start
    assert best["value"] == min(best["values"]) and len(best["values"]) == len(best["grid"]) == 49
    assert torch.equal(best["x"], torch.full_like(problem.x0, best["log_weight"]))
    assert best["seconds"] > 0
    with pytest.raises(ValueError, match="Invalid grid"):
        best_shared_weight(problem, [])


def test_ridge_closed_form_is_the_lower_level_solution():
    problem = ridge_weights(seed=0)
    x = torch.linspace(-3.0, 1.0, problem.x0.numel(), dtype=D)
    y_closed = problem.info["resolved_y"](x)
    _, _, gy = Oracle(Autograd(problem.f, problem.g)).grad_g(x, y_closed)
    assert float(gy.abs().max()) < 1e-12
    y_lbfgs = lbfgs_lower(problem.g, x, problem.y0)
    torch.testing.assert_close(y_lbfgs, y_closed, rtol=1e-6, atol=1e-8)
    A, t = problem.info["_data"]["train"]
    torch.testing.assert_close(ridge_lower(x, A=A, labels=t), y_closed)


def test_builders_contract():
    p = feature_weight_decay(seed=3)
    assert (p.info["n_train"], p.info["n_val"], p.info["n_test"]) == (284, 142, 143)
    assert p.x0.dtype == D and p.y0.shape == (31,) and float(p.x0.abs().max()) == 0.0
    a_tr = p.info["_data"]["train"][0]
    torch.testing.assert_close(a_tr.mean(0), torch.zeros(30, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(a_tr.std(0, unbiased=False), torch.ones(30, dtype=D))
    assert feature_weight_decay(seed=3).info["_data"]["val"][0].equal(p.info["_data"]["val"][0])   # seeded
    assert not feature_weight_decay(seed=4).info["_data"]["val"][0].equal(p.info["_data"]["val"][0])
    q = feature_weight_decay("digits", seed=0, dtype=torch.float32, x0=-1.0)
    assert q.x0.dtype == torch.float32 and q.y0.shape == (65, 10) and float(q.x0[0]) == -1.0
    assert set(q.metrics(q.x0, q.y0)) == {"val_loss", "test_loss", "test_accuracy", "honest_val_loss"}
    assert set(ridge_weights(honest_metric=False).metrics(torch.zeros(10, dtype=D), torch.zeros(11, dtype=D))) == {
        "val_loss", "test_loss"}
    with pytest.raises(ValueError, match="Invalid dataset: 'mnist'"):
        feature_weight_decay("mnist")
    with pytest.raises(ValueError, match="Invalid n_train/n_val/n_test"):
        feature_weight_decay(n_train=600)
    with pytest.raises(ValueError, match="Invalid seed"):
        ridge_weights(seed=-1)


def test_honest_value_of_a_plain_problem_resolves_by_lbfgs():
    p = bilevel.PROBLEMS["quadratic"](seed=0)
    x = p.info["x_star"]
    assert honest_upper_value(p, x) == pytest.approx(float(p.f(x, p.info["y_star"])), rel=1e-8)
    assert np.isfinite(honest_upper_value(p, p.x0))


@pytest.mark.slow
def test_default_pgdqp_more_than_halves_the_gap_to_the_best_shared_weight():
    """Per-feature weights enter g through exp(x) y^2 (grad_yx g is small where y is): pgdqp's block
    steps move x on its own scale, and 200 default iterations close more than half of the gap between
    the start's honest value and the best shared weight's (one step for x and y closes about 40%)."""
    problem = feature_weight_decay(seed=0, honest_metric=False)
    start = honest_upper_value(problem, problem.x0)
    best = best_shared_weight(problem, np.linspace(-12.0, 4.0, 17))["value"]   # weights 10x apart
    result = bilevel.solve(problem, "pgdqp", max_iter=200, log_every=200)
    assert result.status is bilevel.Status.COMPLETED
    assert start - honest_upper_value(problem, result.x) > 0.5 * (start - best)
