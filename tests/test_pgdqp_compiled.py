"""pgdqp's closed-form step as one compiled graph (oracle="compiled", full data): the same
iterates, counts and diagnostics as the step it fuses."""
import math

import pytest
import torch
from conftest import roundoff

from bilevel import PROBLEMS, BilevelProblem, solve
from bilevel.core import oracles
from bilevel.core.oracles import Oracle
from bilevel.core.result import Status

D = torch.float64


def boxed_problem() -> BilevelProblem:
    """A y box that holds one coordinate at its bound (projection and free coordinates in the graph)."""
    a = torch.tensor([[1.0, 0.5], [0.2, 1.5], [0.3, -0.4]], dtype=D)
    return BilevelProblem(f=lambda x, y: ((y - 2.0) ** 2).sum() + 0.1 * (x ** 2).sum(),
                          g=lambda x, y: 0.5 * (y ** 2).sum() - (y * (a.T @ x)).sum() + 0.05 * (y ** 4).sum(),
                          x0=torch.ones(3, dtype=D), y0=torch.zeros(2, dtype=D),
                          x_bounds=(-3.0, 3.0), y_bounds=(-1.0, 0.8))


CASES = [("synthetic-sc", {"schedule": "diminishing"}),                      # secants, momentum, block steps
         ("synthetic-sc", {"schedule": "diminishing", "block_steps": False}),
         ("synthetic-sc", {"schedule": "theorem"}),
         ("synthetic-sc", {"schedule": "constant", "step_size": 1e-4, "alpha": 0.5}),
         ("boxed", {"schedule": "diminishing"})]


def build(name: str) -> BilevelProblem:
    return boxed_problem() if name == "boxed" else PROBLEMS[name](seed=1)


@pytest.mark.parametrize("name, options", CASES)
def test_the_fused_step_is_the_step(name, options, monkeypatch):
    """The fused function run uncompiled (oracle="func" told that it fuses) against the plain step
    on the same back-end: the same iterates and rows up to round-off, the same oracle counts;
    iteration 120 lies past the escape checks at 50 and 100, after which the memories restart."""
    problem = build(name)
    args = {"options": options, "max_iter": 120, "log_every": 10, "kkt": "none", "verify": False, "oracle": "func"}
    plain = solve(problem, "pgdqp", **args)
    calls = []
    fused_step = oracles.Oracle.fused
    monkeypatch.setattr(Oracle, "fuses", property(lambda self: True))
    monkeypatch.setattr(Oracle, "fused", lambda self, key, *a, **c: calls.append(key) or fused_step(self, key, *a, **c))
    fused = solve(problem, "pgdqp", **args)
    assert len(calls) >= 100                             # every step but the first and those after an escape
    tol = roundoff(operations=120 * 100)
    torch.testing.assert_close(fused.x, plain.x, rtol=tol, atol=tol)
    torch.testing.assert_close(fused.y, plain.y, rtol=tol, atol=tol)
    for column in ("oracle_calls", "n_grad_f", "n_grad_g", "n_hvp"):
        assert fused.history[column] == plain.history[column]
    for column in ("f", "h", "kkt_stationarity", "lambda", "step_size", "lower_step_size"):
        assert fused.history[column] == pytest.approx(plain.history[column], rel=tol, abs=tol)


def test_a_non_finite_step_is_caught_by_the_fused_checksum(monkeypatch):
    """f = sum log x is NaN once a step takes x below 0: the guard reads the sum made inside the
    fused graph and the run stops DIVERGED at the last iterate whose f is finite."""
    monkeypatch.setattr(Oracle, "fuses", property(lambda self: True))
    problem = BilevelProblem(f=lambda x, y: torch.log(x).sum() + (y ** 2).sum(),
                             g=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
                             x0=torch.ones(2, dtype=D), y0=torch.ones(2, dtype=D))
    result = solve(problem, "pgdqp", options={"schedule": "constant", "step_size": 0.3, "escape_every": 0},
                   max_iter=50, kkt="none", verify=False, oracle="func")
    assert result.status is Status.DIVERGED and "non-finite f" in result.message, result.message
    assert bool((result.x > 0).all())
    assert math.isfinite(result.history["f"][-1])


@pytest.mark.slow
def test_compiled_pgdqp_traces_once_and_follows_eager(monkeypatch):
    """oracle="compiled": the step is traced once for the run (k, L_f, L_h and the block ratio are
    inputs of the graph, not constants), and the iterates are eager's up to round-off."""
    traces, trace = [], oracles._Traced._compile
    monkeypatch.setattr(oracles._Traced, "_compile", lambda self, *a: traces.append(1) or trace(self, *a))
    problem = PROBLEMS["synthetic-sc"](seed=1)
    args = {"options": {"schedule": "diminishing"}, "max_iter": 120, "log_every": 10, "kkt": "none", "verify": False}
    compiled = solve(problem, "pgdqp", oracle="compiled", **args)
    eager = solve(problem, "pgdqp", oracle="func", **args)
    assert "uncompiled" not in compiled.message
    assert len(traces) == 1
    tol = roundoff(operations=120 * 100)
    torch.testing.assert_close(compiled.x, eager.x, rtol=tol, atol=tol)
    torch.testing.assert_close(compiled.y, eager.y, rtol=tol, atol=tol)
    assert compiled.history["oracle_calls"] == eager.history["oracle_calls"]


def small_minibatch_cleaning() -> BilevelProblem:
    return PROBLEMS["hyper-cleaning"](minibatch=True, n_train=120, n_val=60, n_test=60, pca=12, seed=1,
                                      retrain_steps=5, dtype=torch.float64)


@pytest.mark.parametrize("options", [{}, {"step_size": 0.05, "momentum": 0.5}])
def test_the_fused_minibatch_step_is_the_step(options, monkeypatch):
    """On minibatches (tracked estimator, AdaGrad-norm or a given step, heavy ball) the fused step
    run uncompiled follows the plain step on the same batches: same iterates and rows up to
    round-off, same counts."""
    problem = small_minibatch_cleaning()
    args = {"options": options, "max_iter": 40, "log_every": 10, "batch_size": 16, "seed": 0, "kkt": "none",
            "verify": False, "oracle": "func"}
    plain = solve(problem, "pgdqp", **args)
    calls = []
    fused_step = oracles.Oracle.fused
    monkeypatch.setattr(Oracle, "fuses", property(lambda self: True))
    monkeypatch.setattr(Oracle, "fused", lambda self, key, *a, **c: calls.append(key) or fused_step(self, key, *a, **c))
    fused = solve(problem, "pgdqp", **args)
    assert len(calls) == 39                              # every step but the first
    tol = roundoff(operations=40 * 100)
    torch.testing.assert_close(fused.x, plain.x, rtol=tol, atol=tol)
    torch.testing.assert_close(fused.y, plain.y, rtol=tol, atol=tol)
    for column in ("oracle_calls", "n_grad_f", "n_grad_g", "n_hvp"):
        assert fused.history[column] == plain.history[column]
    for column in ("f", "h", "kkt_stationarity", "lambda", "step_size"):
        assert fused.history[column] == pytest.approx(plain.history[column], rel=tol, abs=tol)


@pytest.mark.slow
def test_compiled_minibatch_pgdqp_traces_once_and_follows_eager(monkeypatch):
    """oracle="compiled" on minibatches: one graph for all batches of the run (they are its inputs)."""
    traces, trace = [], oracles._Traced._compile
    monkeypatch.setattr(oracles._Traced, "_compile", lambda self, *a: traces.append(1) or trace(self, *a))
    problem = small_minibatch_cleaning()
    args = {"max_iter": 40, "log_every": 10, "batch_size": 16, "seed": 0, "kkt": "none", "verify": False}
    compiled = solve(problem, "pgdqp", oracle="compiled", **args)
    eager = solve(problem, "pgdqp", oracle="func", **args)
    assert "uncompiled" not in compiled.message
    assert len(traces) == 1
    tol = roundoff(operations=40 * 100)
    torch.testing.assert_close(compiled.x, eager.x, rtol=tol, atol=tol)
    torch.testing.assert_close(compiled.y, eager.y, rtol=tol, atol=tol)
    assert compiled.history["oracle_calls"] == eager.history["oracle_calls"]
