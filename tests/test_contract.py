"""Contract tests: bad inputs and their messages, state types, registries, statuses."""
import dataclasses
import math

import pytest
import torch

import bilevel
from bilevel import PROBLEMS, SOLVERS, BilevelProblem, Status, solve
from bilevel.core.oracles import Autograd, Oracle
from bilevel.run.solve import SOLVE_ARGUMENTS
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
    (dict(x0=[0.0, 0.0]), TypeError, r"Invalid x0: list \(expected a torch.Tensor, a dict of tensors"),
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
    (dict(f=lambda x, y: (x.sum() > 0).long()), TypeError, r"Invalid f: f\(x0, y0\) returned dtype torch.int64"),
    (dict(f=lambda x, y: torch.tensor(x.numpy().sum()) + y.sum()), ValueError,
     r"Invalid f: f\(x, y\) cannot be differentiated \(RuntimeError: Can't call numpy\(\)"),
    (dict(x_bounds=("0", "1")), TypeError, r"Invalid x_bounds: low bound '0' \(expected a number or a tensor\)"),
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
    (dict(solver=PGDQP), TypeError, r"Invalid solver: the class PGDQP \(pass an instance, PGDQP\(\), or the name 'pgdqp'\)"),
    (dict(solver="PGDQP"), ValueError, r"Invalid solver: 'PGDQP' .*did you mean 'pgdqp'"),
    (dict(x_bounds=(0.0, 1.0)), TypeError, r"'x_bounds' is an argument of BilevelProblem\(...\), not of the solver"),
    (dict(seed="abc"), TypeError, r"Invalid seed: 'abc' \(expected an integer >= 0 or None\)"),
    (dict(device="gpu"), ValueError, r"Invalid device: 'gpu' \(expected a torch device such as 'cpu'"),
    (dict(dtype="float32"), TypeError, r"Invalid dtype: 'float32' \(expected a floating torch dtype"),
    (dict(kkt=False), ValueError, r"Invalid kkt: False \(expected one of 'method', 'least_squares', 'none'\)"),
    (dict(kkt="none", tol=1e-6), ValueError, r"Invalid tol: 1e-06 with kkt='none'"),
    (dict(oracle="jit"), ValueError, r"Invalid oracle: 'jit' \(expected one of 'autograd', 'func', 'compiled' or a "),
    (dict(oracle="Func"), ValueError, r"Invalid oracle: 'Func' .*did you mean 'func'\?"),
    (dict(flush_denormal="yes"), TypeError, r"Invalid flush_denormal: 'yes' \(expected True or False\)"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD_SOLVES)
def test_bad_solve_inputs(kwargs, exc, message):
    """Each bad argument of solve() is refused before any work, with a message naming it."""
    kwargs = dict(kwargs)
    solver = kwargs.pop("solver", "pgdqp")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in SOLVE_ARGUMENTS}
    with pytest.raises(exc, match=message):
        solve(PROBLEM, solver, max_iter=kwargs.pop("max_iter", 5), options=options, **kwargs)


def test_options_of_the_run_and_of_the_solver_are_apart():
    """A solver option and an argument of solve() never share one namespace."""
    with pytest.raises(TypeError, match=r"Invalid option for pgdqp: 'tol' is an argument of solve\(...\), not of"):
        solve(PROBLEM, "pgdqp", options={"tol": 1e-3})
    with pytest.raises(TypeError, match=r"solve\(\) got an unexpected keyword argument 'step_size'"):
        solve(PROBLEM, "pgdqp", step_size=0.1)
    with pytest.raises(TypeError, match=r"Invalid options: \[0.1\] \(expected a dict"):
        solve(PROBLEM, "pgdqp", options=[0.1])


def test_problem_and_integer_arguments():
    with pytest.raises(TypeError, match=r"Invalid problem: <function f_ok .*expected a bilevel.BilevelProblem"):
        solve(f_ok, "pgdqp")
    import numpy as np
    assert solve(PROBLEM, "pgdqp", max_iter=np.int64(3), log_every=np.int32(2)).n_iter == 3   # NumPy integers


def test_the_callers_tensors_are_never_changed():
    x0 = torch.zeros(2, dtype=D)

    def f_in_place(x, y):
        x.sub_(1.0)
        return (x ** 2).sum() + (y ** 2).sum()
    with pytest.raises(ValueError, match=r"Invalid f: f\(x, y\) cannot be differentiated .*x = x - 1, not x.sub_\(1\)"):
        BilevelProblem(f_in_place, g_ok, x0, Y0)
    assert torch.equal(x0, torch.zeros(2, dtype=D))
    problem = BilevelProblem(f_ok, g_ok, x0, Y0)
    x0.fill_(7.0)          # a later change to the caller's tensor does not leak into the problem
    assert torch.equal(problem.x0, torch.zeros(2, dtype=D))


def test_suspicious_objectives_warn():
    with pytest.warns(UserWarning, match="f\\(x0, y0\\) does not depend on y"):
        BilevelProblem(lambda x, y: (x ** 2).sum() + float(y.sum()), g_ok, X0, Y0)
    with pytest.warns(UserWarning, match="g is flat in y at \\(x0, y0\\)"):
        BilevelProblem(f_ok, lambda x, y: ((y - x) ** 2).sum() * 0.0 + (x ** 2).sum(), X0, Y0)


def test_bad_metrics_are_named():
    def build(metrics):
        return BilevelProblem(f_ok, g_ok, X0, Y0, metrics=metrics)
    with pytest.raises(ValueError, match=r"Invalid metrics: 'f' is already a history column"):
        solve(build(lambda x, y: {"f": 1.0}), "pgdqp", max_iter=2)
    with pytest.raises(TypeError, match=r"Invalid metrics: value of 'acc' is 'high' \(expected a number"):
        solve(build(lambda x, y: {"acc": "high"}), "pgdqp", max_iter=2)
    with pytest.raises(TypeError, match=r"Invalid metrics: metrics\(x, y\) returned NoneType"):
        solve(build(lambda x, y: None), "pgdqp", max_iter=2)
    with pytest.raises(TypeError, match=r"Invalid metrics: \{'acc': 0.5\} \(expected a callable \(x, y\) -> dict, "):
        build({"acc": 0.5})


def test_metrics_given_as_a_dict_of_functions_are_logged_under_their_names():
    metrics = {"y_sum": lambda x, y: y.sum(), "x_max": lambda x, y: x.max()}
    r = solve(BilevelProblem(f_ok, g_ok, X0, Y0, metrics=metrics), "pgdqp", max_iter=20, log_every=10)
    assert r.history["y_sum"][-1] == pytest.approx(float(r.y.sum()))
    assert r.history["x_max"][-1] == pytest.approx(float(r.x.max()))
    assert r.verification["metrics"]["y_sum"] == pytest.approx(float(r.verification["y_resolved"].sum()))


def test_exceptions_from_user_code_say_where_in_the_run():
    def callback(state, aux):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom") as info:
        solve(PROBLEM, "pgdqp", max_iter=5, callback=callback)
    if hasattr(info.value, "__notes__"):
        assert info.value.__notes__ == ["bilevel.solve: raised in the callback at iteration 0"]


def test_a_maximising_lower_level_is_pointed_out():
    problem = BilevelProblem(f_ok, lambda x, y: -0.5 * ((y - x) ** 2).sum(), X0, Y0)
    r = solve(problem, "pgdqp", max_iter=50)
    assert "y is not a minimiser of g(x, .)" in r.message and "pass -g" in r.message
    assert "not a minimiser" not in solve(PROBLEM, "pgdqp", max_iter=50).message


def test_curvature_that_overflows_is_a_clear_error():
    problem = BilevelProblem(lambda x, y: (torch.exp(x) * 1e300).sum() + (y ** 2).sum(), g_ok, X0, Y0)
    with pytest.raises(ValueError, match=r"Invalid problem for pgdqp: the estimate of lipschitz_f .* is inf"):
        solve(problem, "pgdqp", max_iter=3)


def test_name_and_object_are_the_same_call():
    a = solve(PROBLEM, "pgdqp", max_iter=30, options=dict(schedule="constant", step_size=0.05))
    b = solve(PROBLEM, PGDQP(schedule="constant", step_size=0.05), max_iter=30)
    c = solve(PROBLEM, PGDQP(schedule="constant"), max_iter=30, options=dict(step_size=0.05))
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
    first = solver.init(PROBLEM, bilevel.Oracle(bilevel.Autograd(PROBLEM.f, PROBLEM.g)), max_iter=3, generator=torch.Generator())
    assert type(result.state) is type(first)
    assert result.state.k == 3
    assert set(result.history) >= {"iter", "time", "f", "g", "h", "kkt_stationarity", "kkt_feasibility",
                                   "n_grad_f", "n_grad_g", "n_hvp", "oracle_calls"}


def test_history_is_logged_every_log_every_and_at_the_end():
    r = solve(PROBLEM, "pgdqp", max_iter=25, log_every=10)
    assert r.history["iter"] == [0.0, 10.0, 20.0, 25.0]
    assert all(len(col) == 4 for col in r.history.values())
    assert r.history["oracle_calls"] == sorted(r.history["oracle_calls"])
    assert r.status is Status.COMPLETED and r.n_iter == 25


def test_tol_converges_and_callback_stops():
    r = solve(PROBLEM, "pgdqp", max_iter=20000, tol=1e-6, log_every=10)
    assert r.status is Status.CONVERGED and r.n_iter < 20000
    assert max(r.final("kkt_stationarity"), r.final("kkt_feasibility")) <= 1e-6
    seen = []

    def stop_at_7(state, aux):
        seen.append((state.k, float(aux.diagnostics["f"])))
        return state.k >= 7
    r = solve(PROBLEM, "pgdqp", max_iter=100, callback=stop_at_7)
    assert r.status is Status.STOPPED and r.n_iter == 7 and r.state.k == 7
    # the callback sees each iterate with its own diagnostics, as the history logs them
    assert [k for k, _ in seen] == list(range(8))
    assert [f for _, f in seen] == r.history["f"]
    r = solve(PROBLEM, "pgdqp", max_iter=3, tol=1e-30, options={"schedule": "diminishing"})  # not exact in 3 steps
    assert r.status is Status.MAX_ITER and not r.success


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_an_objective_that_turns_nan_ends_on_a_finite_answer(name):
    """f = ... + log(2 - x_1) is NaN once x_1 > 2 (x heads for 3): the answer and the last logged row
    are the last iterate where f and g are finite, for every solver."""
    def f(x, y):
        return ((x - 3) ** 2).sum() + ((y - 3) ** 2).sum() + torch.log(2.0 - x[0])
    problem = BilevelProblem(f, g_ok, X0, Y0)
    # pgdqp's default line search never accepts a step where f is not finite: its diminishing schedule steps there
    options = {"schedule": "diminishing"} if name == "pgdqp" else None
    r = solve(problem, name, max_iter=20000, log_every=50, kkt="none", options=options)
    assert r.status is Status.DIVERGED, r.message
    assert math.isfinite(float(f(r.x, r.y))) and math.isfinite(r.final("f"))
    assert all(math.isfinite(v) for v in r.history["f"])
    assert "non-finite f" in r.message


def test_a_blow_up_returns_a_finite_iterate_and_says_where():
    """f = -||x||^4 with a constant step: the iterates blow up within a few steps; the run stops
    when they have grown a million-fold (RUNAWAY), before they overflow (DIVERGED)."""
    problem = BilevelProblem(lambda x, y: -(x ** 4).sum() + (y ** 2).sum(), g_ok,
                             torch.ones(2, dtype=D), torch.ones(2, dtype=D))
    r = solve(problem, "pgdqp", max_iter=1000, options=dict(schedule="constant", step_size=0.5))
    assert r.status is Status.RUNAWAY and not r.success
    assert torch.isfinite(r.x).all() and torch.isfinite(r.y).all()
    assert 0 < r.n_iter < 1000
    assert f"by iteration {r.n_iter}" in r.message and " grew from " in r.message


def test_status_values_are_sentences():
    for status in Status:
        assert len(status.value.split()) >= 3 and str(status) == status.value


@pytest.mark.slow
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
    ("quadratic", dict(cond=0.5), ValueError, r"Invalid cond: 0.5 \(expected a finite number >= 1\)"),
    ("synthetic-sc", dict(dim=2.5), ValueError, r"Invalid dim: 2.5"),
    ("synthetic-nc", dict(seed="a"), ValueError, r"Invalid seed: 'a' \(expected an integer >= 0\)"),
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


@pytest.mark.parametrize("method", ["iaptt_gm", "meha", "f2ba", "hjfbio"])
def test_state_type_is_kept_and_bounds_are_honoured(method):
    problem = PROBLEMS["quadratic"](seed=1)
    problem = BilevelProblem(problem.f, problem.g, problem.x0, problem.y0,
                             x_bounds=(-0.1, 0.1), y_bounds=(-0.2, 0.2))
    result = bilevel.solve(problem, method, max_iter=20)
    assert type(result.state) is type(bilevel.SOLVERS[method]().init(
        problem, Oracle(Autograd(problem.f, problem.g)), max_iter=1, generator=torch.Generator()))
    assert float(result.x.abs().max()) <= 0.1 and float(result.y.abs().max()) <= 0.2
    for key in ("f", "g", "h", "kkt_stationarity", "kkt_feasibility"):
        assert key in result.history
