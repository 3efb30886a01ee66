"""Contract tests: bad inputs and their messages, state types, registries, statuses."""
import dataclasses
import math

import pytest
import torch

import bilevel
from bilevel import BilevelProblem, PROBLEMS, SOLVERS, Status, solve
from bilevel.solvers import PGDQP

D = torch.float64
X0, Y0 = torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)


def f_ok(x, y):
    return ((x - 1) ** 2).sum() + ((y - 2) ** 2).sum()


def g_ok(x, y):
    return 0.5 * ((y - x) ** 2).sum()


BAD_PROBLEMS = [
    (dict(f=None), TypeError, r"Invalid f: None \(expected a callable"),
    (dict(g=3), TypeError, r"Invalid g: 3 \(expected a callable"),
    (dict(x0=[0.0, 0.0]), TypeError, r"Invalid x0: list \(expected a torch.Tensor\)"),
    (dict(x0=torch.zeros(2, dtype=torch.int64)), TypeError, r"Invalid x0: dtype torch.int64 \(expected a floating"),
    (dict(y0=torch.tensor([0.0, math.nan], dtype=D)), ValueError, r"Invalid y0: 1 non-finite entries"),
    (dict(y0=torch.zeros(2, dtype=torch.float32)), TypeError, r"Invalid y0: dtype torch.float32 differs from x0's"),
    (dict(f=lambda x, y: x + y), ValueError, r"Invalid f: f\(x0, y0\) returned shape \(2,\) \(expected a scalar"),
    (dict(g=lambda x, y: (x ** 2).sum()), ValueError, r"Invalid g: g\(x0, y0\) does not depend on y"),
    (dict(f=lambda x, y: torch.tensor(1.0, dtype=D)), ValueError, r"Invalid f: f\(x0, y0\) depends on neither"),
    (dict(f=lambda x, y: 1.0), TypeError, r"Invalid f: f\(x0, y0\) returned float \(expected a scalar tensor\)"),
    (dict(f=lambda x, y: x.sum() / 0.0 * 0.0), ValueError, r"Invalid f: f\(x0, y0\) = nan"),
    (dict(x_bounds=(1.0, 0.0)), ValueError, r"Invalid x_bounds: \(1.0, 0.0\) \(expected low <= high"),
    (dict(y_bounds=5.0), TypeError, r"Invalid y_bounds: 5.0 \(expected a \(low, high\) pair"),
    (dict(metrics="acc"), TypeError, r"Invalid metrics: 'acc'"),
    (dict(g=lambda x, y: (y ** 2).sum()[3]), ValueError, r"Invalid g: calling g\(x0, y0\) raised IndexError"),
]


@pytest.mark.parametrize("change, exc, message", BAD_PROBLEMS)
def test_bad_problem_inputs(change, exc, message):
    kwargs = dict(f=f_ok, g=g_ok, x0=X0, y0=Y0)
    kwargs.update(change)
    with pytest.raises(exc, match=message):
        BilevelProblem(**kwargs)


PROBLEM = BilevelProblem(f_ok, g_ok, X0, Y0)

BAD_SOLVES = [
    (dict(solver="pgdq"), ValueError, r"Invalid solver: 'pgdq' .*did you mean 'pgdqp'"),
    (dict(solver=3), TypeError, r"Invalid solver: 3"),
    (dict(stepsize=0.1), TypeError, r"Invalid option for pgdqp: 'stepsize' \(valid options: step_size, .*did you mean 'step_size'"),
    (dict(step_size=-1.0), ValueError, r"Invalid step_size: -1.0 \(expected a finite number > 0"),
    (dict(max_iter=10.5), ValueError, r"Invalid max_iter: 10.5 \(expected an integer >= 0\)"),
    (dict(tol=-1), ValueError, r"Invalid tol: -1"),
    (dict(log_every=0), ValueError, r"Invalid log_every: 0 \(expected an integer >= 1\)"),
    (dict(callback="stop"), TypeError, r"Invalid callback: 'stop'"),
    (dict(rho="hessian"), ValueError, r"Invalid rho: 'hessian' \(expected one of 'grad', 'warm'\)"),
    (dict(schedule="cosine"), ValueError, r"Invalid schedule: 'cosine'"),
    (dict(schedule="theorem", step_size=0.1), ValueError, r"with schedule='theorem'"),
    (dict(power_iters=0), ValueError, r"Invalid power_iters: 0 \(expected an integer >= 1\)"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD_SOLVES)
def test_bad_solve_inputs(kwargs, exc, message):
    kwargs = dict(kwargs)
    solver = kwargs.pop("solver", "pgdqp")
    with pytest.raises(exc, match=message):
        solve(PROBLEM, solver, max_iter=kwargs.pop("max_iter", 5), **kwargs)


def test_name_and_object_are_the_same_call():
    a = solve(PROBLEM, "pgdqp", max_iter=30, schedule="constant", step_size=0.05)
    b = solve(PROBLEM, PGDQP(schedule="constant", step_size=0.05), max_iter=30)
    c = solve(PROBLEM, PGDQP(schedule="constant"), max_iter=30, step_size=0.05)
    for other in (b, c):
        torch.testing.assert_close(a.x, other.x, rtol=0, atol=0)
        assert a.history["f"] == other.history["f"]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_keeps_its_state_type_and_is_frozen(name):
    cls = SOLVERS[name]
    solver = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.step_size = 1.0  # type: ignore[misc]
    result = solve(PROBLEM, solver, max_iter=3)
    first = solver.init(PROBLEM, bilevel.Oracle(PROBLEM.f, PROBLEM.g), max_iter=3, generator=torch.Generator())
    assert type(result.state) is type(first)
    assert result.state.k == 3
    assert set(result.history) >= {"iter", "time", "f", "g", "h", "kkt_stationarity", "kkt_feasibility",
                                   "n_grad_f", "n_grad_g", "n_hvp", "oracle_calls"}


def test_history_is_logged_every_log_every_and_at_the_end():
    r = solve(PROBLEM, "pgdqp", max_iter=25, log_every=10)
    assert r.history["iter"] == [0.0, 10.0, 20.0, 25.0]
    assert all(len(col) == 4 for col in r.history.values())
    assert r.history["oracle_calls"] == sorted(r.history["oracle_calls"])
    assert r.status is Status.COMPLETED and r.success and r.n_iter == 25


def test_tol_converges_and_callback_stops():
    r = solve(PROBLEM, "pgdqp", max_iter=20000, tol=1e-6, log_every=10)
    assert r.status is Status.CONVERGED and r.n_iter < 20000
    assert max(r.final("kkt_stationarity"), r.final("kkt_feasibility")) <= 1e-6
    r = solve(PROBLEM, "pgdqp", max_iter=100, callback=lambda state: state.k >= 7)
    assert r.status is Status.STOPPED and r.n_iter == 7 and r.state.k == 7
    r = solve(PROBLEM, "pgdqp", max_iter=3, tol=1e-30)
    assert r.status is Status.MAX_ITER and not r.success


def test_divergence_returns_last_finite_iterate():
    problem = BilevelProblem(lambda x, y: -(x ** 4).sum() + (y ** 2).sum(), g_ok,
                             torch.ones(2, dtype=D), torch.ones(2, dtype=D))
    r = solve(problem, "pgdqp", max_iter=1000, schedule="constant", step_size=0.5)
    assert r.status is Status.DIVERGED and not r.success
    assert torch.isfinite(r.x).all() and torch.isfinite(r.y).all()
    assert 0 < r.n_iter < 1000
    assert f"iteration {r.n_iter}" in r.message


def test_status_values_are_sentences():
    for status in Status:
        assert len(status.value.split()) >= 3 and str(status) == status.value


def test_metrics_are_logged_and_bounds_are_respected():
    problem = BilevelProblem(f_ok, g_ok, X0, Y0, x_bounds=(None, 0.5),
                             metrics=lambda x, y: {"x_max": float(x.max())})
    r = solve(problem, "pgdqp", max_iter=2000, log_every=100)
    assert max(r.history["x_max"]) <= 0.5
    # the bilevel solution with x <= 0.5: y = x, min (x-1)^2 + (x-2)^2 over x <= 0.5 -> x = 0.5
    torch.testing.assert_close(r.x, torch.full((2,), 0.5, dtype=D), atol=1e-3, rtol=0)


def test_registries_list_the_documented_names():
    assert {"pgdqp", "sgf"} <= set(SOLVERS)
    assert {"synthetic-sc", "synthetic-nc", "coreset"} <= set(PROBLEMS)
    for name, cls in SOLVERS.items():
        assert cls.name == name and cls.summary and cls.__doc__


@pytest.mark.parametrize("name", ["synthetic-sc", "synthetic-nc", "coreset", "quadratic"])
def test_problem_builders_are_seeded(name):
    a, b, c = PROBLEMS[name](seed=1), PROBLEMS[name](seed=1), PROBLEMS[name](seed=2)
    assert torch.equal(a.x0, b.x0) and float(a.f(a.x0, a.y0)) == float(b.f(b.x0, b.y0))
    assert float(a.g(a.x0 + 0.1, a.y0 + 0.1)) != float(c.g(c.x0 + 0.1, c.y0 + 0.1))


def test_solve_dtype_that_the_problem_data_cannot_follow_is_a_clear_error():
    problem = PROBLEMS["synthetic-sc"](seed=0)
    with pytest.raises(ValueError, match=r"Invalid device/dtype: None/torch.float32: .*build the problem"):
        solve(problem, "pgdqp", max_iter=2, dtype=torch.float32)
    # where f and g hold no data, moving x0 and y0 is enough
    r = solve(PROBLEM, "pgdqp", max_iter=2, dtype=torch.float32)
    assert r.x.dtype == torch.float32


BAD_BUILDERS = [
    ("quadratic", dict(dim_x=0), ValueError, r"Invalid dim_x: 0 \(expected an integer >= 1\)"),
    ("quadratic", dict(cond=0.5), ValueError, r"Invalid cond: 0.5 \(expected a number >= 1\)"),
    ("synthetic-sc", dict(dim=2.5), ValueError, r"Invalid dim: 2.5"),
    ("synthetic-nc", dict(seed="a"), TypeError, r"Invalid seed: 'a' \(expected an integer\)"),
    ("coreset", dict(n_points=1), ValueError, r"Invalid n_points: 1 \(expected an integer >= 2\)"),
    ("hyper-cleaning", dict(model="cnn"), ValueError, r"Invalid model: 'cnn' \(expected 'linear' or 'mlp'\)"),
    ("hyper-cleaning", dict(corruption=1.5), ValueError, r"Invalid corruption: 1.5 \(expected a fraction"),
    ("hyper-cleaning", dict(dataset="cifar"), ValueError, r"Invalid dataset: 'cifar'"),
    ("hyper-cleaning", dict(dataset="mnist"), ValueError, r"Invalid data_dir: None for dataset 'mnist'"),
    ("hyper-cleaning", dict(pca=0), ValueError, r"Invalid pca: 0 \(expected an integer >= 1\)"),
    ("hyper-cleaning", dict(corruption_model="flip"), ValueError, r"Invalid corruption_model: 'flip'"),
]


@pytest.mark.parametrize("name, kwargs, exc, message", BAD_BUILDERS)
def test_bad_builder_arguments(name, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        PROBLEMS[name](**kwargs)
