"""Data-parallel runs (gloo on CPU): sharded oracles and every solver against one process."""
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bilevel
from bilevel.core.data import check_shard, shard_range
from bilevel.core.oracles import Autograd, Oracle

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as worker  # noqa: E402
from conftest import roundoff  # noqa: E402

SRC = str(Path(bilevel.__file__).resolve().parents[1])
WORKER = str(Path(__file__).parent / "_distributed_worker.py")
# several processes (torchrun, gloo process groups): the full suite only
pytestmark = [pytest.mark.distributed, pytest.mark.slow]
MAX_ITER = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *args: str) -> list[subprocess.Popen]:
    """`world` ranks of the worker with torchrun's environment on a loopback rendezvous."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1",
                   PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, WORKER, *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def finish(procs, timeout=120):
    out = []
    for p in procs:
        try:
            out.append(p.communicate(timeout=timeout) + (p.returncode,))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung")
    return out


@pytest.fixture(scope="module", params=[2, pytest.param(3, marks=pytest.mark.slow)])
def ranks(request, tmp_path_factory):
    """The saved outputs of every rank of one data-parallel run of the worker."""
    world = request.param
    out_dir = tmp_path_factory.mktemp(f"world{world}")
    results = finish(launch(world, "compare", str(out_dir), str(MAX_ITER)))
    for stdout, stderr, code in results:
        assert code == 0, stderr[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def single():
    problem = bilevel.PROBLEMS["toy-cleaning"](**worker.PROBLEM_ARGS)
    oracles, counts = worker.oracle_outputs(Oracle(Autograd(problem.f, problem.g)), problem)
    return {"oracles": oracles, "counts": counts, "runs": worker.runs(problem, MAX_ITER, False),
            "hyper_cleaning": worker.hyper_cleaning_runs(MAX_ITER), "minibatch": worker.minibatch_runs(MAX_ITER)}


def test_every_rank_holds_the_same_bits(ranks):
    first = ranks[0]
    for other in ranks[1:]:
        for name, values in first["oracles"].items():
            for a, b in zip(values, other["oracles"][name]):
                assert torch.equal(a, b), name
        for name, (x, y, _, _) in [*first["runs"].items(), *first["hyper_cleaning"].items()]:
            runs = other["runs"] if name in other["runs"] else other["hyper_cleaning"]
            assert torch.equal(x, runs[name][0]) and torch.equal(y, runs[name][1]), name


def test_sharded_oracle_equals_single_process_oracle(ranks, single):
    for name, values in single["oracles"].items():
        for a, b in zip(ranks[0]["oracles"][name], values):
            torch.testing.assert_close(a, b, rtol=roundoff(operations=100), atol=roundoff(operations=1), msg=name)
    assert ranks[0]["counts"] == single["counts"]


@pytest.mark.parametrize("runs", ["runs", "hyper_cleaning"])
def test_data_parallel_iterates_equal_single_process_iterates(ranks, single, runs):
    """Every solver on toy-cleaning, and pgdqp on hyper-cleaning (linear and MLP)."""
    assert set(single[runs]) == set(ranks[0][runs]) and single[runs]
    for name, (x, y, history, status) in single[runs].items():
        dx, dy, dhistory, dstatus = ranks[0][runs][name]
        assert dstatus == status, name
        # summing over ranks changes the order of every sum: round-off through MAX_ITER iterations of
        # up to 100 dependent products; galet solves the normal equations H^2 w = -H grad_y f by
        # conjugate gradient, which squares the condition number (taken as 1e5 here), and so does
        # pgdqp (J P J^T u = -gamma J P grad f, and H v = grad_y g) on the MLP of hyper-cleaning, whose
        # grad_yy g is ill-conditioned (measured: y0 moved by 2e-16 moves y by 2e-11 in 12 iterations)
        normal_equations = name == "galet" or runs == "hyper_cleaning"
        rtol = roundoff(operations=MAX_ITER * (200 if normal_equations else 100),
                        amplification=1e5 if normal_equations else 1.0)
        atol = 1e-2 * rtol
        torch.testing.assert_close(dx, x, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(dy, y, rtol=rtol, atol=atol, msg=name)
        assert set(dhistory) == set(history)
        # kkt_stationarity is each method's own residual (the least-squares one for bome and vpbgd,
        # which define no multiplier: compared on toy-cleaning, whose hyper-cleaning runs are pgdqp's)
        for column in ("f", "g", "h", "kkt_stationarity"):
            torch.testing.assert_close(torch.tensor(dhistory[column]), torch.tensor(history[column]),
                                       rtol=rtol, atol=atol, equal_nan=True,
                                       msg=f"{name} {column}")
        # the counts are equal, except where conjugate gradient stops on a residual threshold (galet):
        # the residual, summed in another order, may cross it one iteration earlier or later
        slack = 0.02 if name == "galet" else 0.0
        torch.testing.assert_close(torch.tensor(dhistory["oracle_calls"]), torch.tensor(history["oracle_calls"]),
                                   rtol=slack, atol=0, msg=lambda m, name=name: f"{name} oracle_calls: {m}")
        assert bool(y.abs().max() > 0.01), name  # the run moved


def test_minibatch_runs_over_ranks_equal_the_single_process_run_on_all_the_data(ranks, single):
    """Each rank holds a block of biased-ridge's samples and evaluates its part of the batch the
    ranks draw together: the run is the single-process run on all the data, batch for batch."""
    assert set(single["minibatch"]) == set(worker.MINIBATCH_METHODS)
    rtol = roundoff(operations=MAX_ITER * 100)
    for name, (x, y, history, status, verified) in single["minibatch"].items():
        for rank in ranks:
            dx, dy, dhistory, dstatus, dverified = rank["minibatch"][name]
            assert dstatus == status, name
            torch.testing.assert_close(dx, x, rtol=rtol, atol=1e-2 * rtol, msg=name)
            torch.testing.assert_close(dy, y, rtol=rtol, atol=1e-2 * rtol, msg=name)
            for column in ("f", "g", "oracle_calls"):
                torch.testing.assert_close(torch.tensor(dhistory[column]), torch.tensor(history[column]),
                                           rtol=rtol, atol=1e-2 * rtol, equal_nan=True, msg=f"{name} {column}")
            # the verification re-solves y to a residual eps^(3/4): its value agrees to about that
            assert dverified == pytest.approx(verified, rel=1e-8), name
        assert float((x - worker.sharded_biased_ridge().x0).abs().max()) > 1e-3, name  # the run moved


def test_shards_weight_their_part_of_a_batch():
    from bilevel.core.data import Shard
    shard = Shard(offset=3, size=4, total=10)
    local, weight = shard.part(torch.tensor([0, 3, 6, 7, 9, 4]))
    assert local.tolist() == [0, 3, 1] and weight == pytest.approx(3 / 6)
    local, weight = shard.part(torch.tensor([0, 1, 9]))
    assert local.numel() == 0 and weight == 0.0


def test_hvp_inner_grad_y_g_matches_finite_differences():
    problem = bilevel.PROBLEMS["toy-cleaning"](**worker.PROBLEM_ARGS)
    oracle = Oracle(Autograd(problem.f, problem.g))
    x, y, vx, vy = worker.point(problem, seed=4)
    w = torch.randn(y.shape, dtype=y.dtype)
    hx, hy = oracle.hvp_inner_grad_y_g(x, y, w, vx, vy)
    eps = 1e-5
    plus = oracle.vjp_grad_y_g(x + eps * vx, y + eps * vy, w)
    minus = oracle.vjp_grad_y_g(x - eps * vx, y - eps * vy, w)
    torch.testing.assert_close(hx, (plus[0] - minus[0]) / (2 * eps), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(hy, (plus[1] - minus[1]) / (2 * eps), rtol=1e-6, atol=1e-9)


def test_shards_partition_the_data():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            blocks = [shard_range(n, r, world) for r in range(world)]
            assert [i for b in blocks for i in range(n)[b]] == list(range(n))
            sizes = [len(range(n)[b]) for b in blocks]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("rank, world, message", [
    (0, 0, r"Invalid world_size: 0 \(expected an integer >= 1\)"),
    (2, 2, r"Invalid rank: 2 \(expected an integer in \[0, 1\]\)"),
    (-1, 3, r"Invalid rank: -1"),
    (0, 1.5, "Invalid world_size: 1.5"),
])
def test_bad_shards_are_rejected(rank, world, message):
    with pytest.raises(ValueError, match=message):
        check_shard(rank, world)


def test_distributed_without_process_group_is_a_clear_error():
    problem = bilevel.PROBLEMS["quadratic"]()
    with pytest.raises(ValueError, match="Invalid distributed: True without a torch.distributed process group"):
        bilevel.solve(problem, "pgdqp", max_iter=1, distributed=True)


def test_solver_without_distributed_support_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(bilevel.solvers.SGF, "supports_distributed", False)
    problem = bilevel.PROBLEMS["quadratic"]()
    with pytest.raises(ValueError, match="with solver 'sgf' \\(it does not run data-parallel"):
        bilevel.solve(problem, "sgf", max_iter=1, distributed=True)


def test_cli_distributed_needs_torchrun_environment(monkeypatch, capsys):
    from bilevel.cli import main as cli
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["run", "--problem", "toy-cleaning", "--method", "pgdqp", "--distributed"]) == 2
    assert "launch with `torchrun --nproc-per-node N -m bilevel run" in capsys.readouterr().err
    assert cli.main(["run", "--problem", "quadratic", "--method", "pgdqp", "--distributed"]) == 2
    assert "'quadratic' cannot be sharded" in capsys.readouterr().err


def test_torchrun_cli_matches_single_process(tmp_path):
    common = ["-m", "bilevel", "run", "--problem", "toy-cleaning", "--method", "pgdqp", "--max-iter", "20",
              "--log-every", "5", "--no-progress", "--problem-arg", "n_train=41", "--problem-arg", "n_val=19"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def torchrun():
        shutil.rmtree(tmp_path / "dist", ignore_errors=True)
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *common, "--distributed", "--out", str(tmp_path / "dist")]
        return subprocess.run(run, env=env, capture_output=True, text=True, timeout=180)
    done = torchrun()
    if done.returncode != 0 and "terminate called without an active exception" in done.stderr:
        # Seen twice in about 30 runs of this test, only when it ran right after the rest of the
        # suite: rank 1 aborted by std::terminate (a native thread left joinable) as the gloo process
        # group was torn down. Once more, so that the answer is still compared; a second abort
        # fails (faulthandler then shows where).
        done = torchrun()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("status: completed") == 1  # only rank 0 prints
    done = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    (dist_summary,), (one_summary,) = ((tmp_path / d / "runs").glob("*/summary.json") for d in ("dist", "one"))
    dist_final = json.loads(dist_summary.read_text())["final"]
    one_final = json.loads(one_summary.read_text())["final"]
    assert json.loads(dist_summary.read_text())["world_size"] == 2
    for column in ("f", "g", "h", "kkt_stationarity", "test_accuracy", "oracle_calls"):
        assert dist_final[column] == pytest.approx(one_final[column], rel=1e-9, abs=1e-12), column


@pytest.mark.parametrize("mode", ["die", "stop"])
def test_a_failed_or_stopped_rank_ends_the_run_on_the_others(mode):
    procs = launch(2, mode)
    try:
        stdout, stderr, code = finish(procs[:1], timeout=90)[0]  # rank 0 must end by itself
    finally:
        if procs[1].poll() is None:
            os.kill(procs[1].pid, signal.SIGKILL)  # the stopped rank 1
        procs[1].communicate()
    assert code == 1, stderr[-3000:]
    assert "bilevel: error: rank 0 of 2: all_reduce failed: another rank stopped or failed" in stderr
    assert procs[1].returncode == -signal.SIGKILL
