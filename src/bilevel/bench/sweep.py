"""Sweeps: a YAML config expanded into runs, executed by local processes or a Dask cluster,
each finished run written atomically so that a killed sweep resumes without loss or duplicates.

Config (YAML):

    name: coreset-grid
    max_iter: 500
    log_every: 50
    seeds: 3                       # a count (0..2) or a list [0, 5, 7]
    kkt: method                    # KKT residuals at logged iterations: method, least_squares or none
    problems:
      coreset: {}                  # builder arguments; a list is a grid (dtype: float32 or float64)
      synthetic-sc: {dim: [10, 20]}
    methods:
      pgdqp: {schedule: [constant, diminishing], step_size: 0.05}
      sgf: {}
    plot: {metrics: [upper_objective], x: iter}
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

from .. import PROBLEMS, SOLVERS
from ..problems import closest_name
from ..solve import KKT_MODES, make_solver
from . import store
from .plot import X_AXES

TOP_KEYS = {"name": str, "max_iter": int, "log_every": int, "seeds": (int, list), "kkt": str,
            "problems": dict, "methods": dict, "plot": dict, "description": str}
PLOT_KEYS = {"metrics": list, "x": str}
REQUIRED = ("max_iter", "problems", "methods")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A mistake in a sweep config; the message says where."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything that determines its result."""

    problem: str
    problem_args: tuple
    method: str
    options: tuple
    seed: int
    max_iter: int
    log_every: int
    kkt: str

    @property
    def run_id(self) -> str:
        """A stable id: a hash of the full configuration."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "problem": self.problem, "problem_args": dict(self.problem_args),
                "method": self.method, "options": dict(self.options), "seed": self.seed,
                "max_iter": self.max_iter, "log_every": self.log_every, "kkt": self.kkt}


# ----- reading and checking a config ---------------------------------------------------------
def _lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Key path -> line number (1-based) for every mapping key in a composed YAML document."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            p = path + (key.value,)
            out[p] = key.start_mark.line + 1
            out.update(_lines(value, p))
    return out


def _where(source: str, lines: dict[tuple, int], path: tuple) -> str:
    line = lines.get(path)
    key = ".".join(map(str, path)) or "(top level)"
    return f"{source}: {key}" + (f" (line {line})" if line else "")


def _suggest(name: str, valid: Iterable[str]) -> str:
    near = closest_name(name, valid)
    return f"; did you mean {near!r}?" if near is not None and near != name else ""


def problem_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """Builder arguments from a config or the command line: a dtype name becomes the torch dtype."""
    dtype = args.get("dtype")
    if isinstance(dtype, str) and dtype in DTYPES:
        return {**args, "dtype": DTYPES[dtype]}
    return dict(args)


def _duplicate_keys(node: yaml.Node | None, source: str, seen: set[int] | None = None) -> None:
    """Raise on a mapping that repeats a key (PyYAML would silently keep the last one)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:      # an alias refers to a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    raise ConfigError(f"Invalid config: {source}: duplicate key {key.value!r} "
                                      f"(line {key.start_mark.line + 1})")
                keys.add(key.value)
            _duplicate_keys(value, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, source, seen)


def _type_name(t: Any) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep config; errors say where in the file and suggest a valid name."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Invalid config: {str(path)!r} (no such file)")
    if path.is_dir():
        raise ConfigError(f"Invalid config: {str(path)!r} is a directory (expected a YAML file such as "
                          f"configs/fig5_coreset.yaml)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Invalid config: {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        node = yaml.compose(text)
        _duplicate_keys(node, str(path))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Invalid config: {path}: not valid YAML ({exc})") from None
    return check_config(raw, str(path), _lines(node) if node is not None else {})


def check_config(raw: Any, source: str = "<config>", lines: dict[tuple, int] | None = None) -> dict[str, Any]:
    """Validate a config mapping (see the module docstring)."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: {source}: expected a mapping with keys {', '.join(REQUIRED)}")
    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise ConfigError(f"Invalid key: {_where(source, lines, (key,))}: unknown key {key!r}{_suggest(key, TOP_KEYS)}")
        expected = TOP_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"Invalid value: {_where(source, lines, (key,))}: {value!r} "
                              f"(expected {_type_name(expected)})")
    for key in REQUIRED:
        if key not in raw:
            raise ConfigError(f"Invalid config: {source}: missing key {key!r}")
    if raw.get("kkt", "method") not in KKT_MODES:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('kkt',))}: {raw['kkt']!r} "
                          f"(expected one of {', '.join(KKT_MODES)}){_suggest(raw['kkt'], KKT_MODES)}")
    for key in ("max_iter", "log_every"):
        if key in raw and raw[key] < 1:
            raise ConfigError(f"Invalid value: {_where(source, lines, (key,))}: {raw[key]!r} (expected >= 1)")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"Invalid value: {_where(source, lines, ('seeds',))}: {seeds!r} (expected a list of integers)")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('seeds',))}: {seeds!r} (expected >= 1)")
    raw = {**raw, "problems": _numbers(raw["problems"]), "methods": _numbers(raw["methods"])}
    _check_section(raw, "problems", PROBLEMS, "problem", "builder argument",
                   lambda name: [p for p in inspect.signature(PROBLEMS[name]).parameters if p != "seed"], source, lines)
    _check_section(raw, "methods", SOLVERS, "solver", "hyperparameter", lambda name: SOLVERS[name].options(),
                   source, lines)
    for name, args in raw["problems"].items():
        for dtype in _values((args or {}).get("dtype")):
            if dtype is not None and not (isinstance(dtype, str) and dtype in DTYPES):
                raise ConfigError(f"Invalid value: {_where(source, lines, ('problems', name, 'dtype'))}: {dtype!r} "
                                  f"(expected one of {', '.join(DTYPES)}){_suggest(dtype, DTYPES)}")
    for name, options in raw["methods"].items():
        where = _where(source, lines, ("methods", name))
        for combo in _grid(options):                      # every grid point must build
            try:
                make_solver(name, combo)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Invalid hyperparameters: {where}: {exc}") from None
    for key, value in (raw.get("plot") or {}).items():
        if key not in PLOT_KEYS:
            raise ConfigError(f"Invalid key: {_where(source, lines, ('plot', key))}: unknown key {key!r}"
                              f"{_suggest(key, PLOT_KEYS)}")
        if not isinstance(value, PLOT_KEYS[key]):
            raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', key))}: {value!r} "
                              f"(expected {_type_name(PLOT_KEYS[key])})")
    plot = raw.get("plot") or {}
    if "x" in plot and plot["x"] not in X_AXES:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', 'x'))}: {plot['x']!r} "
                          f"(expected one of {', '.join(X_AXES)}){_suggest(plot['x'], X_AXES)}")
    if not all(isinstance(m, str) for m in plot.get("metrics", [])):
        raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', 'metrics'))}: {plot['metrics']!r} "
                          f"(expected a list of column names, e.g. [f, h])")
    return raw


def _values(value: Any) -> list[Any]:
    """A grid entry's values: the list itself, or the one value."""
    return value if isinstance(value, list) else [value]


_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(section: dict[str, Any]) -> dict[str, Any]:
    """Numbers such as 1e-3 (YAML 1.1 reads them as strings: no dot) become floats."""
    def number(value: Any) -> Any:
        if isinstance(value, list):
            return [number(v) for v in value]
        return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.match(value) else value
    return {name: ({k: number(v) for k, v in mapping.items()} if isinstance(mapping, dict) else mapping)
            for name, mapping in section.items()}


def _check_section(raw: dict, section: str, registry: dict, what: str, entry: str, valid_keys, source: str,
                   lines: dict[tuple, int]) -> None:
    """Each name of raw[section] is in the registry, maps to a mapping, whose keys are valid."""
    for name, mapping in raw[section].items():
        where = _where(source, lines, (section, name))
        if name not in registry:
            raise ConfigError(f"Invalid {what}: {where}: {name!r} is not a {what}{_suggest(name, registry)}")
        if mapping is not None and not isinstance(mapping, dict):
            raise ConfigError(f"Invalid value: {where}: {mapping!r} (expected a mapping of {entry}s, "
                              f"e.g. {{}}, or nothing)")
        valid = valid_keys(name)
        for key in mapping or {}:
            if key not in valid:
                raise ConfigError(f"Invalid {entry}: {_where(source, lines, (section, name, key))}: "
                                  f"{key!r} is not a {entry} of {name}{_suggest(key, valid)}")


def _grid(mapping: dict[str, Any] | None) -> list[dict[str, Any]]:
    """{'a': [1, 2], 'b': 3} -> [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]."""
    mapping = mapping or {}
    keys = sorted(mapping)
    values = [mapping[k] if isinstance(mapping[k], list) else [mapping[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def expand(config: dict[str, Any]) -> list[RunSpec]:
    """All runs of a config: problems x problem-argument grid x methods x option grid x seeds."""
    seeds = config.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    runs = []
    for problem, args in config["problems"].items():
        for problem_args in _grid(args):
            for method, options in config["methods"].items():
                for opts in _grid(options):
                    for seed in seeds:
                        runs.append(RunSpec(problem, tuple(sorted(problem_args.items())), method,
                                            tuple(sorted(opts.items())), seed, config["max_iter"],
                                            config.get("log_every", 10), config.get("kkt", "method")))
    return runs


# ----- running --------------------------------------------------------------------------------
def run_and_write(spec: RunSpec, out: str) -> dict[str, Any]:
    """Run one spec and write its tidy history atomically to OUT/runs/<run_id>.parquet.

    Runs in a worker (local process or Dask worker); returns a small record for the manifest.
    Any exception is caught and returned as a failed record.
    """
    from .. import solve
    start = time.perf_counter()
    record = spec.describe()
    try:
        problem = PROBLEMS[spec.problem](seed=spec.seed, **problem_kwargs(dict(spec.problem_args)))
        solver = make_solver(spec.method, dict(spec.options))
        result = solve(problem, solver, max_iter=spec.max_iter, log_every=spec.log_every, kkt=spec.kkt,
                       seed=spec.seed)
        hyper = {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)
                 if isinstance(getattr(solver, f.name), (int, float, str, bool, type(None)))}
        columns = {f"hp_{k}": v for k, v in dict(spec.options).items()}
        frame = store.tidy(result, run_id=spec.run_id, method=spec.method, problem=spec.problem,
                           problem_args=dict(spec.problem_args), seed=spec.seed, hyperparameters=hyper,
                           config=json.dumps(dict(spec.options), sort_keys=True, default=str),
                           **columns, **store.provenance())
        store.write_atomic(frame, Path(out) / "runs" / f"{spec.run_id}.parquet")
        record.update(status="finished", result_status=result.status.name, rows=len(frame))
    except Exception as exc:  # a failed run is recorded, the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    record["wall_s"] = time.perf_counter() - start
    return record


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    """The manifest's records (a torn last line from a killed process is ignored)."""
    path = Path(out) / "manifest.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _append_manifest(out: Path, record: dict[str, Any]) -> None:
    """Append one JSON line, flushed and fsynced. A torn last line (a process killed while
    writing) is closed first, so that it cannot swallow the record appended after it."""
    path = out / "manifest.jsonl"
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a") as fh:
        fh.write(("\n" if torn else "") + json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def finished_ids(out: str | Path) -> set[str]:
    """Runs whose result file exists (written atomically, so complete)."""
    return {p.stem for p in (Path(out) / "runs").glob("*.parquet")}


def run_sweep(config: dict[str, Any], out: str | Path, *, jobs: int = 1, scheduler: str | None = None,
              dask_workers: int | None = None, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run every spec of a config not yet finished in OUT; returns the new manifest records.

    Args:
        jobs: local worker processes (1: in this process).
        scheduler: address of a running Dask scheduler (e.g. "tcp://10.0.0.5:8786").
        dask_workers: start a local Dask cluster with this many worker processes.
        resume: skip runs already finished in OUT (without it, OUT must hold no results).
    """
    from tqdm.auto import tqdm
    out = Path(out)
    specs = expand(config)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Invalid --out: {str(out)!r} is a file (expected a directory for the results)")
    done = finished_ids(out)
    if done and not resume:
        raise ConfigError(f"Invalid --out: {str(out)!r} already holds {len(done)} finished runs "
                          f"(use --resume to continue that sweep, or another directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Invalid --out: {str(out)!r} cannot be created ({exc.strerror or exc})") from None
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    recorded = {r["run_id"] for r in read_manifest(out) if r.get("status") == "finished"}
    for run_id in done - recorded:          # killed between the file's rename and its manifest line
        spec = next((s for s in specs if s.run_id == run_id), None)
        if spec is not None:
            _append_manifest(out, {**spec.describe(), "status": "finished", "recovered": True})
    todo = [s for s in specs if s.run_id not in done]
    counts = {"finished": len(specs) - len(todo), "failed": 0, "running": 0}
    bar = tqdm(total=len(specs), initial=counts["finished"], disable=not progress, desc="runs")
    records = []

    def collect(record: dict[str, Any]) -> None:
        _append_manifest(out, record)
        counts["finished" if record["status"] == "finished" else "failed"] += 1
        bar.update(1)
        bar.set_postfix(counts, refresh=True)
        records.append(record)

    for record in _execute(todo, str(out), jobs, scheduler, dask_workers, counts):
        collect(record)
    bar.close()
    return records


def _execute(specs: list[RunSpec], out: str, jobs: int, scheduler: str | None, dask_workers: int | None,
             counts: dict[str, int], run=None):
    """Yield records as runs finish, from the chosen executor (one code path per run).

    `counts["running"]` is kept at min(free slots, runs outstanding). A run whose worker
    dies (killed, out of memory) yields a failed record instead of stopping the sweep.
    `run(spec, out) -> record` is what the workers execute (default `run_and_write`).
    """
    run = run or run_and_write
    if scheduler or dask_workers:
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = None
        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            client = Client(cluster)
            client.run(torch.set_num_threads, threads_per_worker(dask_workers))
        try:
            slots = max(sum(client.nthreads().values()), 1)
            futures = {client.submit(run, spec, out, pure=False, key=f"run-{spec.run_id}"): spec
                       for spec in specs}
            yield from _collect(futures, as_completed(futures), slots, counts)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif jobs > 1:
        import concurrent.futures
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=torch.set_num_threads,
                                                    initargs=(threads_per_worker(jobs),)) as pool:
            futures = {pool.submit(run, spec, out): spec for spec in specs}
            yield from _collect(futures, concurrent.futures.as_completed(futures), jobs, counts)
    else:
        for i, spec in enumerate(specs):
            counts["running"] = 1
            record = run(spec, out)
            counts["running"] = min(1, len(specs) - i - 1)
            yield record


def threads_per_worker(workers: int) -> int:
    """torch's intra-op threads for each of `workers` processes on this machine: its cores
    shared out (at least 1). Each process would otherwise start a thread per core, and the
    oversubscribed threads spin against each other (measured with -j 2 on 2 cores: stretches
    of 180 ms per pgdqp iteration on hyper-cleaning PCA 82 where a lone run takes 5 ms)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _collect(futures: dict, finished: Iterable, slots: int, counts: dict[str, int]):
    """Records of futures in the order they finish; an executor error becomes a failed record."""
    outstanding = len(futures)
    counts["running"] = min(slots, outstanding)
    for future in finished:
        try:
            record = future.result()
        except Exception as exc:  # the worker died or the pool broke: the run failed, the sweep goes on
            record = {**futures[future].describe(), "status": "failed",
                      "error": f"{type(exc).__name__}: {exc} (the worker running it stopped; "
                               f"`--resume` runs it again)"}
        outstanding -= 1
        counts["running"] = min(slots, outstanding)
        yield record


def read_results(out: str | Path):
    """The tidy table of a sweep: one row per (run, logged iteration), for the runs that the
    manifest records as finished (a stray file of another configuration is left out)."""
    import pandas as pd
    finished = {r["run_id"] for r in read_manifest(out) if r.get("status") == "finished"}
    files = sorted(p for p in (Path(out) / "runs").glob("*.parquet") if p.stem in finished)
    if not files:
        raise ConfigError(f"Invalid results directory: {str(out)!r} (no finished runs in {out}/runs)")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
