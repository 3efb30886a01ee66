"""Reliability: checkpoints continue bit-identically, runs are deterministic, and the QP step
of eq. 7-8 satisfies its optimality conditions on random and degenerate inputs (hypothesis)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel import PROBLEMS, SOLVERS, solve
from bilevel.solvers.pgdqp import qp_step

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


# ----- the QP of eq. 7 ------------------------------------------------------------------------
def bisection_qp(fx, fy, hx, hy, alpha_rho, y_scale):
    """An independent solution of the QP: the dual of one linear constraint is a 1-d concave
    problem; its maximiser lambda >= 0 is where <grad h, d(lambda)> + alpha rho crosses zero,
    with d(lambda) = -D (grad f + lambda grad h), found by bisection."""
    def slack(lam):
        dx, dy = -(fx + lam * hx), -y_scale * (fy + lam * hy)
        return float(hx @ dx + hy @ dy + alpha_rho)

    if slack(0.0) <= 0:
        return 0.0
    hi = 1.0
    while slack(hi) > 0:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slack(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=64), min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(fx=vectors, fy=vectors, hx=vectors, hy=vectors, alpha_rho=st.floats(0, 1e3),
       y_scale=st.sampled_from([1.0, 0.01, 30.0]), scale=st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]),
       case=st.sampled_from(["random", "zero_h", "parallel", "opposite"]))
def test_qp_step_is_the_qp_solution(fx, fy, hx, hy, alpha_rho, y_scale, scale, case):
    fx, fy, hx, hy = (torch.tensor(v, dtype=D) for v in (fx, fy, hx, hy))
    if case == "zero_h":
        hx, hy, alpha_rho = torch.zeros(3, dtype=D), torch.zeros(3, dtype=D), 0.0  # rho = 0 where grad h = 0
    elif case in ("parallel", "opposite"):
        c = 2.5 if case == "parallel" else -2.5
        fx, fy = c * hx, c * hy
    hx, hy, alpha_rho = hx * scale, hy * scale, alpha_rho * scale * scale
    dx, dy, lam = qp_step((fx, fy), (hx, hy), torch.tensor(alpha_rho, dtype=D), y_scale)
    lam = float(lam)
    assert lam >= 0
    hdh = float(hx @ hx + y_scale * (hy @ hy))
    if hdh == 0:  # grad h = 0: no direction can meet a positive margin; eq. 8 takes lambda = 0
        assert lam == 0.0
        torch.testing.assert_close(dx, -fx)
        torch.testing.assert_close(dy, -y_scale * fy)
        return
    size = (float(hx.norm() + hy.norm()) * float(fx.norm() + fy.norm() + 1) * max(y_scale, 1) + alpha_rho) * 1e-9
    constraint = float(hx @ dx + hy @ dy) + alpha_rho
    assert constraint <= size                                      # feasible
    assert abs(lam * constraint) <= size * (lam + 1)               # complementary slackness
    torch.testing.assert_close(dx, -(fx + lam * hx))                # stationarity of the Lagrangian
    torch.testing.assert_close(dy, -y_scale * (fy + lam * hy))
    if hdh > 0 and case == "random" and scale == 1.0:
        expected = bisection_qp(fx, fy, hx, hy, alpha_rho, y_scale)
        assert lam == pytest.approx(expected, rel=1e-7, abs=1e-9)
