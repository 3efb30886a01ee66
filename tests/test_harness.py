"""The sweep harness: config checks, grid expansion, executors, crash-safe resume, plots and tables."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bilevel.cli.config import ConfigError, check_config, expand, load_config
from bilevel.cli.main import main
from bilevel.cli.store import read_manifest, read_results
from bilevel.cli.sweep import run_sweep

BASE = {"max_iter": 30, "log_every": 10, "seeds": 2, "problems": {"coreset": {}},
        "methods": {"pgdqp": {"schedule": ["constant", "diminishing"]}, "sgf": {}}}


def write(tmp_path, config, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False) if isinstance(config, dict) else config)
    return path


BAD = [
    ({**BASE, "max_iters": 3}, r"unknown key 'max_iters'.*did you mean 'max_iter'"),
    ({**BASE, "max_iter": "10"}, r"max_iter .*'10' \(expected int\)"),
    ({**BASE, "max_iter": 0}, r"max_iter .*0 \(expected >= 1\)"),
    ({**BASE, "seeds": [0, "a"]}, r"seeds .*expected a list of integers"),
    ({k: v for k, v in BASE.items() if k != "methods"}, r"missing key 'methods'"),
    ({**BASE, "methods": {"pgdq": {}}}, r"methods.pgdq .*'pgdq' is not a solver; did you mean 'pgdqp'"),
    ({**BASE, "methods": {"pgdqp": {"stepsize": 1}}}, r"methods.pgdqp.stepsize .*did you mean 'step_size'"),
    ({**BASE, "methods": {"pgdqp": {"step_size": [0.1, -1.0]}}}, r"Invalid step_size: -1.0"),
    ({**BASE, "problems": {"corset": {}}}, r"problems.corset .*did you mean 'coreset'"),
    ({**BASE, "problems": {"coreset": {"n_point": 3}}}, r"problems.coreset.n_point .*did you mean 'n_points'"),
    ({**BASE, "plot": {"metric": ["h"]}}, r"plot.metric .*did you mean 'metrics'"),
    ("- just\n- a list\n", r"expected a mapping"),
]


@pytest.mark.parametrize("config, message", BAD)
def test_bad_configs_say_where_and_suggest(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, config))


def test_error_names_the_line(tmp_path):
    text = "max_iter: 10\nproblems:\n  coreset: {}\nmethods:\n  pgdqp:\n    stepsize: 1\n"
    with pytest.raises(ConfigError, match=r"c.yaml: methods.pgdqp.stepsize \(line 6\)"):
        load_config(write(tmp_path, text))


def test_grid_expansion_and_stable_ids():
    runs = expand(check_config(BASE))
    assert len(runs) == (2 + 1) * 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in expand(check_config(BASE))] == [r.run_id for r in runs]
    changed = expand(check_config({**BASE, "max_iter": 31}))
    assert not {r.run_id for r in changed} & {r.run_id for r in runs}


@pytest.mark.slow
def test_local_and_dask_sweeps_give_the_same_table(tmp_path):
    config = check_config(BASE)
    run_sweep(config, tmp_path / "local", progress=False)
    run_sweep(config, tmp_path / "dask", dask_workers=2, progress=False)
    cols = ["run_id", "iter", "f", "h", "upper_objective", "method", "seed", "config"]
    a = read_results(tmp_path / "local")[cols].sort_values(["run_id", "iter"]).reset_index(drop=True)
    b = read_results(tmp_path / "dask")[cols].sort_values(["run_id", "iter"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 6 * 4


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = check_config({**BASE, "methods": {"pgdqp": {"schedule": "constant", "step_size": 1e30}},
                           "problems": {"synthetic-sc": {"dim": [3, 0]}}, "seeds": 1})
    records = run_sweep(config, tmp_path, progress=False)
    statuses = sorted(r["status"] for r in records)
    assert statuses == ["failed", "finished"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "Invalid dim: 0" in failed["error"]
    assert len(read_manifest(tmp_path)) == 2


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    config = {**BASE, "max_iter": 400, "log_every": 50, "seeds": 3,
              "methods": {"pgdqp": {"schedule": ["constant", "diminishing"]}, "sgf": {}, "bome": {}}}
    path = write(tmp_path, config)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bilevel", "sweep", str(path), "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_manifest(out)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.parent.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "runs").glob("*/summary.json")}
    assert 2 <= len(before) < 12, "the sweep should have been killed part way"
    assert subprocess.run(cmd[:-1] + ["--resume", "--no-progress"], env=env, capture_output=True).returncode == 0
    after = {p.parent.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "runs").glob("*/summary.json")}
    assert len(after) == 12
    assert all(after[name] == stamp for name, stamp in before.items())       # finished files untouched
    finished = [r["run_id"] for r in read_manifest(out) if r["status"] == "finished"]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 12  # each run exactly once
    frame = read_results(out)
    assert frame.groupby("run_id").size().eq(9).all()


def test_plot_and_table_commands(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "plot": {"metrics": ["upper_objective"]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["table", str(tmp_path / "o"), "--metrics", "upper_objective"]) == 0
    table = capsys.readouterr().out
    frame = read_results(tmp_path / "o")
    last = frame.sort_values("iter").groupby("run_id").tail(1)
    sgf = last[last["method"] == "sgf"]["upper_objective"]
    # the runs column counts the runs whose summary says the verification failed
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "o" / "runs").glob("*/summary.json")]
    failed = sum(not s["final"]["verified"] for s in summaries if s["method"] == "sgf")
    runs = "2" + (f" ({failed} not verified)" if failed else "")
    assert f"| coreset | sgf | {{}} | {runs} | {sgf.mean():.4g} ± {sgf.std():.2g} |" in table
    assert main(["plot", str(tmp_path / "o"), "--metric", "upper_objective", "--x", "time"]) == 0
    png = tmp_path / "o" / "plot_coreset_upper_objective_time.png"
    assert png.stat().st_size > 10_000
    # the best configuration of pgdqp by final upper objective is the one plotted
    from bilevel.cli.tables import select_best
    chosen = select_best(frame, "upper_objective")
    pg = last[last["method"] == "pgdqp"].groupby("config")["upper_objective"].median()
    assert set(chosen[chosen["method"] == "pgdqp"]["config"]) == {pg.idxmin()}
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2   # no --resume
    assert "already holds" in capsys.readouterr().err


# ----- helper harness: scheduler address, YAML numbers, torn manifest, dead workers, paper configs ----
SMALL = {**BASE, "seeds": 1}
COLUMNS = ["run_id", "iter", "f", "h", "upper_objective", "method", "seed", "config"]


def _table(out):
    return read_results(out)[COLUMNS].sort_values(["run_id", "iter"]).reset_index(drop=True)


def test_sweep_on_a_running_scheduler_gives_the_local_table(tmp_path):
    from dask.distributed import LocalCluster
    config = check_config(SMALL)
    run_sweep(config, tmp_path / "local", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:                # a scheduler listening on loopback TCP
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        records = run_sweep(config, tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
    assert sorted(r["status"] for r in records) == ["finished"] * 3
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), _table(tmp_path / "dask"))


def test_yaml_exponent_numbers_are_floats_with_the_ids_of_their_decimal_form(tmp_path):
    text = "max_iter: 10\nproblems:\n  coreset: {}\nmethods:\n  sgf: {step_size: [1e-3, 2.5E-2], alpha: 1e+0}\n"
    runs = expand(load_config(write(tmp_path, text)))
    assert [dict(r.options) for r in runs] == [{"alpha": 1.0, "step_size": 0.001}, {"alpha": 1.0, "step_size": 0.025}]
    decimal = "max_iter: 10\nproblems:\n  coreset: {}\nmethods:\n  sgf: {step_size: [0.001, 0.025], alpha: 1.0}\n"
    assert [r.run_id for r in runs] == [r.run_id for r in expand(load_config(write(tmp_path, decimal, "d.yaml")))]


def test_a_torn_manifest_line_does_not_swallow_the_next_record(tmp_path):
    config = check_config(SMALL)
    run_sweep(config, tmp_path, progress=False)
    manifest = tmp_path / "manifest.jsonl"
    text = manifest.read_bytes()
    manifest.write_bytes(text[:-25])                       # killed while writing the last line
    assert len(read_manifest(tmp_path)) == 2
    assert run_sweep(config, tmp_path, resume=True, progress=False) == []   # nothing to run again
    finished = [r["run_id"] for r in read_manifest(tmp_path) if r["status"] == "finished"]
    assert sorted(finished) == sorted(s.run_id for s in expand(config))     # each run once, none lost


def test_a_dead_worker_fails_its_run_and_the_sweep_goes_on(tmp_path):
    from _harness_crash import die_on_seed_zero

    from bilevel.cli.sweep import execute
    specs = expand(check_config({**SMALL, "seeds": [0, 1], "methods": {"sgf": {}}}))
    counts = {"running": 0}
    records = list(execute(specs, str(tmp_path), 2, None, None, counts, run=die_on_seed_zero))
    assert sorted(r["run_id"] for r in records) == sorted(s.run_id for s in specs)
    dead = next(r for r in records if r["seed"] == 0)
    assert dead["status"] == "failed" and "BrokenProcessPool" in dead["error"] and "--resume" in dead["error"]
    assert counts["running"] == 0


def test_local_workers_share_the_cores_instead_of_oversubscribing(tmp_path, monkeypatch):
    from _harness_crash import report_threads

    from bilevel.cli import sweep
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert [sweep.threads_per_worker(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    monkeypatch.undo()
    specs = expand(check_config({**SMALL, "seeds": [0, 1], "methods": {"sgf": {}}}))
    records = list(sweep.execute(specs, str(tmp_path), 2, None, None, {"running": 0}, run=report_threads))
    assert [r["threads"] for r in records] == [sweep.threads_per_worker(2)] * 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_paper_configs_are_valid_and_expand(path):
    config = load_config(path)
    runs = expand(config)
    assert runs and len({r.run_id for r in runs}) == len(runs)
    plot = config.get("plot") or {}
    assert plot.get("x", "iter") in ("iter", "time", "oracle_calls")


def test_fig5_config_runs_through_sweep_and_plot(tmp_path, capsys):
    text = (Path(__file__).parent.parent / "configs" / "fig5_coreset.yaml").read_text()
    config = yaml.safe_load(text)
    small = write(tmp_path, {**config, "max_iter": 20, "log_every": 10, "seeds": 2})
    assert main(["sweep", str(small), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for method in config["methods"]:
        assert f"| coreset | {method} |" in out
    metric = config["plot"]["metrics"][0]
    assert main(["plot", str(tmp_path / "o"), "--metric", metric, "--x", "oracle_calls"]) == 0
    assert (tmp_path / "o" / f"plot_coreset_{metric}_oracle_calls.png").stat().st_size > 10_000


def test_table_counts_diverged_runs(tmp_path, capsys):
    config = {**BASE, "seeds": 2, "problems": {"synthetic-sc": {"dim": 3}},
              "methods": {"pgdqp": {"schedule": "constant", "step_size": [1e30, 1e-3]}, "sgf": {"step_size": 1e-3}}}
    run_sweep(check_config(config), tmp_path, progress=False)
    statuses = read_results(tmp_path).groupby(["method", "config"])["status"].unique()
    assert list(statuses[("pgdqp", '{"schedule": "constant", "step_size": 1e+30}')]) == ["DIVERGED"]
    # a step of 1e-3 with alpha = 1 blows up here within 10 iterations: stopped as RUNAWAY, never COMPLETED
    assert list(statuses[("pgdqp", '{"schedule": "constant", "step_size": 0.001}')]) == ["RUNAWAY"]
    assert list(statuses[("sgf", '{"step_size": 0.001}')]) == ["COMPLETED"]
    assert main(["table", str(tmp_path), "--metrics", "h"]) == 0
    table = capsys.readouterr().out
    assert '| synthetic-sc {"dim": 3} | pgdqp | {"schedule": "constant", "step_size": 1e+30} | 2 (2 diverged) |' in table
    assert '| synthetic-sc {"dim": 3} | pgdqp | {"schedule": "constant", "step_size": 0.001} | 2 (2 ran away) |' in table
    assert '| synthetic-sc {"dim": 3} | sgf | {"step_size": 0.001} | 2 (2 not verified) |' in table


def test_table_wall_time_is_per_problem(tmp_path, capsys):
    config = {**SMALL, "problems": {"coreset": {}, "quadratic": {"dim_x": [2, 3]}}, "methods": {"sgf": {}}}
    run_sweep(check_config(config), tmp_path, progress=False)
    assert main(["table", str(tmp_path), "--metrics", "h"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "| sgf |" in line]
    walls = {}
    for r in read_manifest(tmp_path):
        args = json.dumps(r["problem_args"], sort_keys=True)
        walls[r["problem"] + ("" if args == "{}" else f" {args}")] = r["wall_s"]
    assert len(lines) == len(walls) == 3
    for line in lines:
        problem, wall = line.split(" | ")[0].lstrip("| "), line.split(" | ")[-1].rstrip(" |")
        assert wall == f"{walls[problem]:.4g}"


def test_summary_counts_unverified_runs_and_shows_a_users_metric_at_the_verified_answer():
    import pandas as pd

    from bilevel.cli.tables import default_metrics, summary_table
    nan = float("nan")
    frame = pd.DataFrame({
        "run_id": ["a", "a", "b", "b", "c", "c"], "iter": [0, 10] * 3, "problem": "mine", "problem_args": "{}",
        "method": ["m1", "m1", "m1", "m1", "m2", "m2"], "config": "{}",
        "status": ["COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED", "DIVERGED", "DIVERGED"],
        "f": [1.0, 0.5, 1.0, 0.7, 1.0, 0.9], "h": [1.0, 0.1, 1.0, 0.2, 1.0, 0.3],
        "acc": [0.1, 0.9, 0.1, 0.8, 0.1, 0.7], "verified_acc": [nan, 0.6, nan, 0.7, nan, 0.5],
        "verified_f": [nan, 0.8, nan, 0.75, nan, 1.2], "verified": [nan, 0.0, nan, 1.0, nan, 0.0]})
    assert default_metrics(frame) == ["verified_acc", "verified_f", "f", "h"]
    rows = {r["method"]: r for r in summary_table(frame, ["verified_acc"], by_config=False)}
    assert rows["m1"]["runs"] == "2 (1 not verified)"
    assert rows["m2"]["runs"] == "1 (1 diverged)"   # a diverged run is not counted twice
    assert rows["m1"]["verified_acc"] == f"{0.65:.4g} ± {pd.Series([0.6, 0.7]).std():.2g}"


@pytest.mark.parametrize("method, max_iter", [("bome", 200), ("aid_bio", 200), ("vpbgd", 200), ("galet", 200),
                                             *(pytest.param(m, 500, marks=pytest.mark.slow)
                                               for m in ("iaptt_gm", "meha", "f2ba", "hjfbio"))])
def test_cli_runs_each_baseline_on_coreset(method, max_iter, tmp_path, capsys):
    assert main(["run", "--problem", "coreset", "--method", method, "--max-iter", str(max_iter),
                 "--no-progress", "--out", str(tmp_path)]) == 0
    assert f"| {method} |" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("*/history.parquet"))) == 1


def test_a_config_reports_every_mistake_at_once(tmp_path):
    config = {**BASE, "max_iters": 3, "seeds": 0, "upper_tol": -1.0,
              "methods": {"pgdq": {}, "sgf": {"stepsize": 1}, "pgdqp": {"step_size": -1.0}}, "plot": {"x": "wall"}}
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, config))
    lines = str(raised.value).splitlines()
    assert lines[0] == f"Invalid config: {tmp_path / 'c.yaml'}: 7 mistakes:"
    expected = ["unknown key 'max_iters'; did you mean 'max_iter'?", "seeds (line", ": 0 (expected >= 1)",
                "upper_tol (line", ": -1.0 (expected a finite number > 0)", "'pgdq' is not a solver",
                "'stepsize' is not a hyperparameter of sgf", "methods.pgdqp (line", "Invalid step_size: -1.0",
                "plot.x (line", "'wall' (expected one of"]
    assert len(lines) == 8 and all("(line " in line for line in lines[1:])
    for part in expected:
        assert sum(part in line for line in lines[1:]) == 1, part
