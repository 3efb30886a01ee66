"""Runs are reproducible: a run continued from its checkpoint (also after a SIGKILL) ends on the
same iterate as one that ran through, a checkpoint of another run is refused, and repeated runs
are bit-identical for every solver."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bilevel import PROBLEMS, SOLVERS, solve

D = torch.float64


class Crash(Exception):
    pass


def _same_history(a, b):
    assert set(a) == set(b)
    for name in a:
        if name != "time":
            assert a[name] == b[name], name


@pytest.mark.parametrize("method", ["pgdqp", "sgf", "bome", "aid_bio"])
def test_checkpoint_continues_to_the_same_final_iterate(tmp_path, method):
    problem = PROBLEMS["quadratic"](seed=3)
    full = solve(problem, method, max_iter=60, log_every=7, seed=1)
    path = tmp_path / "run.pt"

    def crash_at_35(state, aux):
        if state.k == 35:
            raise Crash

    with pytest.raises(Crash):
        solve(problem, method, max_iter=60, log_every=7, seed=1, checkpoint=path, checkpoint_every=10,
              callback=crash_at_35)
    resumed = solve(problem, method, max_iter=60, log_every=7, seed=1, checkpoint=path, checkpoint_every=10)
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    _same_history(resumed.history, full.history)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    problem = PROBLEMS["quadratic"](seed=3)
    path = tmp_path / "run.pt"
    solve(problem, "pgdqp", max_iter=5, checkpoint=path)
    with pytest.raises(ValueError, match=r"Invalid checkpoint: .* was written by another run \(solver"):
        solve(problem, "sgf", max_iter=5, checkpoint=path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"Invalid checkpoint: .* cannot be read"):
        solve(problem, "pgdqp", max_iter=5, checkpoint=path)
    with pytest.raises(ValueError, match=r"Invalid checkpoint_every: 0"):
        solve(problem, "pgdqp", max_iter=5, checkpoint=path, checkpoint_every=0)


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_continues_from_its_checkpoint(tmp_path):
    ck, out_a, out_b = tmp_path / "ck.pt", tmp_path / "a", tmp_path / "b"
    base = [sys.executable, "-m", "bilevel", "run", "--problem", "synthetic-sc", "--method", "pgdqp",
            "--max-iter", "6000", "--log-every", "100", "--no-progress", "--kkt", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(base + ["--checkpoint", str(ck), "--checkpoint-every", "200", "--out", str(out_a)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ck.exists():
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.exists() and not (out_a / "runs").exists(), "killed before the end"
    subprocess.run(base + ["--checkpoint", str(ck), "--out", str(out_a)], env=env, check=True, capture_output=True)
    subprocess.run(base + ["--out", str(out_b)], env=env, check=True, capture_output=True)
    import pandas as pd
    (a,), (b,) = (list((out / "runs").glob("*/history.parquet")) for out in (out_a, out_b))
    a, b = pd.read_parquet(a), pd.read_parquet(b)
    for column in ("iter", "f", "h", "hypergradient_norm", "oracle_calls"):
        assert a[column].tolist() == b[column].tolist(), column


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_runs_are_bit_identical_for_every_solver(method):
    problem = PROBLEMS["coreset"](seed=2)
    a = solve(problem, method, max_iter=40, log_every=5, seed=4)
    b = solve(problem, method, max_iter=40, log_every=5, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    _same_history(a.history, b.history)
