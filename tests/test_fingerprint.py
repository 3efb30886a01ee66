"""A fingerprint of every solver's iterates: final x, y and every logged history row, recorded
from the code as it stood and compared to 1e-12 (float64). It guards refactors (same
iterates, same oracle counts); a change that is meant to alter iterates re-records it
(`python tests/test_fingerprint.py`) and says why in its commit.

The last row of a history is left out of the comparison for the step's own diagnostics
(lambda, kkt_stationarity, ...): they describe the final iterate, and how they are computed
there is not part of the iterates. f, g, h, the counts and the problem's metrics of that row
depend only on the final iterate and are compared.
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import bilevel
from bilevel import PROBLEMS, SOLVERS

PATH = Path(__file__).with_name("fingerprints.json")
MAX_ITER, LOG_EVERY, SEED = 20, 7, 3
# what a step computes beyond f, g and h: compared on every row but the final one
STEP_COLUMNS = {"lambda", "step_size", "alpha", "kkt_stationarity", "kkt_stationarity_method", "penalty",
                "truncation"}


def problems():
    return {
        "quadratic": lambda: PROBLEMS["quadratic"](seed=1),
        "synthetic-nc": lambda: PROBLEMS["synthetic-nc"](dim=5, seed=1),
        "coreset": lambda: PROBLEMS["coreset"](seed=1),
        "hyper-cleaning": lambda: PROBLEMS["hyper-cleaning"](n_train=40, n_val=30, n_test=30, pca=5, seed=1,
                                                           retrain_steps=5, dtype=torch.float64),
    }


def fingerprint(problem_name, method):
    problem = problems()[problem_name]()
    r = bilevel.solve(problem, method, max_iter=MAX_ITER, log_every=LOG_EVERY, seed=SEED)
    history = {k: [float(v) for v in col] for k, col in r.history.items() if k != "time"}
    return {"x": r.x.reshape(-1).tolist(), "y": r.y.reshape(-1).tolist(), "history": history,
            "status": r.status.name}


CASES = [(p, m) for p in problems() for m in sorted(SOLVERS)]


def record():
    data = {f"{p}/{m}": fingerprint(p, m) for p, m in CASES}
    PATH.write_text(json.dumps(data, indent=0, sort_keys=True))
    print(f"wrote {len(data)} fingerprints to {PATH}")


def close(a, b, tol=1e-12):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("problem_name, method", CASES, ids=[f"{p}/{m}" for p, m in CASES])
def test_iterates_match_the_recorded_fingerprint(problem_name, method):
    expected = json.loads(PATH.read_text())[f"{problem_name}/{method}"]
    got = fingerprint(problem_name, method)
    assert got["status"] == expected["status"]
    for name in ("x", "y"):
        assert len(got[name]) == len(expected[name])
        bad = [i for i, (a, b) in enumerate(zip(got[name], expected[name])) if not close(a, b)]
        assert not bad, f"{name}[{bad[0]}]: {got[name][bad[0]]!r} != {expected[name][bad[0]]!r}"
    assert got["history"]["iter"] == expected["history"]["iter"]
    for column, values in expected["history"].items():
        assert column in got["history"], column
        rows = len(values) - (column in STEP_COLUMNS)      # the final row of a step's diagnostics is not compared
        for i in range(rows):
            assert close(got["history"][column][i], values[i]), (column, i, got["history"][column][i], values[i])


if __name__ == "__main__":
    sys.exit(record())
