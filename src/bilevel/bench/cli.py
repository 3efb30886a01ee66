"""The `bilevel` command line: list, run, compare.

    bilevel list
    bilevel run --problem synthetic-sc --method pgdqp --max-iter 2000 --set step_size=0.05 --out runs/sc
    bilevel compare --problem coreset --methods pgdqp,sgf --seeds 3 --max-iter 2000 --out runs/coreset
    torchrun --nproc-per-node 2 -m bilevel run --problem toy-cleaning --method pgdqp --distributed
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .. import PROBLEMS, SOLVERS, distributed, solve
from ..problems import closest_name
from ..solve import KKT_MODES, make_solver
from . import store
from .plot import X_AXES, plot_metrics
from .sweep import DTYPES, ConfigError, problem_kwargs

class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_value(text: str) -> Any:
    """'0.1' -> 0.1, '1e-3' -> 0.001, 'true' -> True, 'none' -> None, 'grad' -> 'grad'."""
    if text.strip().lower() == "none":
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; a malformed item is an error naming the flag."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"Invalid {flag}: {item!r} (expected KEY=VALUE, e.g. {flag} step_size=0.1)")
        out[key.strip()] = parse_value(value)
    return out


def _hint(name: Any, valid: Sequence[str]) -> str:
    near = closest_name(name, valid)
    return f"; did you mean {near!r}?" if near is not None and near != name else ""


def _lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise CLIError(f"Invalid {what}: {name!r} (expected one of {', '.join(sorted(registry))})"
                       f"{_hint(name, list(registry))}")
    return registry[name]


def parse_problem_args(items: Sequence[str] | None, seed_flag: str) -> dict[str, Any]:
    """--problem-arg items; seed and device have flags of their own, which would silently win."""
    args = parse_assignments(items, "--problem-arg")
    for key, flag in (("seed", seed_flag), ("device", "--device")):
        if key in args:
            raise CLIError(f"Invalid --problem-arg: {key!r} (use {flag})")
    return args


def build_problem(name: str, seed: int, args: dict[str, Any], device: str | None = None):
    """PROBLEMS[name](seed=seed, **args), with argument errors that name the argument.

    A dtype given by name ('float32', 'float64') becomes the torch dtype.
    """
    builder = _lookup(PROBLEMS, name, "--problem")
    params = inspect.signature(builder).parameters
    unknown = [k for k in args if k not in params]
    if unknown:
        valid = [p for p in params if p != "seed"]
        raise CLIError(f"Invalid --problem-arg for {name}: {unknown[0]!r} (valid: {', '.join(valid)})"
                       f"{_hint(unknown[0], valid)}")
    dtype = args.get("dtype")
    if "dtype" in args and not isinstance(dtype, torch.dtype) and not (isinstance(dtype, str) and dtype in DTYPES):
        raise CLIError(f"Invalid --problem-arg dtype: {dtype!r} (expected one of {', '.join(DTYPES)})"
                       f"{_hint(dtype, list(DTYPES))}")
    kwargs = problem_kwargs(args)
    if "seed" in params:
        kwargs["seed"] = seed
    if device is not None and "device" in params:
        kwargs["device"] = device
    return builder(**kwargs)


def check_device(text: str | None) -> str | None:
    """--device, checked before anything runs: a torch device that this machine has."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        hint = "; did you mean 'cuda'?" if text.strip().lower() == "gpu" else ""
        raise CLIError(f"Invalid --device: {text!r} (expected cpu, cuda or cuda:N){hint}") from None
    if device.type == "meta":
        raise CLIError(f"Invalid --device: {text!r} (meta tensors hold no values; expected cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"Invalid --device: {text!r} (CUDA is not available on this machine)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CLIError(f"Invalid --device: {text!r} (this machine has {count} CUDA device"
                           f"{'s' if count != 1 else ''}: cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":
        available = getattr(getattr(torch, device.type, None), "is_available", None)
        if callable(available) and not available():
            raise CLIError(f"Invalid --device: {text!r} ({device.type} is not available on this machine)")
    return text


def prepare_out(path: str | Path, flag: str = "--out") -> Path:
    """Create the output directory before anything runs, so that no computed result is lost."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"Invalid {flag}: {str(path)!r} is a file (expected a directory for the results)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"Invalid {flag}: {str(path)!r} cannot be created ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"Invalid {flag}: {str(path)!r} is not writable")
    return out


def _os_message(exc: OSError) -> str:
    """'No such file or directory: '/x'' for an OSError from the system; the message itself otherwise."""
    if exc.strerror and exc.filename is not None:
        files = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        return f"{exc.strerror}: {files}"
    return str(exc) or type(exc).__name__


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of rows (floats to 4 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----- commands -------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    print("Solvers (bilevel run --method NAME):")
    for name, cls in sorted(SOLVERS.items()):
        print(f"  {name:<12} {cls.summary}")
    print("\nProblems (bilevel run --problem NAME):")
    for name, builder in sorted(PROBLEMS.items()):
        print(f"  {name:<16} {_first_line(builder)}")
    return 0


def _solver_options(text_items: Sequence[str] | None) -> dict[str, Any]:
    return parse_assignments(text_items, "--set")


def _make_solver(method: str, options: dict[str, Any]):
    """The solver object, built before anything runs; errors name the option."""
    try:
        return make_solver(method, options)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _run_one(problem_name: str, solver, seed: int, problem_args: dict[str, Any],
             max_iter: int, log_every: int, tol: float | None, progress: bool, device: str | None,
             data_parallel: bool = False, kkt: str = "method", checkpoint: str | None = None,
             checkpoint_every: int = 100):
    problem = build_problem(problem_name, seed, problem_args, device)
    start = time.perf_counter()
    result = solve(problem, solver, max_iter=max_iter, log_every=log_every, tol=tol, progress=progress, seed=seed,
                   distributed=data_parallel, kkt=kkt, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    return problem, solver, result, time.perf_counter() - start


def _summary_row(method: str, seed: int, result, wall: float) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "seed": seed, "status": result.status.name, "iters": result.n_iter}
    skip = {"iter", "time", "n_f", "n_g", "n_grad_f", "n_grad_g", "n_hvp", "lambda", "step_size", "alpha"}
    row.update({k: v[-1] for k, v in result.history.items() if k not in skip})
    row["wall_s"] = wall
    return row


def _init_distributed(args: argparse.Namespace) -> dict[str, int]:
    """With --distributed: join torchrun's process group; this rank's shard {rank, world_size}."""
    if not args.distributed:
        return {}
    params = inspect.signature(_lookup(PROBLEMS, args.problem, "--problem")).parameters
    if not {"rank", "world_size"} <= set(params):
        raise CLIError(f"Invalid --problem with --distributed: {args.problem!r} cannot be sharded "
                       "(its builder takes no rank/world_size arguments)")
    rank, world_size, args.device = distributed.init_from_env(args.device, args.dist_timeout)
    return {"rank": rank, "world_size": world_size}


def cmd_run(args: argparse.Namespace) -> int:
    options = _solver_options(args.set)
    problem_args = parse_problem_args(args.problem_arg, "--seed")
    check_device(args.device)
    _lookup(PROBLEMS, args.problem, "--problem")
    _lookup(SOLVERS, args.method, "--method")
    solver = _make_solver(args.method, options)
    if args.out:
        prepare_out(args.out)
    if args.checkpoint:  # a directory there is an error of checkpoint.load, before the run
        parent = Path(args.checkpoint).parent
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"Invalid --checkpoint: {args.checkpoint!r} (its directory {str(parent)!r} is a file)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"Invalid --checkpoint: {args.checkpoint!r} (its directory cannot be created: "
                           f"{exc.strerror or exc})") from None
    shard = _init_distributed(args)
    problem, solver, result, wall = _run_one(args.problem, solver, args.seed,
                                             {**problem_args, **shard}, args.max_iter, args.log_every, args.tol,
                                             not args.no_progress, args.device, args.distributed, kkt=args.kkt,
                                             checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    if shard.get("rank", 0) != 0:  # only rank 0 prints and writes
        distributed.shutdown()
        return 0 if result.status.name != "DIVERGED" else 1
    row = _summary_row(args.method, args.seed, result, wall)
    print(format_table([row], list(row)))
    print(f"\nstatus: {result.message}")
    if args.out:
        out = Path(args.out)
        frame = store.tidy(result, method=args.method, problem=args.problem, seed=args.seed, run_id="run",
                           hyperparameters=_hyperparameters(solver), **store.provenance(args.device))
        store.write_atomic(frame, out / "history.parquet")
        store.write_json_atomic({
            "config": {"problem": args.problem, "problem_args": problem_args, "method": args.method,
                       "options": options, "hyperparameters": _hyperparameters(solver), "seed": args.seed,
                       "max_iter": args.max_iter, "log_every": args.log_every, "tol": args.tol,
                       "world_size": shard.get("world_size", 1)},
            "status": result.status.name, "message": result.message, "n_iter": result.n_iter,
            "wall_time_s": wall, "final": {k: v[-1] for k, v in result.history.items()},
            "provenance": store.provenance(args.device)}, out / "summary.json")
        print(f"wrote {out / 'history.parquet'} and {out / 'summary.json'}")
    distributed.shutdown()
    return 0 if result.status.name != "DIVERGED" else 1


def _hyperparameters(solver) -> dict[str, Any]:
    import dataclasses
    return {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)
            if isinstance(getattr(solver, f.name), (int, float, str, bool, type(None)))}


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CLIError(f"Invalid --methods: {args.methods!r} (expected a comma-separated list, e.g. pgdqp,sgf)")
    for m in methods:
        _lookup(SOLVERS, m, "--methods entry")
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in parse_assignments(args.set, "--set").items():
        method, dot, option = key.partition(".")
        if not dot or method not in per_method:
            raise CLIError(f"Invalid --set: {key!r} (expected METHOD.OPTION=VALUE with METHOD one of {', '.join(methods)})")
        per_method[method][option] = value
    problem_args = parse_problem_args(args.problem_arg, "--seeds")
    if args.seeds < 1:
        raise CLIError(f"Invalid --seeds: {args.seeds} (expected an integer >= 1)")
    # everything that can be wrong is checked before the first run
    solvers = {method: _make_solver(method, per_method[method]) for method in methods}
    check_device(args.device)
    _lookup(PROBLEMS, args.problem, "--problem")
    out = prepare_out(args.out)
    metrics = None
    if args.metrics is not None:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise CLIError(f"Invalid --metrics: {args.metrics!r} (expected comma-separated column names, e.g. f,h)")
    frames, rows = [], []
    for method, solver in solvers.items():
        for seed in range(args.seeds):
            problem, _, result, wall = _run_one(args.problem, solver, seed, problem_args, args.max_iter,
                                                args.log_every, None, False, args.device, kkt=args.kkt)
            frames.append(store.tidy(result, method=method, problem=args.problem, seed=seed,
                                     run_id=f"{method}-{seed}", hyperparameters=_hyperparameters(solver),
                                     **store.provenance(args.device)))
            rows.append(_summary_row(method, seed, result, wall))
            print(f"  {method} seed {seed}: {result.status.name} in {wall:.1f}s", file=sys.stderr)
    frame = pd.concat(frames, ignore_index=True)
    store.write_atomic(frame, out / "results.parquet")
    metrics = metrics or _default_metrics(frame)
    unknown = [m for m in metrics if m not in frame.columns]
    if unknown:  # the runs are saved: only the plot and table are missing
        raise CLIError(f"Invalid --metrics entry: {unknown[0]!r} (columns: {', '.join(sorted(frame.columns))})"
                       f"{_hint(unknown[0], sorted(frame.columns))}; the runs are saved in {out / 'results.parquet'}")
    references = problem.info.get("reference_lines")
    lines = references() if callable(references) else None
    png = plot_metrics(frame, metrics, out / f"compare_{args.x}.png", x=args.x, title=problem.name,
                       reference_lines=lines)
    columns = ["method", "seed", "status", "iters"] + [m for m in metrics if any(m in r for r in rows)] + ["wall_s"]
    print(format_table(summarise(rows, columns),
                       ["method", "runs"] + [c for c in columns if c not in ("method", "seed", "status")]))
    if lines:
        print("\nreference lines: " + "; ".join(f"{label} {value:.4g}" for label, value in next(iter(lines.values())).items()))
    print(f"\nwrote {out / 'results.parquet'} and {png}")
    return 0


def _runs(group: list[dict[str, Any]]) -> str:
    """'3', or '3 (1 diverged)': the status count of one method's runs."""
    diverged = sum(r.get("status") == "DIVERGED" for r in group)
    return f"{len(group)}" + (f" ({diverged} diverged)" if diverged else "")


def summarise(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method: how many runs (and how many diverged), and the mean and standard
    deviation over seeds of each numeric column (inf when a run diverged to inf)."""
    import numpy as np
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        row: dict[str, Any] = {"method": method, "runs": _runs(group)}
        for c in columns:
            values = [r[c] for r in group if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)]
            if c in ("method", "seed", "status") or not values:
                continue
            if len(values) > 1:
                with np.errstate(all="ignore"):
                    array = np.asarray(values, dtype=float)
                    row[c] = f"{array.mean():.4g} ± {array.std(ddof=1):.2g}"
            else:
                row[c] = values[0]
        out.append(row)
    return out


def _default_metrics(frame) -> list[str]:
    preferred = ["retrained_accuracy", "test_accuracy", "val_loss", "corruption_auc", "hypergradient_norm",
                 "upper_objective", "delta_norm", "distance_to_solution", "f", "h"]
    present = [m for m in preferred if m in frame.columns and frame[m].notna().any()]
    return present[:4]


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_config, read_results, run_sweep
    config = load_config(args.config)
    if args.jobs < 1:
        raise CLIError(f"Invalid -j: {args.jobs} (expected an integer >= 1)")
    records = run_sweep(config, args.out, jobs=args.jobs, scheduler=args.scheduler, dask_workers=args.dask_workers,
                        resume=args.resume, progress=not args.no_progress)
    failed = [r for r in records if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['method']} on {r['problem']} seed {r['seed']} ({r['run_id']}): {r['error']}", file=sys.stderr)
    if failed and len(failed) == len(records):  # no table to show: say why instead
        what = f"all {len(failed)} runs failed; first" if len(failed) > 1 else "the 1 run failed"
        print(f"bilevel: error: {what}: {failed[0]['error']}", file=sys.stderr)
        return 1
    frame = read_results(args.out)
    metrics = (config.get("plot") or {}).get("metrics") or _default_metrics(frame)
    print(format_table(store.summary_table(frame, metrics), ["problem", "method", "config", "runs"] + metrics))
    plot = config.get("plot") or {}
    if plot.get("metrics"):
        for path in _plot_dir(frame, args.out, plot["metrics"], plot.get("x", "iter"), plot["metrics"][0], None):
            print(f"wrote {path}")
    print(f"{len(records)} runs this time ({len(failed)} failed); results in {args.out}")
    return 1 if failed else 0


def _plot_dir(frame, out: str, metrics: list[str], x: str, select_by: str | None, mode: str | None) -> list[Path]:
    if select_by:
        frame = store.select_best(frame, select_by, mode)
    paths = []
    for (problem, args), sub in frame.groupby(["problem", "problem_args"]):
        built = build_problem(problem, 0, json.loads(args))
        references = built.info.get("reference_lines")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in problem + ("" if args == "{}" else args))
        paths.append(plot_metrics(sub, metrics, Path(out) / f"plot_{safe}_{x}.png", x=x,
                                  title=built.name,
                                  reference_lines=references() if callable(references) else None))
    return paths


def cmd_plot(args: argparse.Namespace) -> int:
    from .sweep import read_results
    frame = read_results(args.dir)
    for path in _plot_dir(frame, args.dir, args.metric, args.x, args.select_by or args.metric[0], args.mode):
        print(f"wrote {path}")
    return 0


def _check_results_file(path: str) -> None:
    """--results is a Markdown file in an existing directory (checked before the table is made)."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"Invalid --results: {path!r} is a directory (expected a Markdown file, e.g. RESULTS.md)")
    if not target.parent.is_dir():
        raise CLIError(f"Invalid --results: {path!r} (no directory {str(target.parent)!r} to write it in)")


def cmd_table(args: argparse.Namespace) -> int:
    from .report import command, machine, update_section
    from .sweep import read_manifest, read_results
    if args.results:
        _check_results_file(args.results)
    frame = read_results(args.dir)
    metrics = args.metrics.split(",") if args.metrics else _default_metrics(frame)
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        raise CLIError(f"Invalid --metrics entry: {missing[0]!r} (columns: {', '.join(sorted(frame.columns))})")
    rows = store.summary_table(frame, metrics)
    walls: dict[tuple, list[float]] = {}
    for r in read_manifest(args.dir):
        if r.get("status") == "finished" and "wall_s" in r:
            problem_args = json.dumps(r["problem_args"], sort_keys=True, default=str)
            problem = r["problem"] + ("" if problem_args == "{}" else f" {problem_args}")  # as in summary_table
            key = (problem, r["method"], json.dumps(r["options"], sort_keys=True, default=str))
            walls.setdefault(key, []).append(r["wall_s"])
    for row in rows:
        times = walls.get((row["problem"], row["method"], row["config"]))
        row["wall s / run"] = sum(times) / len(times) if times else float("nan")
    table = format_table(rows, ["problem", "method", "config", "runs"] + metrics + ["wall s / run"])
    print(table)
    if args.results:
        title = args.title or f"Sweep {args.dir}"
        text = "\n".join([f"## {title}", "", f"Command: `{command()}` (after `bilevel sweep` into {args.dir})  ",
                          f"Machine: {machine()}  ", "Final values: mean ± standard deviation over seeds.", "", table])
        update_section(args.results, f"table {args.dir}", text)
        print(f"wrote a section of {args.results}")
    return 0


# ----- argument parsing ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Gradient-based bilevel optimization.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list solvers and problems")
    p.set_defaults(func=cmd_list)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--problem", required=True, help="a problem name (see `bilevel list`)")
        p.add_argument("--problem-arg", action="append", metavar="KEY=VALUE", help="an argument of the problem builder")
        p.add_argument("--max-iter", type=int, default=1000, help="outer iterations (default 1000)")
        p.add_argument("--log-every", type=int, default=10, help="log every N iterations (default 10)")
        p.add_argument("--device", default=None, help="torch device for the problem's data (default cpu)")
        p.add_argument("--kkt", default="method", choices=list(KKT_MODES),
                       help="KKT residuals at logged iterations: the method's multiplier (default), the "
                            "least-squares one for every method (comparable, about 100 products a row), or none")

    p = sub.add_parser("run", help="run one method on one problem")
    common(p)
    p.add_argument("--method", required=True, help="a solver name (see `bilevel list`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a solver hyperparameter, e.g. step_size=0.1")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem and the solver (default 0)")
    p.add_argument("--tol", type=float, default=None, help="stop when both KKT residuals are <= tol")
    p.add_argument("--out", default=None, help="directory for history.parquet and summary.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of `torchrun --nproc-per-node N -m bilevel run ...`: "
                        "gloo on CPU, NCCL on CUDA; rank 0 prints and writes")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="with --distributed: seconds a rank waits for the others before the run fails (default 300)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run there every --checkpoint-every iterations; rerun to continue from it")
    p.add_argument("--checkpoint-every", type=int, default=100, help="iterations between checkpoints (default 100)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run several methods over seeds, write a tidy table and a plot")
    common(p)
    p.add_argument("--methods", required=True, help="comma-separated solver names")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..K-1 (default 3)")
    p.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="a hyperparameter of one method")
    p.add_argument("--metrics", default=None, help="comma-separated columns to plot (default: the problem's)")
    p.add_argument("--x", default="iter", choices=list(X_AXES), help="x axis of the plot (default iter)")
    p.add_argument("--out", required=True, help="directory for results.parquet and the PNG")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="run a YAML grid of problems x methods x hyperparameters x seeds")
    p.add_argument("config", help="the YAML config (see bilevel.bench.sweep)")
    p.add_argument("--out", required=True, help="results directory (one Parquet file per run + manifest)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--dask-workers", type=int, default=None, help="start a local Dask cluster with N workers")
    p.add_argument("--resume", action="store_true", help="skip runs already finished in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="plot a sweep: median and quantile band over seeds per method")
    p.add_argument("dir", help="a sweep's results directory")
    p.add_argument("--metric", action="append", required=True, help="a column to plot (repeatable)")
    p.add_argument("--x", default="iter", choices=list(X_AXES), help="x axis (default iter)")
    p.add_argument("--select-by", default=None, help="pick each method's best configuration by this final metric "
                                                     "(default: the first --metric)")
    p.add_argument("--mode", default=None, choices=["min", "max"], help="best = min or max (default by name)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("table", help="the final-metric table of a sweep, in Markdown")
    p.add_argument("dir", help="a sweep's results directory")
    p.add_argument("--metrics", default=None, help="comma-separated columns (default: the problem's)")
    p.add_argument("--results", default=None, help="also write the table as a section of this Markdown file")
    p.add_argument("--title", default=None, help="the section's title (with --results)")
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ConfigError) as exc:
        print(f"bilevel: error: {exc}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as exc:  # bad hyperparameters or problem arguments
        print(f"bilevel: error: {exc}", file=sys.stderr)
        return 2
    except distributed.DistributedError as exc:  # another rank stopped or failed
        print(f"bilevel: error: {exc}", file=sys.stderr)
        distributed.shutdown()
        return 1
    except OSError as exc:  # last resort: a file or directory that cannot be read or written
        print(f"bilevel: error: {_os_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
