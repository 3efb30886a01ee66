"""pgdqp's steps as one compiled graph (oracle="compiled"): the closed-form step on full data and
the stochastic step on minibatches, with the same iterates, counts and diagnostics as the steps
they fuse."""
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


def small_minibatch_cleaning() -> BilevelProblem:
    return PROBLEMS["hyper-cleaning"](minibatch=True, n_train=120, n_val=60, n_test=60, pca=12, seed=1,
                                      retrain_steps=5, dtype=torch.float64)


def build(name: str) -> BilevelProblem:
    return {"boxed": boxed_problem, "minibatch": small_minibatch_cleaning}.get(
        name, lambda: PROBLEMS[name](seed=1))()


FULL = {"max_iter": 120, "log_every": 10, "kkt": "none", "verify": False}
MINIBATCH = {"max_iter": 40, "log_every": 10, "batch_size": 16, "seed": 0, "kkt": "none", "verify": False}

# (problem, options, solve's arguments, least number of fused steps): on full data every step but the
# first and those after an escape (iteration 120 lies past the checks at 50 and 100, after which the
# memories restart); on minibatches every step but the first, or but those of x's wait and the one after
CASES = [("synthetic-sc", {"schedule": "diminishing"}, FULL, 100),          # secants, momentum, block steps
         ("synthetic-sc", {"schedule": "diminishing", "block_steps": False}, FULL, 100),
         ("synthetic-sc", {"schedule": "theorem"}, FULL, 100),
         ("synthetic-sc", {"schedule": "constant", "step_size": 1e-4, "alpha": 0.5}, FULL, 100),
         ("boxed", {"schedule": "diminishing"}, FULL, 100),
         ("minibatch", {"x_wait": 5}, MINIBATCH, 34),                         # tracked estimator, AdaGrad-norm
         ("minibatch", {"step_size": 0.05, "momentum": 0.5}, MINIBATCH, 39)]


def agree(one, other, iterations: int, columns=("f", "h", "kkt_stationarity", "lambda", "step_size")) -> None:
    """Two runs of the same update: iterates and rows up to round-off, the same oracle counts."""
    tol = roundoff(operations=iterations * 100)
    torch.testing.assert_close(one.x, other.x, rtol=tol, atol=tol)
    torch.testing.assert_close(one.y, other.y, rtol=tol, atol=tol)
    for column in ("oracle_calls", "n_grad_f", "n_grad_g", "n_hvp"):
        assert one.history[column] == other.history[column]
    for column in columns:
        assert one.history[column] == pytest.approx(other.history[column], rel=tol, abs=tol)


@pytest.mark.parametrize("name, options, args, fused_steps", CASES)
def test_the_fused_step_is_the_step(name, options, args, fused_steps, monkeypatch):
    """The fused function run uncompiled (oracle="func" told that it fuses) against the plain step
    on the same back-end (and the same batches)."""
    problem = build(name)
    plain = solve(problem, "pgdqp", options=options, oracle="func", **args)
    calls = []
    fused_step = oracles.Oracle.fused
    monkeypatch.setattr(Oracle, "fuses", property(lambda self: True))
    monkeypatch.setattr(Oracle, "fused", lambda self, key, *a, **c: calls.append(key) or fused_step(self, key, *a, **c))
    fused = solve(problem, "pgdqp", options=options, oracle="func", **args)
    assert len(calls) >= fused_steps
    agree(fused, plain, args["max_iter"])


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
@pytest.mark.parametrize("name, options, args", [("synthetic-sc", {"schedule": "diminishing"}, FULL),
                                                 ("minibatch", {"x_wait": 5}, MINIBATCH)])
def test_compiled_pgdqp_traces_once_and_follows_eager(name, options, args, monkeypatch):
    """oracle="compiled": the step is traced once for the run (k, L_f, L_h, the block ratio and the
    batches are inputs of the graph, not constants), and the iterates are eager's up to round-off."""
    traces, trace = [], oracles._Traced._compile
    monkeypatch.setattr(oracles._Traced, "_compile", lambda self, *a: traces.append(1) or trace(self, *a))
    problem = build(name)
    compiled = solve(problem, "pgdqp", options=options, oracle="compiled", **args)
    eager = solve(problem, "pgdqp", options=options, oracle="func", **args)
    assert "uncompiled" not in compiled.message
    assert len(traces) == 1
    agree(compiled, eager, args["max_iter"], columns=("f", "h"))
