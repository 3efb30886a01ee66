"""Suite problems in the harness: family patterns in configs, and solved counts per family."""
from pathlib import Path

import pytest
import yaml

from bilevel.cli.config import ConfigError, check_config, expand, load_config
from bilevel.cli.main import main
from bilevel.cli.store import read_results
from bilevel.cli.tables import family, family_table, final_rows
from bilevel.problems import PROBLEMS

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


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("suite_*.yaml")), ids=lambda p: p.name)
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
