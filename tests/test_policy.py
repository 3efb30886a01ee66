"""RunPolicy: one set of run settings for solve, solve_batch, the command line and sweep configs."""
import dataclasses
import inspect

import pytest
import torch

import bilevel
from bilevel import PROBLEMS, RunPolicy
from bilevel.cli.config import VERIFY_SETTINGS, ConfigError, RunSpec, check_config, expand
from bilevel.cli.main import CLIError, build_parser, main, run_policy
from bilevel.run import verify

FIELDS = [f.name for f in dataclasses.fields(RunPolicy)]
DEFAULTS = RunPolicy()
SWEEP = {"problems": {"quadratic": {}}, "methods": {"aid_bio": {}}}


def parse(*argv):
    return build_parser().parse_args(["run", "--problem", "quadratic", "--method", "aid_bio", *argv])


@pytest.mark.parametrize("function", [bilevel.solve, bilevel.solve_batch])
def test_solve_and_solve_batch_default_to_the_policy(function):
    parameters = inspect.signature(function).parameters
    assert parameters["policy"].default is None
    given = [name for name in FIELDS if name in parameters]
    assert given == ["max_iter", "tol", "log_every", "kkt", "verify", "verify_tol"]
    for name in given:
        assert parameters[name].default == getattr(DEFAULTS, name), name


def test_command_line_defaults_are_the_policy():
    args = parse()
    assert {name: getattr(args, name) for name in FIELDS} == dataclasses.asdict(DEFAULTS)
    assert run_policy(args) == DEFAULTS


def test_sweep_config_defaults_are_the_policy():
    (spec,) = expand(check_config(SWEEP))
    assert spec.policy() == DEFAULTS
    assert {name: getattr(spec, name) for name in FIELDS} == dataclasses.asdict(DEFAULTS)


def test_verify_defaults_are_the_policy():
    parameters = inspect.signature(verify.verify).parameters
    pairs = {"tol": "verify_tol", "upper_tol": "upper_tol", "curvature_tol": "curvature_tol",
             "resolve_fraction": "resolve_fraction", "max_iter": "verify_max_iter"}
    for argument, name in pairs.items():
        assert parameters[argument].default == getattr(DEFAULTS, name), argument


def test_the_kkt_default_follows_tol_in_solve_and_solve_batch():
    assert DEFAULTS.kkt_mode == "method" and RunPolicy(tol=1e-6).kkt_mode == "least_squares"
    problem = PROBLEMS["quadratic"](seed=0)
    alone = bilevel.solve(problem, "sgf", max_iter=2, log_every=2, verify=False)
    (member,) = bilevel.solve_batch(lambda s: PROBLEMS["quadratic"](seed=s), "sgf", seeds=[0], max_iter=2, log_every=2,
                                    verify=False)
    assert "kkt_stationarity" in alone.history and "kkt_stationarity" in member.history
    assert member.history["kkt_stationarity"] == pytest.approx(alone.history["kkt_stationarity"], rel=1e-6)


def test_the_same_settings_reach_solve_from_every_entry():
    """A setting given on the command line, in a sweep config or as a keyword makes the same policy."""
    settings = {"max_iter": 7, "log_every": 7, "tol": 1e-5, "kkt": "least_squares", "verify_tol": 0.05,
                "upper_tol": 1e-4, "curvature_tol": 0.0, "resolve_fraction": 0.5, "verify_max_iter": 20}
    expected = RunPolicy(**settings)
    args = parse("--max-iter", "7", "--log-every", "7", "--tol", "1e-5", "--kkt", "least_squares", "--verify-tol",
                 "0.05", "--upper-tol", "1e-4", "--curvature-tol", "0", "--resolve-fraction", "0.5",
                 "--verify-max-iter", "20")
    assert run_policy(args) == expected
    (spec,) = expand(check_config({**SWEEP, **settings, "upper_tol": "1e-4"}))   # YAML 1.1 reads 1e-4 as a string
    assert spec.policy() == expected
    assert run_policy(parse("--no-verify")) == RunPolicy(verify=False)
    assert DEFAULTS.replace(**settings) == expected


def test_only_changed_verification_settings_change_a_run_id():
    base = RunSpec.make("quadratic", {}, "sgf", {}, 0, 10, 5)
    assert RunSpec.make("quadratic", {}, "sgf", {}, 0, 10, 5, verify_tol=DEFAULTS.verify_tol).run_id == base.run_id
    ids = {RunSpec.make("quadratic", {}, "sgf", {}, 0, 10, 5, **{name: value}).run_id
           for name, value in zip(VERIFY_SETTINGS, (False, 0.5, 0.5, 0.5, 0.5, 7))}
    assert len(ids) == len(VERIFY_SETTINGS) and base.run_id not in ids


@pytest.mark.parametrize("settings, error, message", [
    ({"max_iter": -1}, ValueError, r"^Invalid max_iter: -1 \(expected an integer >= 0\)$"),
    ({"log_every": 0}, ValueError, r"^Invalid log_every: 0 \(expected an integer >= 1\)$"),
    ({"tol": -1.0}, ValueError, r"^Invalid tol: -1.0 \(expected a finite number >= 0 or None\)$"),
    ({"kkt": "least-squares"}, ValueError, r"^Invalid kkt: 'least-squares' .*did you mean 'least_squares'\?$"),
    ({"tol": 1e-3, "kkt": "none"}, ValueError, r"^Invalid tol: 0.001 with kkt='none'"),
    ({"verify": 1}, TypeError, r"^Invalid verify: 1 \(expected True or False\)$"),
    ({"verify_tol": 0.0}, ValueError, r"^Invalid verify_tol: 0.0 \(expected a finite number > 0\)$"),
    ({"upper_tol": float("nan")}, ValueError, r"^Invalid upper_tol: nan \(expected a finite number > 0\)$"),
    ({"curvature_tol": -1e-3}, ValueError, r"^Invalid curvature_tol: -0.001 \(expected a finite number >= 0\)$"),
    ({"resolve_fraction": 2.0}, ValueError, r"^Invalid resolve_fraction: 2.0 \(expected a number in \(0, 1\]\)$"),
    ({"verify_max_iter": 0}, ValueError, r"^Invalid verify_max_iter: 0 \(expected an integer >= 1\)$"),
])
def test_bad_settings_name_the_setting_and_echo_the_value(settings, error, message):
    with pytest.raises(error, match=message):
        RunPolicy(**settings)
    with pytest.raises(error, match=message):
        DEFAULTS.replace(**settings)


def test_bad_settings_at_every_entry(capsys):
    with pytest.raises(TypeError, match=r"Invalid setting: 'upper_to' .*did you mean 'upper_tol'\?"):
        DEFAULTS.replace(upper_to=1e-3)
    with pytest.raises(TypeError, match=r"Invalid policy: \{'max_iter': 5\} \(expected a bilevel.RunPolicy or None\)"):
        bilevel.solve(PROBLEMS["quadratic"](seed=0), "sgf", policy={"max_iter": 5})
    with pytest.raises(ValueError, match=r"Invalid upper_tol: -1.0"):
        bilevel.solve(PROBLEMS["quadratic"](seed=0), "sgf", policy=RunPolicy(upper_tol=-1.0))
    with pytest.raises(ValueError, match=r"^Invalid verify_tol: 0.0"):
        bilevel.solve_batch(lambda s: PROBLEMS["quadratic"](seed=s), "sgf", seeds=[0], verify_tol=0.0)
    with pytest.raises(CLIError, match=r"^Invalid --upper-tol: -0.1 \(expected a finite number > 0\)$"):
        run_policy(parse("--upper-tol", "-0.1"))
    with pytest.raises(CLIError, match=r"^Invalid --resolve-fraction: 'half' \(expected a number"):
        parse("--resolve-fraction", "half")
    assert main(["run", "--problem", "quadratic", "--method", "sgf", "--curvature-tol", "-1"]) == 2
    assert "Invalid --curvature-tol: -1.0 (expected a finite number >= 0)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"verify_tol: 0 \(expected a finite number > 0\)"):
        check_config({**SWEEP, "verify_tol": 0})
    with pytest.raises(ConfigError, match=r"verify_max_iter: 2.5 \(expected int\)"):
        check_config({**SWEEP, "verify_max_iter": 2.5})
    with pytest.raises(TypeError, match=r"'upper_tol' is a setting of the run"):
        bilevel.solve(PROBLEMS["quadratic"](seed=0), "sgf", options={"upper_tol": 1e-3})


def test_keywords_override_the_policy():
    problem = PROBLEMS["quadratic"](seed=0)
    policy = RunPolicy(max_iter=6, log_every=3, verify=False)
    assert bilevel.solve(problem, "sgf", policy=policy).history["iter"] == [0, 3, 6]
    assert bilevel.solve(problem, "sgf", policy=policy, max_iter=4).history["iter"] == [0, 3, 4]
    batch = bilevel.solve_batch(lambda s: PROBLEMS["quadratic"](seed=s), "sgf", seeds=[0, 1], policy=policy,
                                log_every=2)
    assert [r.history["iter"] for r in batch] == [[0, 2, 4, 6]] * 2 and all(r.verification is None for r in batch)


def test_the_upper_tolerance_decides_the_verdict():
    """aid_bio stops after 50 iterations with the projected hypergradient at a few 1e-4 of its value
    at x0 and y on the lower solution: it passes upper_tol 1e-2 and fails 1e-5, with y and x the same."""
    problem = PROBLEMS["quadratic"](seed=0)
    loose = bilevel.solve(problem, "aid_bio", policy=RunPolicy(max_iter=50, log_every=50, upper_tol=1e-2))
    tight = bilevel.solve(problem, "aid_bio", policy=RunPolicy(max_iter=50, log_every=50, upper_tol=1e-5))
    torch.testing.assert_close(loose.x, tight.x, rtol=0, atol=0)
    relative = loose.verification["upper_relative"]
    assert 1e-5 < relative < 1e-2 and tight.verification["upper_relative"] == pytest.approx(relative, rel=1e-9)
    assert loose.success and loose.verification["upper_passed"]
    assert not tight.success and not tight.verification["upper_passed"] and tight.verification["lower_passed"]
    assert "upper_tol 1e-05" in tight.message


def test_the_lower_tolerance_decides_the_verdict():
    """sgf after 5 iterations leaves y a y_distance between 1e-3 and 1: verify_tol on either side of it
    flips the lower-level check, as a keyword of solve or a setting of the policy."""
    problem = PROBLEMS["quadratic"](seed=0)
    policy = RunPolicy(max_iter=5, log_every=5, upper_tol=1.0)
    loose = bilevel.solve(problem, "sgf", policy=policy, verify_tol=1.0)
    distance = loose.verification["y_distance"]
    assert 1e-3 < distance < 1.0 and loose.verification["lower_passed"]
    tight = bilevel.solve(problem, "sgf", policy=policy.replace(verify_tol=distance / 2))
    assert not tight.verification["lower_passed"] and not tight.success
    assert f"verify_tol {distance / 2:g}" in tight.message
