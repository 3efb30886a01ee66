"""The problem registry: each entry declares its metrics (and which way is better), tags and, where
the answer is known, a scoring hook; suite problems are registered under their suite names, and
the harness runs, scores and tabulates them like any other problem."""
import inspect
import json
from types import SimpleNamespace

import pytest
import torch

import bilevel
from bilevel import PROBLEMS
from bilevel.cli.main import main
from bilevel.cli.store import read_results
from bilevel.cli.tables import default_metrics, higher_is_better
from bilevel.problems import ProblemSpec, metric_directions

# the registered problems that build in well under a second (no data set to load)
CHEAP = ["synthetic-sc", "synthetic-nc", "coreset", "quadratic", "toy-cleaning", "biased-ridge"]


@pytest.mark.parametrize("name", CHEAP + ["bolib/FalkLiu1995", "continuum/0", "nonconvex/ring",
                                          "quadratic/cond10-scale1"])
def test_a_problem_reports_the_metrics_its_spec_declares(name):
    spec = PROBLEMS[name]
    problem = spec(seed=0) if "seed" in inspect.signature(spec).parameters else spec()
    reported = set(problem.metrics(problem.x0, problem.y0)) if problem.metrics else set()
    assert reported == set(spec.metrics), (reported, set(spec.metrics))
    assert spec.summary and spec.tags


def test_the_spec_is_called_and_inspected_as_its_builder():
    spec = PROBLEMS["quadratic"]
    assert inspect.signature(spec) == inspect.signature(bilevel.problems.quadratic)
    torch.testing.assert_close(spec(seed=3).x0, bilevel.problems.quadratic(seed=3).x0)


@pytest.mark.parametrize("kwargs, message", [
    ({"builder": 3}, "Invalid builder: 3"),
    ({"builder": bilevel.problems.quadratic, "metrics": {"loss": "lower"}}, r"Invalid metrics: \{'loss': 'lower'\}"),
    ({"builder": bilevel.problems.quadratic, "scores": {"x_error": "min"}}, "declared without an evaluate hook"),
])
def test_a_bad_spec_is_refused(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ProblemSpec(**kwargs)


def test_suite_problems_are_registered_and_scored_against_their_optimum():
    suite = [n for n in PROBLEMS if "suite" in PROBLEMS[n].tags]
    assert len(suite) == 60 and all("/" in n for n in suite)
    spec = PROBLEMS["bolib/FalkLiu1995"]
    problem = spec()
    at_optimum = SimpleNamespace(x=problem.info["x_star"], y=problem.info["y_star"])
    scores = spec.evaluate(problem, at_optimum)
    assert scores["solved"] == 1.0 and scores["x_error"] == 0.0 and scores["F_error"] < 1e-9
    moved = SimpleNamespace(x=problem.info["x_star"] + 0.5, y=problem.info["y_star"])
    scores = spec.evaluate(problem, moved)
    x_star = problem.info["x_star"]
    expected = 0.5 * x_star.numel() ** 0.5 / max(1.0, float(x_star.norm()))
    assert scores["solved"] == 0.0 and scores["x_error"] == pytest.approx(expected, rel=1e-12)
    assert set(scores) == set(spec.scores)


def test_directions_come_from_the_declarations():
    directions = metric_directions()
    assert directions["retrained_accuracy"] == "max" and directions["val_loss"] == "min"
    assert directions["solved"] == "max" and directions["x_error"] == "min"
    assert higher_is_better("verified_test_accuracy") and not higher_is_better("verified_val_loss")
    assert higher_is_better("my_accuracy") and not higher_is_better("my_loss")    # a user's metric: by its name


@pytest.mark.slow
def test_a_suite_problem_runs_and_is_scored_by_the_harness(tmp_path, capsys):
    """`bilevel sweep` on suite problems: each run's summary.json and final row hold the problem's
    scores, and the table leads with them."""
    config = {"max_iter": 3000, "log_every": 3000, "seeds": 1, "kkt": "none",
              "problems": {"bolib/FalkLiu1995": {}, "quadratic/cond10-scale1": {}},
              "methods": {"aid_bio": {}}}
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(config))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    frame = read_results(tmp_path / "out")
    last = frame.sort_values("iter").groupby("run_id").tail(1).set_index("problem")
    summaries = {s["problem"]: s for s in (json.loads(p.read_text())
                                           for p in (tmp_path / "out" / "runs").glob("*/summary.json"))}
    for name in config["problems"]:
        scores = summaries[name]["scores"]
        assert set(scores) == set(PROBLEMS[name].scores)
        assert scores == {k: pytest.approx(last.loc[name, k]) for k in scores}
    assert last.loc["quadratic/cond10-scale1", "solved"] == 1.0          # aid_bio solves a strongly convex quadratic
    assert default_metrics(frame)[:3] == ["solved", "F_error", "x_error"]
    assert "solved" in capsys.readouterr().out
