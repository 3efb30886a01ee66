"""The command line: list, run and compare write what they say, and errors are one clear line."""
import json

import pandas as pd
import pytest

from bilevel.cli import tables
from bilevel.cli.main import main, parse_value
from bilevel.cli.store import read_answer, read_results


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("1e-3") == 1e-3 and parse_value("10") == 10
    assert parse_value("true") is True and parse_value("none") is None and parse_value("grad") == "grad"


def test_list_names_solvers_and_problems(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("pgdqp", "sgf", "synthetic-sc", "synthetic-nc", "coreset"):
        assert name in out


def test_run_writes_history_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--problem", "coreset", "--method", "pgdqp", "--max-iter", "300", "--log-every", "50",
                 "--set", "schedule=constant", "--set", "step_size=0.05", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pgdqp |" in printed and "COMPLETED" in printed
    (run,) = (out / "runs").iterdir()                   # the layout of compare and sweep: one run
    history = pd.read_parquet(run / "history.parquet")
    assert list(history["iter"]) == [0, 50, 100, 150, 200, 250, 300]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["options"] == {"schedule": "constant", "step_size": 0.05}
    assert summary["result_status"] == "COMPLETED" and summary["provenance"]["torch_version"]
    assert summary["final"]["upper_objective"] == pytest.approx(history["upper_objective"].iloc[-1])
    # table and plot read it as they read a sweep
    assert main(["table", str(out), "--metrics", "upper_objective"]) == 0
    assert "| coreset | pgdqp |" in capsys.readouterr().out
    assert main(["plot", str(out), "--metric", "upper_objective"]) == 0
    assert (out / "plot_coreset_upper_objective_iter.png").stat().st_size > 10_000


def test_compare_writes_tidy_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--problem", "coreset", "--methods", "pgdqp,sgf", "--seeds", "2",
                 "--max-iter", "100", "--log-every", "20", "--out", str(out), "--x", "oracle_calls"])
    assert code == 0
    frame = read_results(out)
    assert set(frame["method"]) == {"pgdqp", "sgf"} and set(frame["seed"]) == {0, 1}
    assert len(frame) == 2 * 2 * 6                       # methods x seeds x logged rows
    (png,) = out.glob("compare_*_oracle_calls.png")
    assert png.stat().st_size > 10_000
    assert "| sgf |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--problem", "corset", "--method", "pgdqp"], "Invalid --problem: 'corset'.*did you mean 'coreset'"),
    (["run", "--problem", "coreset", "--method", "pgdqp", "--set", "step_size"], "Invalid --set: 'step_size'"),
    (["run", "--problem", "coreset", "--method", "pgdqp", "--set", "stepsize=1"], "Invalid option for pgdqp: 'stepsize'"),
    (["run", "--problem", "coreset", "--method", "pgdqp", "--problem-arg", "size=3"], "Invalid --problem-arg for coreset: 'size'"),
    (["compare", "--problem", "coreset", "--methods", "pgdqp,bomee", "--out", "x"], "Invalid --methods entry: 'bomee'"),
    (["compare", "--problem", "coreset", "--methods", "pgdqp", "--set", "sgf.alpha=1", "--out", "x"], "Invalid --set: 'sgf.alpha'"),
])
def test_errors_are_one_line_with_exit_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bilevel: error: ")
    import re
    assert re.search(message, err), err


def test_a_run_directory_reads_back_and_plots_without_metric(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--problem", "quadratic", "--method", "sgf", "--max-iter", "4", "--log-every", "2",
                 "--out", str(out), "--no-progress"]) == 0
    (run,) = (out / "runs").iterdir()
    answer, whole = read_answer(run), read_answer(out)
    assert answer["status"] == whole["status"] == "COMPLETED" and answer["x"].equal(whole["x"])
    history = pd.read_parquet(run / "history.parquet")
    assert history["iter"].dtype == "int64" and history["iter"].tolist() == [0, 2, 4]
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    assert tables.default_metrics(read_results(out)) == ["solved", "x_error", "verified_distance_to_solution",
                                                          "verified_f"]
    (png,) = out.glob("plot_*.png")
    assert str(png) in capsys.readouterr().out and "solved-x_error-verified_distance_to_solution-verified_f" in png.name
