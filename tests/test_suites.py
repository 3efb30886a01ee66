"""Suite problems in the harness: family patterns, per-problem settings and explicit cases in
configs, the problems' scoring hooks, and solved counts per family."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import bilevel
from bilevel.cli.config import ConfigError, check_config, expand, load_config
from bilevel.cli.main import main
from bilevel.cli.store import read_results
from bilevel.cli.tables import family, family_table, final_rows
from bilevel.problems import PROBLEMS
from bilevel.problems.hpo import honest_upper_value, references

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = {"max_iter": 30, "log_every": 30, "kkt": "none", "seeds": [0],
        "problems": {"bolib/Falk*": {}, "quadratic/cond1-scale1*": {}, "nonconvex/ring": {}},
        "methods": {"sgf": {}, "pgdqp": {"escape_every": [0, 50]}}}


def test_a_pattern_names_every_registered_problem_it_matches_in_registry_order():
    config = check_config({**TINY, "problems": {"bolib/*": {}, "quadratic/cond10-*": {}}})
    bolib = [n for n in PROBLEMS if n.startswith("bolib/")]
    quadratics = [n for n in PROBLEMS if n.startswith("quadratic/cond10-")]
    assert len(bolib) == 31 and len(quadratics) == 3
    assert list(config["problems"]) == bolib + quadratics


NOTHING = r"'bolb/\*' matches no registered problem \(patterns such as bolib/\*, continuum/\*, nonconvex/\*, quadratic/\*\)"
TWICE = r"'bolib/FalkLiu1995' is given twice \(by 'bolib/Falk\*' and by 'bolib/FalkLiu1995'\)"


@pytest.mark.parametrize("problems, message", [({"bolb/*": {}}, NOTHING),
                                               ({"bolib/Falk*": {}, "bolib/FalkLiu1995": {}}, TWICE)])
def test_a_pattern_that_matches_nothing_or_a_name_given_twice_is_an_error(problems, message):
    with pytest.raises(ConfigError, match=message):
        check_config({**TINY, "problems": problems})


def test_the_error_of_a_pattern_gives_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_iter: 5\nmethods:\n  sgf: {}\nproblems:\n  nonconvex/rin*: {}\n  bolib/Nope*: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: problems.bolib/Nope\* \(line 6\): 'bolib/Nope\*' matches no"):
        load_config(path)


FAMILY_CONFIGS = [p for p in sorted(CONFIGS.glob("suite_*.yaml")) if "cases" not in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=lambda p: p.name)
def test_suite_configs_run_whole_families_once_each(path):
    config = load_config(path)
    runs = expand(config)
    patterns = yaml.safe_load(path.read_text())["problems"]
    names = [n for p in patterns for n in PROBLEMS if n.startswith(p.rstrip("*"))]
    assert list(config["problems"]) == names and len(names) in (24, 31)
    assert len(runs) == len(names) * len(expand({**config, "problems": {names[0]: {}}}))
    assert config["kkt"] == "none" and config["max_iter"] == config["log_every"] == 5000


def test_tiny_suite_runs_through_sweep_and_the_family_table_counts_the_stored_scores(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    last = final_rows(read_results(tmp_path / "o"), ["run_id"])
    assert set(last["problem"]) == {"bolib/FalkLiu1995", "quadratic/cond1-scale1e-2", "quadratic/cond1-scale1",
                                    "quadratic/cond1-scale1e4", "nonconvex/ring"}
    assert len(last) == 5 * 3 and set(last["solved"]) <= {0.0, 1.0}
    for rule, solved in (("solved>=1", last["solved"] >= 1), ("x_error<=0.05", last["x_error"] <= 0.05)):
        assert main(["table", str(tmp_path / "o"), "--by", "family", "--solved-if", rule]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "| method | config | bolib | quadratic | nonconvex | all |"
        table = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip().split(" ")[0] for c in
                                                                          line.strip("|").split("|")[2:]]
                 for line in lines[2:]}
        assert len(table) == 3
        for (method, config), sub in last.assign(ok=solved).groupby(["method", "config"]):
            in_family = [sub[sub["problem"].map(family) == f]["ok"] for f in ("bolib", "quadratic", "nonconvex")]
            assert table[(method, config)] == [f"{int(ok.sum())}/{len(ok)}" for ok in in_family] + \
                [f"{int(sub['ok'].sum())}/5"]
    assert 0 < last["solved"].sum() < len(last)     # the counts tell runs apart on these problems


def test_family_counts_say_which_runs_ran_away_or_failed():
    import pandas as pd
    frame = pd.DataFrame({"run_id": list("abcd"), "iter": 5, "problem": ["bolib/A", "bolib/B", "quadratic/c", "own"],
                          "method": "m", "config": "{}", "solved": [1.0, 0.0, 0.0, float("nan")],
                          "status": ["COMPLETED", "RUNAWAY", "COMPLETED", "COMPLETED"]})
    manifest = [{"run_id": "e", "status": "failed", "method": "m", "options": {}, "problem": "quadratic/d"},
                {"run_id": "f", "status": "failed", "method": "m", "options": {}, "problem": "bolib/C"},
                {"run_id": "f", "status": "finished", "method": "m", "options": {}, "problem": "bolib/C"}]
    rows, families = family_table(frame, "solved>=1", manifest)
    assert families == ["bolib", "quadratic", "own"]
    assert rows == [{"method": "m", "config": "{}", "bolib": "1/2 (1 ran away)", "quadratic": "0/2 (1 failed)",
                     "own": "0/1", "all": "1/5"}]


@pytest.mark.parametrize("rule, message", [("x_error<0.05x", r"Invalid --solved-if: 'x_error<0.05x' \(expected"),
                                           ("nope>=1", r"Invalid --solved-if: 'nope>=1' \('nope' is not a column")])
def test_a_bad_solved_rule_names_the_flag_and_echoes_it(rule, message):
    import pandas as pd
    frame = pd.DataFrame({"run_id": ["a"], "iter": [1], "problem": ["bolib/A"], "method": ["m"], "config": ["{}"],
                          "solved": [1.0], "status": ["COMPLETED"]})
    with pytest.raises(ValueError, match=message):
        family_table(frame, rule)


CASES = {"log_every": 100000, "kkt": "none", "seeds": [5],
         "problems": {"quadratic": {"cond": [2.0, 4.0], "max_iter": 7}, "coreset": {}},
         "cases": [{"problem": "ring", "max_iter": 5},
                   {"problem": "quadratic", "args": {"dim_x": 3, "dim_y": 6, "cond": 3.0}, "seed": 7, "max_iter": 9},
                   {"problem": "quadratic", "args": {"dim_x": 3, "dim_y": 6, "cond": 3.0}, "seed": 8}],
         "max_iter": 4, "methods": {"sgf": {}, "pgdqp": {}}}


def test_cases_and_per_problem_iterations_run_and_are_stored_with_their_iterations_and_seeds(tmp_path, capsys):
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(CASES))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    frame = read_results(tmp_path / "o")
    last = final_rows(frame, ["run_id"])
    runs = {(r.problem, r.problem_args, int(r.seed), int(r.iter)) for r in last.itertuples()}
    assert runs == {("quadratic", '{"cond": 2.0}', 5, 7), ("quadratic", '{"cond": 4.0}', 5, 7), ("coreset", "{}", 5, 4),
                    ("ring", "{}", 0, 5), ("quadratic", '{"cond": 3.0, "dim_x": 3, "dim_y": 6}', 7, 9),
                    ("quadratic", '{"cond": 3.0, "dim_x": 3, "dim_y": 6}', 8, 4)}
    assert len(last) == 6 * 2 and sorted(frame.groupby("run_id").size()) == [2] * 12    # rows at 0 and at the end
    assert set(last["solved"]) <= {0.0, 1.0}
    assert main(["table", str(tmp_path / "o"), "--by", "family"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| method | config | quadratic | coreset | ring | all |"

    def counts(method):       # the table's cells from the stored scores
        rows = last[last["method"] == method]
        cells = [f"{int(rows[rows['problem'] == p]['solved'].sum())}/{int((rows['problem'] == p).sum())}"
                 for p in ("quadratic", "coreset", "ring")]
        return f"| {method} | {{}} | {' | '.join(cells)} | {int(rows['solved'].sum())}/{len(rows)} |"

    assert lines[2:4] == [counts("pgdqp"), counts("sgf")]


@pytest.mark.parametrize("text, message", [
    ("cases:\n  - {problem: rng}\n", r"cases\[0\]\.problem \(line 5\): 'rng' is not a problem; did you mean 'ring'"),
    ("cases:\n  - {problem: ring}\n  - {problem: quadratic, seed: x}\n",
     r"Invalid value: .*c.yaml: cases\[1\]\.seed \(line 6\): 'x' \(expected int\)"),
    ("cases:\n  - {problem: quadratic, args: {cond: [1, 2]}}\n",
     r"cases\[0\]\.args\.cond \(line 5\): \[1, 2\] \(a case gives one value per argument"),
    ("cases:\n  - {problem: quadratic, arg: {}}\n", r"cases\[0\]\.arg \(line 5\): unknown key 'arg'.*did you mean 'args'"),
    ("cases:\n  - {problem: quadratic}\n  - {problem: quadratic, seed: 0}\n",
     r"cases\[1\] \(line 6\): \{'problem': 'quadratic', 'seed': 0\} \(the same case as cases\[0\]\)"),
    ("problems:\n  quadratic: {max_iter: 0}\n", r"problems\.quadratic\.max_iter \(line 5\): 0 \(expected a whole number"),
    ("problems:\n  quadratic: {max_iter: [10, 20]}\n", r"problems\.quadratic\.max_iter \(line 5\): \[10, 20\]"),
])
def test_a_bad_case_or_problem_setting_names_the_key_and_its_line_and_echoes_the_value(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text("max_iter: 5\nmethods:\n  sgf: {}\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_max_iter_comes_from_the_problem_or_case_then_the_config_then_the_run_policy():
    cases = [{"problem": "ring", "max_iter": 3}, {"problem": "ring", "seed": 1}]
    config = check_config({"methods": {"sgf": {}}, "cases": cases, "problems": {"quadratic": {"log_every": 2}}})
    runs = {(r.problem, r.seed): (r.max_iter, r.log_every) for r in expand(config)}
    default = bilevel.RunPolicy()
    assert runs == {("quadratic", 0): (default.max_iter, 2), ("ring", 0): (3, default.log_every),
                    ("ring", 1): (default.max_iter, default.log_every)}
    config = check_config({"max_iter": 8, "log_every": 4, "methods": {"sgf": {}}, "cases": cases})
    assert [(r.max_iter, r.log_every) for r in expand(config)] == [(3, 4), (8, 4)]


def test_a_cases_config_takes_the_run_policy_settings_and_reports_every_mistake_at_once(tmp_path):
    config = check_config({"methods": {"sgf": {}}, "cases": [{"problem": "ring", "max_iter": 3}],
                           "upper_tol": "1e-4", "verify_max_iter": 20, "verify": False})
    (spec,) = expand(config)
    assert spec.policy() == bilevel.RunPolicy(max_iter=3, upper_tol=1e-4, verify_max_iter=20, verify=False)
    path = tmp_path / "c.yaml"
    path.write_text("upper_tol: -1.0\nmethods:\n  sgf: {}\nproblems:\n  bolb/*: {}\n  quadratic: {max_iter: 0}\n"
                    "cases:\n  - {problem: rng}\n  - {problem: ring, seed: x, max_iter: 0}\n  - {problem: ring}\n"
                    "  - {problem: ring, seed: 0}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"Invalid config: {path}: 7 mistakes:"
    expected = ["upper_tol (line 1): -1.0 (expected a finite number > 0)", "problems.bolb/* (line 5): 'bolb/*' matches",
                "problems.quadratic.max_iter (line 6): 0 (expected a whole number >= 1",
                "cases[0].problem (line 8): 'rng' is not a problem", "cases[1].seed (line 9): 'x' (expected int)",
                "cases[1].max_iter (line 9): 0 (expected a whole number >= 1)",
                "cases[3] (line 11): {'problem': 'ring', 'seed': 0} (the same case as cases[2])"]
    for part, line in zip(expected, lines[1:]):
        assert part in line, (part, line)


def test_the_defaults_suite_gives_each_problem_its_iterations_and_seeds():
    runs = expand(load_config(CONFIGS / "suite_defaults.yaml"))
    methods = {r.method for r in runs}
    assert methods == set(bilevel.SOLVERS)
    cases = {(r.problem, r.problem_args, r.seed, r.max_iter) for r in runs}
    assert len(cases) == 17 and len(runs) == 17 * len(methods)
    hpo = sorted(r.seed for r in runs if r.method == "pgdqp" and dict(r.problem_args).get("dataset") == "breast_cancer")
    assert hpo == [0, 1, 3, 6]
    assert {r.max_iter for r in runs if r.problem == "quadratic"} == {20000}
    assert {r.max_iter for r in runs if r.problem in ("feature-weight-decay", "ring", "hyper-cleaning")} == {2000}
    assert {(r.problem, r.max_iter) for r in runs if r.problem in ("coreset", "synthetic-nc")} == \
        {("coreset", 1000), ("synthetic-nc", 20000)}


def _result(x, y=None, **history):
    return SimpleNamespace(x=x, y=y, history={k: [v] for k, v in history.items()}, status=None)


@pytest.mark.parametrize("name, args", [("feature-weight-decay", {"dataset": "wine", "honest_metric": False}),
                                        ("ridge-weights", {"honest_metric": False})])
def test_hpo_is_solved_where_the_honest_value_closes_half_the_gap_to_the_best_shared_weight(name, args):
    spec = PROBLEMS[name]
    problem = spec(seed=0, **args)
    ref = references(problem)
    best = torch.full_like(problem.x0, ref["best_log_weight"])
    assert ref["best_shared"] == pytest.approx(honest_upper_value(problem, best)) and ref["best_shared"] < ref["start"]
    scores = spec.evaluate(problem, _result(best, problem.y0))
    assert set(scores) == set(spec.scores)
    assert scores["solved"] == 1.0 and scores["gap_closed"] == pytest.approx(1.0)
    assert scores["ratio_to_best_shared"] == pytest.approx(1.0) and scores["honest_value"] == pytest.approx(ref["best_shared"])
    start = spec.evaluate(problem, _result(problem.x0, problem.y0))
    assert start["solved"] == 0.0 and start["gap_closed"] == pytest.approx(0.0)
    assert start["ratio_to_best_shared"] == pytest.approx(ref["start"] / ref["best_shared"])
    halfway = problem.x0 + 0.5 * (best - problem.x0)
    assert spec.evaluate(problem, _result(halfway, problem.y0))["solved"] == float(
        honest_upper_value(problem, halfway) <= (ref["start"] + ref["best_shared"]) / 2)
    diverged = spec.evaluate(problem, SimpleNamespace(x=best, y=None, status=bilevel.Status.DIVERGED))
    assert diverged["solved"] == 0.0


def test_hyper_cleaning_is_solved_by_weights_that_beat_uniform_ones_by_three_points():
    spec = PROBLEMS["hyper-cleaning"]
    problem = spec(pca=82, seed=11, n_train=500, n_test=500)
    clean = ~problem.info["corrupted_mask"]
    oracle = torch.where(clean, 5.0, -5.0).to(problem.x0)
    scores = spec.evaluate(problem, _result(oracle, problem.y0))
    assert set(scores) == set(spec.scores) and scores["solved"] == 1.0 and scores["retrained_gain"] >= 0.03
    start = spec.evaluate(problem, _result(problem.x0, problem.y0))
    assert start == {"solved": 0.0, "retrained_gain": 0.0}
    reversed_ = spec.evaluate(problem, _result(-oracle, problem.y0))    # AUC 0: the corrupted samples kept
    assert reversed_["solved"] == 0.0


@pytest.mark.parametrize("name", ["ring", "quadratic", "coreset"])
def test_a_known_answer_is_solved_and_the_start_is_not(name):
    spec = PROBLEMS[name]
    problem = spec()
    if name == "coreset":      # the optimum value is 0; pgdqp reaches it in 1000 iterations
        answer = bilevel.solve(problem, "pgdqp", max_iter=1000, log_every=1000, kkt="none", seed=0)
    else:
        answer = _result(problem.info["x_star"], problem.info["y_star"], h=0.0)
    assert spec.evaluate(problem, answer)["solved"] == 1.0
    assert spec.evaluate(problem, _result(problem.x0, problem.y0, h=0.0))["solved"] == 0.0


def test_ring_needs_a_small_h_and_synthetic_nc_a_small_h_and_delta():
    ring, nc = PROBLEMS["ring"], PROBLEMS["synthetic-nc"]
    problem = ring()
    x_star, y_star = problem.info["x_star"], problem.info["y_star"]
    assert ring.evaluate(problem, _result(x_star, y_star, h=2e-3))["solved"] == 0.0
    assert ring.evaluate(problem, _result(x_star + 2e-2, y_star, h=0.0))["solved"] == 0.0
    assert ring.evaluate(problem, _result(x_star + 5e-3, y_star, h=5e-4))["solved"] == 1.0
    problem = nc(seed=0)
    assert nc.evaluate(problem, _result(problem.x0, h=1e-7, delta_norm=0.03))["solved"] == 1.0
    assert nc.evaluate(problem, _result(problem.x0, h=2e-6, delta_norm=0.03))["solved"] == 0.0
    assert nc.evaluate(problem, _result(problem.x0, h=1e-7, delta_norm=0.04))["solved"] == 0.0


def test_the_ring_optimum_is_where_the_reduced_upper_level_is_stationary():
    problem = PROBLEMS["ring"]()
    x, y = problem.info["x_star"], problem.info["y_star"]
    r = float((1 + x ** 2).sqrt())
    assert float(y.norm()) == pytest.approx(r, rel=1e-12) and float(problem.g(x, y)) == pytest.approx(0.0, abs=1e-24)
    assert (float(x) - 2) - (3 - r) * float(x) / r == pytest.approx(0.0, abs=1e-12)

    def F(t):
        return 0.5 * (t - 2) ** 2 + 0.5 * ((1 + t * t) ** 0.5 - 3) ** 2

    s = float(x)
    assert F(s) == pytest.approx(problem.info["F_star"]) and F(s) < min(F(s - 1e-3), F(s + 1e-3))
