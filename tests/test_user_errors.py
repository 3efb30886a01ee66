"""A new user's mistakes: each is one clear line that names the argument, echoes its value and
says what was expected (exit status 2 from the command line), and is caught before any run."""
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import bilevel
from bilevel.cli import main as cli
from bilevel.cli import store
from bilevel.cli.config import ConfigError, load_config
from bilevel.cli.main import main
from bilevel.cli.runner import build_problem
from bilevel.cli.store import read_results

SRC = str(Path(__file__).resolve().parent.parent / "src")
QUICK = ["--max-iter", "2", "--log-every", "1"]
RUN = ["run", "--problem", "quadratic", "--method", "pgdqp", "--no-progress", *QUICK]
COMPARE = ["compare", "--problem", "quadratic", "--methods", "pgdqp,sgf", "--seeds", "1", *QUICK]


def error_of(argv, capsys) -> str:
    """The one stderr line of a command that must fail with exit status 2 before it runs anything."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bilevel: error: "), captured.err
    assert "status:" not in captured.out and "seed 0:" not in captured.err      # nothing ran
    return lines[0][len("bilevel: error: "):]


def write_config(tmp_path, config, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


# ----- names: the problem registry and did-you-mean ---------------------------------------------
@pytest.mark.parametrize("name, meant", [("synthetic_sc", "synthetic-sc"), ("SYNTHETIC-SC", "synthetic-sc"),
                                         ("Coreset", "coreset"), ("corset", "coreset")])
def test_unknown_problem_key_lists_names_and_suggests(name, meant):
    with pytest.raises(KeyError) as info:
        bilevel.PROBLEMS[name]
    assert info.value.args[0] == (f"Unknown problem: {name!r} (expected one of biased-ridge, coreset, feature-weight-decay, "
                                  f"hyper-cleaning, quadratic, ridge-weights, ring, synthetic-nc, synthetic-sc, toy-cleaning, bolib/... (31 names), "
                                  f"continuum/... (10 names), nonconvex/... (5 names), quadratic/... (14 names)); "
                                  f"did you mean {meant!r}?")


def test_problem_registry_is_still_a_dict():
    problems = bilevel.PROBLEMS
    assert isinstance(problems, dict) and "coreset" in problems and problems.get("nope") is None
    assert sorted(problems) == sorted(dict(problems)) and problems["quadratic"].builder is bilevel.problems.quadratic
    with pytest.raises(KeyError) as info:
        problems["zzz"]
    assert info.value.args[0] == f"Unknown problem: 'zzz' (expected one of {PROBLEM_NAMES})"   # nothing near


SOLVER_NAMES = "aid_bio, bome, f2ba, f2sa, galet, hjfbio, iaptt_gm, meha, pgdqp, saba, sgf, soba, stocbio, vpbgd"
PROBLEM_NAMES = ("biased-ridge, coreset, feature-weight-decay, hyper-cleaning, quadratic, ridge-weights, ring, "
                 "synthetic-nc, synthetic-sc, toy-cleaning, bolib/... (31 names), continuum/... (10 names), "
                 "nonconvex/... (5 names), quadratic/... (14 names)")


@pytest.mark.parametrize("argv, message", [
    (["run", "--problem", "quadratic", "--method", "PGDQP"],
     f"Invalid --method: 'PGDQP' (expected one of {SOLVER_NAMES}); did you mean 'pgdqp'?"),
    (["run", "--problem", "quadratic", "--method", "aid-bio"],
     f"Invalid --method: 'aid-bio' (expected one of {SOLVER_NAMES}); did you mean 'aid_bio'?"),
    (["run", "--problem", "SYNTHETIC_SC", "--method", "pgdqp"],
     f"Invalid --problem: 'SYNTHETIC_SC' (expected one of {PROBLEM_NAMES}, or 'package.module:function'); "
     f"did you mean 'synthetic-sc'?"),
    (["compare", "--problem", "quadratic", "--methods", "pgdqp,SGF", "--out", "x"],
     f"Invalid --methods entry: 'SGF' (expected one of {SOLVER_NAMES}); did you mean 'sgf'?"),
])
def test_names_in_any_case_or_separator_get_a_suggestion(argv, message, capsys):
    assert error_of(argv, capsys) == message


# ----- --problem-arg ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    ([*RUN, "--problem-arg", "seed=3"], "Invalid --problem-arg: 'seed' (use --seed)"),
    ([*COMPARE, "--out", "x", "--problem-arg", "seed=3"], "Invalid --problem-arg: 'seed' (use --seeds)"),
    ([*RUN, "--problem-arg", "device=cpu"], "Invalid --problem-arg: 'device' (use --device)"),
    ([*RUN, "--problem-arg", "dtype=int8"],
     "Invalid --problem-arg dtype: 'int8' (expected one of bfloat16, float16, float32, float64)"),
    ([*RUN, "--problem-arg", "dtype=float23"], "Invalid --problem-arg dtype: 'float23' (expected one of bfloat16, "
     "float16, float32, float64); did you mean 'float32'?"),
])
def test_problem_args_that_other_flags_own_or_that_name_no_dtype(argv, message, capsys):
    assert error_of(argv, capsys) == message


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("float64", torch.float64)])
def test_problem_arg_dtype_by_name_is_the_torch_dtype(name, dtype, tmp_path, capsys):
    built = build_problem("quadratic", 0, {"dtype": name})
    assert built.x0.dtype == built.y0.dtype == dtype
    assert main([*RUN, "--problem-arg", f"dtype={name}", "--out", str(tmp_path)]) == 0
    (summary,) = (tmp_path / "runs").glob("*/summary.json")
    assert f'"dtype": "{name}"' in summary.read_text()


def test_missing_data_dir_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    err = error_of(["run", "--problem", "hyper-cleaning", "--method", "pgdqp", "--no-progress", *QUICK,
                    "--problem-arg", "dataset=mnist", "--problem-arg", f"data_dir={missing}"], capsys)
    assert err == f"Invalid data_dir: {str(missing)!r} (not a directory)"


# ----- --device ------------------------------------------------------------------------------------------
def test_device_cuda_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert error_of([*RUN, "--device", "cuda"], capsys) == (
        "Invalid --device: 'cuda' (CUDA is not available on this machine)")
    assert error_of([*COMPARE, "--out", "x", "--device", "cuda:0"], capsys) == (
        "Invalid --device: 'cuda:0' (CUDA is not available on this machine)")


def test_device_index_beyond_the_gpus(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert error_of([*RUN, "--device", "cuda:3"], capsys) == (
        "Invalid --device: 'cuda:3' (this machine has 1 CUDA device: cuda:0 to cuda:0)")


@pytest.mark.parametrize("device, message", [
    ("gpu", "Invalid --device: 'gpu' (expected cpu, cuda or cuda:N); did you mean 'cuda'?"),
    ("cpux", "Invalid --device: 'cpux' (expected cpu, cuda or cuda:N)"),
    ("meta", "Invalid --device: 'meta' (meta tensors hold no values; expected cpu, cuda or cuda:N)"),
])
def test_device_that_torch_does_not_know(device, message, capsys):
    assert error_of([*RUN, "--device", device], capsys) == message


# ----- output paths: checked before anything runs -------------------------------------------------------------
def test_out_that_is_a_file(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    message = f"Invalid --out: {str(existing)!r} is a file (expected a directory for the results)"
    assert error_of([*RUN, "--out", str(existing)], capsys) == message
    assert error_of([*COMPARE, "--out", str(existing)], capsys) == message
    assert error_of(["sweep", str(write_config(tmp_path, SWEEP)), "--out", str(existing), "--no-progress"],
                    capsys) == message
    assert existing.read_text() == "mine"


def test_out_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "run"
    err = error_of([*RUN, "--out", str(target)], capsys)
    assert err.startswith(f"Invalid --out: {str(target)!r} cannot be created (")
    err = error_of([*COMPARE, "--out", str(target / "deeper")], capsys)
    assert err.startswith(f"Invalid --out: {str(target / 'deeper')!r} cannot be created (")


def test_checkpoint_that_is_a_directory(tmp_path, capsys):
    message = (f"Invalid checkpoint: {str(tmp_path)!r} is a directory "
               f"(expected a file such as {str(tmp_path / 'run.pt')!r})")
    with pytest.raises(ValueError) as info:
        bilevel.solve(bilevel.PROBLEMS["quadratic"](), "pgdqp", max_iter=2, checkpoint=tmp_path)
    assert str(info.value) == message
    assert error_of([*RUN, "--checkpoint", str(tmp_path)], capsys) == message


def test_an_os_error_is_one_line_as_a_last_resort(tmp_path, monkeypatch, capsys):
    def refuse(frame, path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(store, "write_parquet", refuse)
    assert main([*RUN, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir() if (tmp_path / "runs").exists() else [None]
    assert err.startswith("bilevel: error: Permission denied: ") and err.endswith("history.parquet'\n")


def test_table_results_in_a_missing_directory(tmp_path, capsys):
    assert main(["sweep", str(write_config(tmp_path, SWEEP)), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    target = tmp_path / "no" / "such" / "dir" / "R.md"
    assert error_of(["table", str(tmp_path / "o"), "--results", str(target)], capsys) == (
        f"Invalid --results: {str(target)!r} (no directory {str(target.parent)!r} to write it in)")
    assert error_of(["table", str(tmp_path / "o"), "--results", str(tmp_path)], capsys) == (
        f"Invalid --results: {str(tmp_path)!r} is a directory (expected a Markdown file, e.g. RESULTS.md)")


@pytest.mark.slow
def test_the_real_command_prints_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv, message in [(["run", "--problem", "quadratic", "--method", "pgdqp", "--device", "gpu"],
                           "Invalid --device: 'gpu'"),
                          (["sweep", str(tmp_path), "--out", str(tmp_path / "o")],
                           f"Invalid config: {str(tmp_path)!r} is a directory")]:
        proc = subprocess.run([sys.executable, "-m", "bilevel", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"bilevel: error: {message}") and proc.stderr.count("\n") == 1, proc.stderr


# ----- compare: every check before the first run; diverged runs counted and plotted ----------------------------
def test_compare_checks_the_last_methods_options_before_the_first_run(tmp_path, capsys):
    err = error_of([*COMPARE, "--out", str(tmp_path), "--set", "sgf.stepsize=0.1"], capsys)
    assert err.startswith("Invalid option for sgf: 'stepsize'") and err.endswith("did you mean 'step_size'?")
    assert not (tmp_path / "runs").exists()


def test_compare_with_an_unknown_metric_keeps_the_runs(tmp_path, capsys):
    assert main([*COMPARE, "--out", str(tmp_path), "--metrics", "f,lamda"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bilevel: error: ")
    err = last[len("bilevel: error: "):]
    assert err.startswith("Invalid --metrics entry: 'lamda' (columns: ") and "did you mean 'lambda'?" in err
    assert "distance_to_solution" in err                          # the problem's own metrics are columns
    assert err.endswith(f"the runs are saved in {tmp_path}")
    assert len(read_results(tmp_path)) > 0
    capsys.readouterr()
    assert main([*COMPARE, "--out", str(tmp_path), "--metrics", "lambda,distance_to_solution"]) == 0


def test_compare_counts_diverged_runs_and_plots_their_finite_part(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)         # matplotlib overflowed on inf
        code = main(["compare", "--problem", "quadratic", "--methods", "pgdqp,sgf", "--seeds", "2", "--max-iter", "80",
                     "--log-every", "20", "--set", "sgf.step_size=1000", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method | runs | iter |" in out
    assert "| pgdqp | 2 | 80 ± 0 |" in out and "| sgf | 2 (2 ran away) |" in out
    frame = read_results(tmp_path)
    assert set(frame[frame["method"] == "sgf"]["status"]) == {"RUNAWAY"}
    assert frame["f"].map(math.isfinite).all()                 # a run that blew up ends on a finite row,
    assert (frame["f"].abs() > 1e100).any()                    # of values far beyond the others
    (png,) = tmp_path.glob("compare_*_iter.png")
    assert png.stat().st_size > 10_000


# ----- sweep configs ----------------------------------------------------------------------------------------
SWEEP = {"max_iter": 2, "log_every": 1, "problems": {"quadratic": {}}, "methods": {"pgdqp": {}}}


@pytest.mark.parametrize("config, message", [
    ({**SWEEP, "plot": {"metrics": ["f"], "x": "wallclock"}},
     r"c.yaml: plot.x \(line \d+\): 'wallclock' \(expected one of iter, time, oracle_calls\)$"),
    ({**SWEEP, "plot": {"metrics": ["f"], "x": "oracle-calls"}}, r"did you mean 'oracle_calls'\?$"),
    ({**SWEEP, "problems": {"quadratic": []}},
     r"c.yaml: problems.quadratic \(line 4\): \[\] \(expected a mapping of builder arguments"),
    ({**SWEEP, "methods": {"pgdqp": []}}, r"c.yaml: methods.pgdqp \(line \d+\): \[\] \(expected a mapping of hyperp"),
    ({**SWEEP, "problems": {"SYNTHETIC_SC": {}}}, r"'SYNTHETIC_SC' is not a problem; did you mean 'synthetic-sc'\?"),
    ({**SWEEP, "problems": {"quadratic": {"dtype": ["float64", "float"]}}},
     r"problems.quadratic.dtype \(line \d+\): 'float' \(expected one of bfloat16, float16, float32, float64\)"),
    ("max_iter: 2\nproblems:\n  quadratic: {}\nmethods:\n  pgdqp: {}\n  pgdqp: {step_size: 0.1}\n",
     r"^Invalid config: .*c.yaml: duplicate key 'pgdqp' \(line 6\)$"),
    ("max_iter: 2\nmax_iter: 3\nproblems:\n  quadratic: {}\nmethods:\n  pgdqp: {}\n",
     r"duplicate key 'max_iter' \(line 2\)$"),
    ("max_iter: 2\nproblems:\n  quadratic: {dim_x: 2, dim_x: 3}\nmethods:\n  pgdqp: {}\n",
     r"duplicate key 'dim_x' \(line 3\)$"),
])
def test_config_mistakes_found_at_load_time(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, config))


def test_config_duplicate_keys_are_errors_but_anchors_and_merges_are_not(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate key 'sgf' \(line 7\)$"):
        load_config(write_config(tmp_path, "max_iter: 2\nproblems:\n  quadratic: {}\nmethods:\n  sgf: {}\n"
                                           "  pgdqp: {}\n  sgf: {}\n"))
    text = ("max_iter: 2\nproblems:\n  synthetic-nc: &small {dim: 2}\n  synthetic-sc: *small\n"
            "methods:\n  pgdqp: {<<: {step_size: 0.1}, schedule: constant}\n  sgf: {<<: {step_size: 0.1}}\n")
    config = load_config(write_config(tmp_path, text))
    assert config["problems"] == {"synthetic-nc": {"dim": 2}, "synthetic-sc": {"dim": 2}}
    assert config["methods"]["pgdqp"] == {"step_size": 0.1, "schedule": "constant"}


def test_sweep_dtype_by_name(tmp_path, capsys):
    path = write_config(tmp_path, {**SWEEP, "problems": {"quadratic": {"dtype": "float32"}}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "| quadratic {\"dtype\": \"float32\"} | pgdqp |" in capsys.readouterr().out


def test_sweep_whose_every_run_failed_says_so(tmp_path, capsys):
    path = write_config(tmp_path, {**SWEEP, "seeds": 3, "problems": {"quadratic": {"dim_x": 0}}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("failed: pgdqp on quadratic seed ") for line in err[:3])
    assert err[-1] == ("bilevel: error: all 3 runs failed; first: ValueError: Invalid dim_x: 0 "
                       "(expected an integer >= 1)")


def test_sweep_config_that_is_a_directory(tmp_path, capsys):
    assert error_of(["sweep", str(tmp_path), "--out", str(tmp_path / "o")], capsys) == (
        f"Invalid config: {str(tmp_path)!r} is a directory (expected a YAML file such as configs/fig5_coreset.yaml)")


# ----- YAML syntax, empty grids and plot metrics: found before anything runs ----------------------------------
@pytest.mark.parametrize("text, message", [
    ("max_iter: 2\nproblems:\n\tquadratic: {}\nmethods:\n  pgdqp: {}\n",
     "line 3, column 1: a tab character where YAML expects spaces"),
    ("max_iter: 2\nproblems:\n  quadratic: {}\n methods:\n  pgdqp: {}\n",
     "line 4, column 2: this line's indentation does not fit the lines above it"),
    ("max_iter: 2\nproblems: {quadratic: {}\nmethods:\n  pgdqp: {}\n",
     "line 3, column 1: expected ',' or '}', but got '<scalar>' (while parsing a flow mapping that starts at line 2, "
     "column 11)"),
])
def test_yaml_syntax_errors_are_one_plain_line(tmp_path, text, message, capsys):
    path = write_config(tmp_path, text)
    assert error_of(["sweep", str(path), "--out", str(tmp_path / "o")], capsys) == f"Invalid config: {path}: {message}"


@pytest.mark.parametrize("config, message", [
    ({**SWEEP, "methods": {"pgdqp": {"step_size": []}}},
     "methods.pgdqp.step_size (line 7): [] (an empty grid: expected a value or a list of at least one)"),
    ({**SWEEP, "problems": {"quadratic": {"dim_x": []}}},
     "problems.quadratic.dim_x (line 5): [] (an empty grid: expected a value or a list of at least one)"),
    ({**SWEEP, "seeds": []}, "seeds (line 7): [] (expected at least one seed)"),
    ({**SWEEP, "plot": {"metrics": []}}, "plot.metrics (line 8): [] (expected a non-empty list of column names, "
                                         "e.g. [f, h])"),
])
def test_empty_lists_name_the_key_and_line(tmp_path, config, message, capsys):
    path = write_config(tmp_path, config)
    assert error_of(["sweep", str(path), "--out", str(tmp_path / "o")], capsys) == f"Invalid value: {path}: {message}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("metric, meant", [("distance_to_solutoin", "distance_to_solution"), ("lamda", "lambda"),
                                           ("verified_distance", "verified_distance_to_solution")])
def test_plot_metrics_must_be_columns_the_runs_will_have(tmp_path, metric, meant, capsys):
    path = write_config(tmp_path, {**SWEEP, "plot": {"metrics": ["f", metric]}})
    err = error_of(["sweep", str(path), "--out", str(tmp_path / "o")], capsys)
    assert err.startswith(f"Invalid metric: {path}: plot.metrics (line 8): {metric!r} is not a column the runs "
                          f"will have (expected one of alpha, distance_to_solution, eps, f, g, h, iter, ")
    assert err.endswith(f"; did you mean {meant!r}?")
    assert not (tmp_path / "o").exists()


def test_plot_metrics_of_each_problem_and_verified_values_pass_without_building_hyper_cleaning(tmp_path, monkeypatch):
    from bilevel.cli import runner
    config = {**SWEEP, "problems": {"synthetic-sc": {"dim": [2, 3]}, "synthetic-nc": {"dim": 2}},
              "plot": {"metrics": ["hypergradient_norm", "delta_norm", "verified_delta_norm", "lambda"]}}
    assert load_config(write_config(tmp_path, config))["plot"] == config["plot"]
    monkeypatch.setattr(runner, "build_problem", lambda *a, **k: pytest.fail("hyper-cleaning was built"))
    config = {**SWEEP, "problems": {"hyper-cleaning": {"pca": 82}},
              "plot": {"metrics": ["retrained_accuracy", "verified_corruption_auc"]}}
    assert load_config(write_config(tmp_path, config))["plot"] == config["plot"]
    with pytest.raises(ConfigError, match="'retrained_acc' is not a column .*did you mean 'retrained_accuracy'"):
        load_config(write_config(tmp_path, {**config, "plot": {"metrics": ["retrained_acc"]}}))


def test_the_columns_known_before_running_are_every_solvers_columns():
    from bilevel.cli.config import RunSpec, run_columns
    from bilevel.cli.runner import run
    for method in sorted(bilevel.SOLVERS):
        for kkt in ("method", "least_squares"):
            record = run(RunSpec.make("quadratic", {"dim_x": 2, "dim_y": 2}, method, {}, 0, 1, 1, kkt), None,
                         raise_errors=True)
            spec = bilevel.PROBLEMS["quadratic"]
            columns = set(record["final"]) - {*spec.metrics, *spec.scores, *(f"verified_{m}" for m in spec.metrics)}
            assert columns <= set(run_columns()), (method, columns - set(run_columns()))


# ----- counts on the command line: 1e3 and 1_000 are whole numbers, 1.5 is not ---------------------------------
COUNTS = [(RUN, "--max-iter", "max_iter"), (RUN, "--log-every", "log_every"), (RUN, "--seed", "seed"),
          (RUN, "--checkpoint-every", "checkpoint_every"), ([*COMPARE, "--out", "x"], "--seeds", "seeds"),
          (["sweep", "c.yaml", "--out", "x"], "-j", "jobs"), (["sweep", "c.yaml", "--out", "x"], "--dask-workers",
                                                             "dask_workers")]


@pytest.mark.parametrize("argv, flag, dest", COUNTS, ids=[c[1] for c in COUNTS])
def test_counts_accept_exponents_and_underscores_and_refuse_fractions(argv, flag, dest, capsys):
    parser = cli.build_parser()
    for text, value in (("1e3", 1000), ("1_000", 1000), ("2", 2), ("3.0", 3)):
        assert getattr(parser.parse_args([*argv, flag, text]), dest) == value
    assert error_of([*argv, flag, "1.5"], capsys) == f"Invalid {flag}: '1.5' (expected a whole number)"
    assert error_of([*argv, flag, "ten"], capsys) == f"Invalid {flag}: 'ten' (expected a whole number)"
    minimum = 0 if flag in ("--max-iter", "--seed") else 1
    assert error_of([*argv, flag, str(minimum - 1)], capsys) == (
        f"Invalid {flag}: '{minimum - 1}' (expected a whole number >= {minimum})")


def test_a_start_outside_its_box_is_an_error():
    def f(x, y):
        return ((x - 1) ** 2).sum() + (y ** 2).sum()

    def g(x, y):
        return ((y - x) ** 2).sum()
    inside = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    outside = torch.tensor([0.5, 2.0, -3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^Invalid y0: 2 of its 3 entries are outside y_bounds, the first 2 "
                                         r"\(flat index 1\) not in \[0, 1\]"):
        bilevel.BilevelProblem(f, g, inside, outside, y_bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"^Invalid x0: 1 of its 3 entries are outside x_bounds, the first -3 "
                                         r"\(flat index 2\) not in \[-1, inf\]"):
        bilevel.BilevelProblem(f, g, outside, inside, x_bounds=(-1.0, None))
    on_the_bounds = bilevel.BilevelProblem(f, g, inside, inside, x_bounds=(0.0, 1.0), y_bounds=(0.0, 1.0))
    assert torch.equal(on_the_bounds.y0, inside) and torch.equal(on_the_bounds.x0, inside)
