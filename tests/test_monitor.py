"""Live monitoring: a line (or a TensorBoard step) per logged row, with the history's numbers."""
import json
import math
import sys

import pandas as pd
import pytest

import bilevel
from bilevel.cli.main import main
from bilevel.cli.store import read_results
from bilevel.run.monitor import Callbacks, JsonLines, TensorBoard

QUADRATIC = bilevel.PROBLEMS["quadratic"]


def lines_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_rows_match(lines, history):
    """The JSON lines are the history's rows: same columns, same numbers (NaN as null)."""
    assert len(lines) == len(history["iter"])
    for i, line in enumerate(lines):
        assert set(line) == set(history)
        for name, value in line.items():
            expected = history[name][i]
            assert value == expected if math.isfinite(expected) else value is None, (name, i)


def test_json_lines_hold_one_line_per_logged_row_with_the_history_values(tmp_path):
    path = tmp_path / "logs" / "run.jsonl"
    path.parent.mkdir()
    path.write_text('{"iter": 0.0, "f": 99}\n')                    # an earlier run's: replaced
    result = bilevel.solve(QUADRATIC(), "pgdqp", max_iter=25, log_every=10, callback=JsonLines(path))
    assert result.history["iter"] == [0, 10, 20, 25]               # the final row too
    assert_rows_match(lines_of(path), result.history)


def test_a_run_continued_from_a_checkpoint_continues_its_file(tmp_path):
    kwargs = dict(log_every=5, checkpoint=tmp_path / "run.pt", checkpoint_every=10)
    bilevel.solve(QUADRATIC(), "sgf", max_iter=12, callback=JsonLines(tmp_path / "run.jsonl"), **kwargs)
    assert [line["iter"] for line in lines_of(tmp_path / "run.jsonl")] == [0, 5, 10, 12]
    result = bilevel.solve(QUADRATIC(), "sgf", max_iter=30, callback=JsonLines(tmp_path / "run.jsonl"), **kwargs)
    assert_rows_match(lines_of(tmp_path / "run.jsonl"), result.history)    # 0, 5, 10 kept; 12 was the end
    assert result.history["iter"] == [0, 5, 10, 15, 20, 25, 30]


def test_values_that_are_not_finite_are_null_and_other_callbacks_still_stop_the_run(tmp_path):
    log = JsonLines(tmp_path / "rows.jsonl")
    log.on_row({"iter": 0.0, "f": math.nan, "h": math.inf})
    assert lines_of(tmp_path / "rows.jsonl") == [{"iter": 0.0, "f": None, "h": None}]
    seen = []
    result = bilevel.solve(QUADRATIC(), "pgdqp", max_iter=100, log_every=3,
                           callback=Callbacks(lambda state, aux: seen.append(1) or state.k >= 7,
                                              JsonLines(tmp_path / "stop.jsonl")))
    assert result.status is bilevel.Status.STOPPED and len(seen) == 8
    assert_rows_match(lines_of(tmp_path / "stop.jsonl"), result.history)


def test_a_batch_logs_each_members_rows(tmp_path):
    results = bilevel.solve_batch(lambda seed: bilevel.PROBLEMS["synthetic-sc"](dim=3, seed=seed), "pgdqp",
                                  seeds=[0, 1], max_iter=4, log_every=2, callback=JsonLines(tmp_path / "b.jsonl"))
    lines = lines_of(tmp_path / "b.jsonl")
    for member, result in enumerate(results):
        assert_rows_match([{k: v for k, v in line.items() if k != "member"} for line in lines
                           if line["member"] == member], result.history)


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"needs the tensorboard package: pip install tensorboard"):
        TensorBoard(tmp_path)


def test_tensorboard_steps_are_the_logged_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    with TensorBoard(tmp_path / "tb") as board:
        result = bilevel.solve(QUADRATIC(), "pgdqp", max_iter=25, log_every=10, callback=board)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(result.history) - {"iter"}
    for name in ("f", "h", "distance_to_solution", "oracle_calls"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [0, 10, 20, 25]
        assert [s.value for s in scalars] == pytest.approx(result.history[name], rel=1e-6)   # stored as float32


def test_log_dir_of_run_compare_and_sweep_has_one_file_per_run(tmp_path, capsys):
    quick = ["--problem", "quadratic", "--max-iter", "12", "--log-every", "5"]
    assert main(["run", *quick, "--method", "pgdqp", "--seed", "5", "--no-progress", "--out", str(tmp_path / "r"),
                 "--log-dir", str(tmp_path / "logs")]) == 0
    assert "live log: " + str(tmp_path / "logs") in capsys.readouterr().err
    assert main(["compare", *quick, "--methods", "pgdqp,sgf", "--seeds", "2", "--out", str(tmp_path / "c"),
                 "--log-dir", str(tmp_path / "logs")]) == 0
    note = capsys.readouterr().err
    assert f"live log: {tmp_path / 'logs' / '<run_id>.jsonl'} and TensorBoard events in " in note or (
        "(no TensorBoard events: pip install tensorboard)" in note)
    (tmp_path / "c.yaml").write_text("max_iter: 12\nlog_every: 5\nseeds: 2\nproblems: {quadratic: {}}\n"
                                     "methods: {bome: {}}\n")
    assert main(["sweep", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "s"), "--no-progress",
                 "--log-dir", str(tmp_path / "logs")]) == 0
    frame = pd.concat([read_results(tmp_path / out) for out in ("r", "c", "s")])
    assert len(set(frame["run_id"])) == 1 + 4 + 2
    assert sorted(p.stem for p in (tmp_path / "logs").glob("*.jsonl")) == sorted(set(frame["run_id"]))
    for run_id, rows in frame.groupby("run_id"):
        assert [line["iter"] for line in lines_of(tmp_path / "logs" / f"{run_id}.jsonl")] == list(rows["iter"])
        assert [line["f"] for line in lines_of(tmp_path / "logs" / f"{run_id}.jsonl")] == list(rows["f"])


def test_log_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["run", "--problem", "quadratic", "--method", "pgdqp", "--log-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (f"bilevel: error: Invalid --log-dir: {str(tmp_path / 'file')!r} is a file "
                                       f"(expected a directory for the live logs)\n")
