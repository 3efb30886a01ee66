"""Sweep configs: a YAML file checked field by field (errors say where, with line numbers and
"did you mean"), expanded into `RunSpec`s, one per run.

    name: coreset-grid
    max_iter: 500
    log_every: 50
    seeds: 3                       # a count (0..2) or a list [0, 5, 7]
    kkt: method                    # KKT residuals at logged iterations: method, least_squares or none
    upper_tol: 1e-4                # optional: any setting of bilevel.RunPolicy (tol, verify, verify_tol,
                                   # upper_tol, curvature_tol, resolve_fraction, verify_max_iter)
    problems:
      coreset: {}                  # builder arguments; a list is a grid (dtype: float32 or float64)
      synthetic-sc: {dim: [10, 20]}
      bolib/*: {}                  # a pattern (*, ?, [...]): every registered name it matches
      quadratic: {cond: 100, max_iter: 20000}   # max_iter, log_every: this problem's own
    cases:                         # optional: explicit runs instead of a grid (each with every method)
      - {problem: feature-weight-decay, args: {dataset: wine}, seed: 3, max_iter: 2000}
      - {problem: ring}            # args {}, seed 0, the config's max_iter and log_every
    methods:
      pgdqp: {schedule: [constant, diminishing], step_size: 0.05}
      sgf: {}
      soba: {batch_size: 64}       # minibatches of 64 (a list is a grid; null: all the data)
    batch_size: 64                 # optional: the batch size of every method that names none
    oracle: func                   # optional: the derivative back-end, autograd (default), func or compiled
    plot: {metrics: [upper_objective], x: iter}

A config needs `problems`, `cases` or both (the runs of the grid, then the cases). The run
settings (max_iter, log_every, kkt, tol and the verification's) are those of `bilevel.RunPolicy`,
by the same names and with its defaults; a problem's or a case's own max_iter and log_every
replace the config's.

Everything is checked before the first run, plot metrics included: each must be a column the
runs will have (`run_columns()`, or a metric of one of the problems, or its verified_ value).
All the mistakes found are reported at once.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import inspect
import itertools
import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.checks import suggest
from ..core.oracles import BACKENDS, COUNTERS
from ..core.problem import BilevelProblem
from ..problems import PROBLEMS, resolve
from ..run.history import KKT_MODES, problem_metrics
from ..run.policy import DEFAULT, FIELDS, RunPolicy
from ..run.solve import make_solver
from ..solvers import SOLVERS, diagnostic_columns
from .plot import X_AXES
from .store import VERIFIED_COLUMNS

# the verification's settings of a run (`bilevel.RunPolicy`), besides max_iter, log_every, kkt and tol
VERIFY_SETTINGS = ("verify", "verify_tol", "upper_tol", "curvature_tol", "resolve_fraction", "verify_max_iter")
TOP_KEYS = {"name": str, "max_iter": int, "log_every": int, "seeds": (int, list), "kkt": str, "tol": (int, float),
            "problems": dict, "methods": dict, "plot": dict, "description": str, "batch_size": int,
            "oracle": str, "cases": list, "verify": bool, "verify_tol": (int, float), "upper_tol": (int, float),
            "curvature_tol": (int, float), "resolve_fraction": (int, float), "verify_max_iter": int}
PLOT_KEYS = {"metrics": list, "x": str}
REQUIRED = ("methods",)
# a problem's or a case's own run settings (not builder arguments), and a case's keys
RUN_KEYS = ("max_iter", "log_every")
CASE_KEYS = {"problem": str, "args": dict, "seed": int, "max_iter": int, "log_every": int}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A mistake in a sweep config; the message says where."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: everything that determines its result."""

    problem: str
    problem_args: tuple
    method: str
    options: tuple
    seed: int
    max_iter: int = DEFAULT.max_iter
    log_every: int = DEFAULT.log_every
    kkt: str | None = DEFAULT.kkt
    tol: float | None = DEFAULT.tol
    batch_size: int | None = None          # minibatches of this size (solve's batch_size); None: all the data
    oracle: str = "autograd"               # the derivative back-end (solve's oracle)
    verify: bool = DEFAULT.verify
    verify_tol: float = DEFAULT.verify_tol
    upper_tol: float = DEFAULT.upper_tol
    curvature_tol: float = DEFAULT.curvature_tol
    resolve_fraction: float = DEFAULT.resolve_fraction
    verify_max_iter: int = DEFAULT.verify_max_iter

    @property
    def run_id(self) -> str:
        """A stable id: a hash of the full configuration (batch_size left out where None, oracle
        where autograd and the verification's settings where they are the defaults, so that runs
        keep the ids they had before these existed)."""
        fields = dataclasses.asdict(self)
        if fields["batch_size"] is None:
            del fields["batch_size"]
        if fields["oracle"] == "autograd":
            del fields["oracle"]
        for name in VERIFY_SETTINGS:
            if fields[name] == getattr(DEFAULT, name):
                del fields[name]
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def policy(self) -> RunPolicy:
        """The run's settings as solve takes them."""
        return RunPolicy(max_iter=self.max_iter, log_every=self.log_every, kkt=self.kkt, tol=self.tol,
                         **{name: getattr(self, name) for name in VERIFY_SETTINGS})

    def describe(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "problem": self.problem, "problem_args": dict(self.problem_args),
                "method": self.method, "options": dict(self.options), "seed": self.seed,
                "max_iter": self.max_iter, "log_every": self.log_every, "kkt": self.kkt, "tol": self.tol,
                "batch_size": self.batch_size, "oracle": self.oracle,
                **{name: getattr(self, name) for name in VERIFY_SETTINGS}}

    @classmethod
    def make(cls, problem: str, problem_args: dict[str, Any], method: str, options: dict[str, Any], seed: int,
             max_iter: int = DEFAULT.max_iter, log_every: int = DEFAULT.log_every, kkt: str | None = DEFAULT.kkt,
             tol: float | None = DEFAULT.tol, batch_size: int | None = None, oracle: str = "autograd",
             **verification: Any) -> RunSpec:
        """A RunSpec; `verification` holds settings of VERIFY_SETTINGS (the others are the defaults)."""
        unknown = [name for name in verification if name not in VERIFY_SETTINGS]
        if unknown:
            raise TypeError(f"Invalid setting: {unknown[0]!r} (expected one of {', '.join(VERIFY_SETTINGS)})")
        return cls(problem, tuple(sorted(problem_args.items())), method, tuple(sorted(options.items())), seed,
                   max_iter, log_every, kkt, tol, batch_size, oracle, **verification)

    @classmethod
    def with_policy(cls, problem: str, problem_args: dict[str, Any], method: str, options: dict[str, Any],
                    seed: int, policy: RunPolicy, batch_size: int | None = None, oracle: str = "autograd") -> RunSpec:
        """A RunSpec with the run settings of `policy`."""
        return cls.make(problem, problem_args, method, options, seed, policy.max_iter, policy.log_every, policy.kkt,
                        policy.tol, batch_size, oracle, **{name: getattr(policy, name) for name in VERIFY_SETTINGS})


# ----- reading and checking a config ---------------------------------------------------------
def _lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Key path -> line number (1-based) for every mapping key and sequence item (its index in
    the path) in a composed YAML document."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            p = path + (key.value,)
            out[p] = key.start_mark.line + 1
            out.update(_lines(value, p))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            out.update(_lines(item, path + (i,)))
    return out


def _where(source: str, lines: dict[tuple, int], path: tuple) -> str:
    line = lines.get(path)
    key = "".join(f"[{p}]" if isinstance(p, int) else f"{'.' if i else ''}{p}" for i, p in enumerate(path))
    return f"{source}: {key or '(top level)'}" + (f" (line {line})" if line else "")


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
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"Invalid config: {path}: {_syntax_error(exc, text)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Invalid config: {path}: not valid YAML ({exc})") from None
    return check_config(raw, str(path), _lines(node) if node is not None else {})


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> str:
    """'line 3, column 1: a tab character where YAML expects spaces': PyYAML's error in plain words."""
    mark = exc.problem_mark or exc.context_mark
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    if line[mark.column:mark.column + 1] == "\t":
        problem = "a tab character where YAML expects spaces"
    elif "<block end>" in (exc.problem or ""):
        problem = "this line's indentation does not fit the lines above it"
    else:
        problem = exc.problem or exc.context or "not valid YAML"
        if exc.context and exc.context_mark is not None and exc.problem:
            problem += (f" ({exc.context} that starts at line {exc.context_mark.line + 1}, "
                        f"column {exc.context_mark.column + 1})")
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def check_config(raw: Any, source: str = "<config>", lines: dict[tuple, int] | None = None) -> dict[str, Any]:
    """Validate a config mapping (see the module docstring). Every mistake found is reported,
    in one ConfigError, a line each."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: {source}: expected a mapping with keys {', '.join(REQUIRED)}")
    errors: list[str] = []

    def where(*path: Any) -> str:
        return _where(source, lines, path)

    raw = {key: (_number(value) if TOP_KEYS.get(key) == (int, float) else value) for key, value in raw.items()}
    bad = set()
    for key, value in raw.items():
        if key not in TOP_KEYS:
            errors.append(f"Invalid key: {where(key)}: unknown key {key!r}{suggest(key, TOP_KEYS)}")
            bad.add(key)
            continue
        expected = TOP_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            errors.append(f"Invalid value: {where(key)}: {value!r} (expected {_type_name(expected)})")
            bad.add(key)
    for key in REQUIRED:
        if key not in raw:
            errors.append(f"Invalid config: {source}: missing key {key!r}")
            bad.add(key)
    if "problems" not in raw and "cases" not in raw:
        errors.append(f"Invalid config: {source}: missing key 'problems' (or 'cases': the runs to make)")
    ok = {key: value for key, value in raw.items() if key not in bad}
    if ok.get("kkt", "method") not in KKT_MODES:
        errors.append(f"Invalid value: {where('kkt')}: {raw['kkt']!r} "
                      f"(expected one of {', '.join(KKT_MODES)}){suggest(raw['kkt'], KKT_MODES)}")
    if ok.get("oracle", "autograd") not in BACKENDS:
        errors.append(f"Invalid value: {where('oracle')}: {raw['oracle']!r} "
                      f"(expected one of {', '.join(BACKENDS)}){suggest(raw['oracle'], BACKENDS)}")
    if "tol" in ok and (isinstance(ok["tol"], bool) or ok["tol"] < 0):
        errors.append(f"Invalid value: {where('tol')}: {raw['tol']!r} (expected a number >= 0)")
    elif "tol" in ok and ok.get("kkt") == "none":
        errors.append(f"Invalid value: {where('tol')}: {raw['tol']!r} with kkt: none (tol is checked against the KKT "
                      f"residuals)")
    for key in ("max_iter", "log_every", "batch_size"):
        if key in ok and ok[key] < 1:
            errors.append(f"Invalid value: {where(key)}: {raw[key]!r} (expected >= 1)")
    for key in VERIFY_SETTINGS:
        if key in ok:
            try:
                RunPolicy(**{key: ok[key]})
            except (TypeError, ValueError) as exc:
                errors.append(f"Invalid value: {where(key)}: {str(exc).partition(': ')[2]}")
    seeds = ok.get("seeds", 1)
    if isinstance(seeds, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        errors.append(f"Invalid value: {where('seeds')}: {seeds!r} (expected a list of integers)")
    elif isinstance(seeds, int) and seeds < 1:
        errors.append(f"Invalid value: {where('seeds')}: {seeds!r} (expected >= 1)")
    elif seeds == []:
        errors.append(f"Invalid value: {where('seeds')}: [] (expected at least one seed)")
    if "methods" in ok:
        raw["methods"] = _numbers(raw["methods"])
    if "problems" not in raw:
        raw["problems"] = {}                                   # the runs are the cases'
    elif "problems" in ok:
        raw["problems"] = _numbers(expand_problem_names(raw["problems"], source, lines, errors))
        errors += _check_section(raw, "problems", PROBLEMS, "problem", "builder argument",
                                 lambda name: [*_builder_arguments(name), *RUN_KEYS], source, lines)
        for name, args in raw["problems"].items():
            args = args if isinstance(args, dict) else {}
            for key in RUN_KEYS:
                if key in args:
                    errors += _count_errors(args[key], where("problems", name, key), "one per problem")
            for dtype in _values(args.get("dtype")):
                if dtype is not None and not (isinstance(dtype, str) and dtype in DTYPES):
                    errors.append(f"Invalid value: {where('problems', name, 'dtype')}: {dtype!r} "
                                  f"(expected one of {', '.join(DTYPES)}){suggest(dtype, DTYPES)}")
    if "cases" in ok:
        raw["cases"] = _check_cases(raw["cases"], source, lines, errors)
    if "methods" in ok:
        method_errors = _check_section(raw, "methods", SOLVERS, "solver", "hyperparameter",
                                       lambda name: (*SOLVERS[name].options(), "batch_size"), source, lines)
        errors += method_errors
        for name, options in raw["methods"].items():
            if name not in SOLVERS or not isinstance(options or {}, dict) or not set(options or {}) <= {
                    *SOLVERS[name].options(), "batch_size"} or [] in (options or {}).values():
                continue                                       # its mistake is reported above
            for batch_size in _values((options or {}).get("batch_size")):
                if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                               or batch_size < 1):
                    errors.append(f"Invalid value: {where('methods', name, 'batch_size')}: {batch_size!r} "
                                  f"(expected a whole number >= 1, or null for all the data)")
            for combo in _grid(options):                      # every grid point must build
                combo.pop("batch_size", None)
                try:
                    make_solver(name, combo)
                except (TypeError, ValueError) as exc:
                    errors.append(f"Invalid hyperparameters: {where('methods', name)}: {exc}")
                    break
    plot = ok.get("plot") or {}
    for key, value in plot.items():
        if key not in PLOT_KEYS:
            errors.append(f"Invalid key: {where('plot', key)}: unknown key {key!r}{suggest(key, PLOT_KEYS)}")
        elif not isinstance(value, PLOT_KEYS[key]):
            errors.append(f"Invalid value: {where('plot', key)}: {value!r} (expected {_type_name(PLOT_KEYS[key])})")
    if isinstance(plot.get("x"), str) and plot["x"] not in X_AXES:
        errors.append(f"Invalid value: {where('plot', 'x')}: {plot['x']!r} "
                      f"(expected one of {', '.join(X_AXES)}){suggest(plot['x'], X_AXES)}")
    metrics = plot.get("metrics", [])
    strings = isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)
    if "metrics" in plot and isinstance(metrics, list) and (not metrics or not strings):
        errors.append(f"Invalid value: {where('plot', 'metrics')}: {plot['metrics']!r} "
                      f"(expected a non-empty list of column names, e.g. [f, h])")
    elif isinstance(metrics, list) and not errors:      # the problems are built only for a config that is right
        errors += _check_plot_metrics(raw, metrics, where("plot", "metrics"))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"Invalid config: {source}: {len(errors)} mistakes:\n" + "\n".join(f"  {e}" for e in errors))
    return raw


def build_problem(name: str, seed: int, args: dict[str, Any], device: str | None = None) -> BilevelProblem:
    """`PROBLEMS[name](seed=seed, **args)` (and device where given and the builder takes one), with
    argument errors that name the argument; a dtype given by name becomes the torch dtype."""
    builder = resolve(name)
    params = inspect.signature(builder).parameters
    unknown = [k for k in args if k not in params]
    if unknown:
        valid = [p for p in params if p != "seed"]
        raise ValueError(f"Invalid --problem-arg for {name}: {unknown[0]!r} (valid: {', '.join(valid)})"
                         f"{suggest(unknown[0], valid)}")
    dtype = args.get("dtype")
    if "dtype" in args and not (isinstance(dtype, str) and dtype in DTYPES) and not hasattr(dtype, "is_floating_point"):
        raise ValueError(f"Invalid --problem-arg dtype: {dtype!r} (expected one of {', '.join(DTYPES)})"
                         f"{suggest(dtype, DTYPES)}")
    kwargs = problem_kwargs(args)
    if "seed" in params:
        kwargs["seed"] = seed
    if device is not None and "device" in params:
        kwargs["device"] = device
    problem = builder(**kwargs)
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"Invalid problem: {name!r} returned {type(problem).__name__} (expected a BilevelProblem)")
    return problem


def run_columns() -> tuple[str, ...]:
    """The history columns a run can have whatever its problem (bilevel.run.history.History.log):
    the counts, the KKT residuals, every registered solver's declared diagnostics, and the
    verification's."""
    return ("iter", "time", *COUNTERS, "oracle_calls", *diagnostic_columns(), "kkt_stationarity_method", "z_norm",
            *VERIFIED_COLUMNS)


def problem_metric_names(name: str, args: dict[str, Any], seed: int = 0) -> list[str] | None:
    """The names of problem `name`'s metrics: its builder's `metric_names` where it declares them
    (so that a problem costly to build is not built for a check), else the names metrics(x0, y0)
    returns for the problem built with `args` and `seed`; None where it cannot be built here."""
    declared = getattr(resolve(name), "metric_names", None)
    if declared is not None:
        return list(declared)
    try:
        problem = build_problem(name, seed, args)
        return list(problem_metrics(problem, problem.x0, problem.y0))
    except Exception:                      # its runs will say what is wrong
        return None


def _check_plot_metrics(raw: dict[str, Any], metrics: list[str], where: str) -> list[str]:
    """Each plot metric is a column the runs will have: one of `run_columns()`, or a metric of one
    of the problems (built once, with the first grid point and seed) or its verified_ value.
    Nothing is built when every metric is in run_columns(), and nothing is refused when a problem
    cannot be built here. The mistakes found, a line each."""
    unknown = [m for m in metrics if m not in run_columns()]
    if not unknown:
        return []
    seeds = raw.get("seeds", 1)
    columns = set(run_columns())
    first = [(name, _grid(_builder_args(args))[0], 0 if isinstance(seeds, int) else seeds[0])
             for name, args in raw["problems"].items()]
    for name, args, seed in first + [(c["problem"], c["args"], c["seed"]) for c in raw.get("cases", [])]:
        names = problem_metric_names(name, args, seed)
        if names is None:
            return []
        columns.update(names + [f"verified_{n}" for n in names])
    return [f"Invalid metric: {where}: {metric!r} is not a column the runs will have "
            f"(expected one of {', '.join(sorted(columns))}){suggest(metric, columns)}"
            for metric in unknown if metric not in columns]


def _count_errors(value: Any, where: str, note: str = "") -> list[str]:
    """The mistake of a count such as max_iter, if any: a whole number >= 1 (a list, a grid, is
    refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [f"Invalid value: {where}: {value!r} (expected a whole number >= 1{', ' + note if note else ''})"]
    return []


def _check_cases(cases: list[Any], source: str, lines: dict[tuple, int], errors: list[str]) -> list[dict[str, Any]]:
    """Each case is {problem: NAME, args: {...}, seed: N, max_iter: K, log_every: L} (only problem
    required; args default {}, seed 0): a registered name or package.module:function, builder
    arguments with one value each, and no case given twice. Returns the cases without mistakes,
    with the defaults; the mistakes are appended to `errors`, a line each."""
    if not cases:
        errors.append(f"Invalid value: {_where(source, lines, ('cases',))}: [] (expected at least one case, "
                      f"e.g. - {{problem: ring, seed: 0}})")
        return []
    out, seen = [], {}
    for i, case in enumerate(cases):
        where = _where(source, lines, ("cases", i))
        if not isinstance(case, dict):
            errors.append(f"Invalid value: {where}: {case!r} (expected a mapping such as "
                          f"{{problem: quadratic, args: {{cond: 10}}, seed: 3}})")
            continue
        mistakes: list[str] = []
        typed = set()                                          # the keys known with a value of their type
        for key, value in case.items():
            at = _where(source, lines, ("cases", i, key))
            if key not in CASE_KEYS:
                mistakes.append(f"Invalid key: {at}: unknown key {key!r} (expected {', '.join(CASE_KEYS)})"
                                f"{suggest(key, CASE_KEYS)}")
            elif not isinstance(value, CASE_KEYS[key]) or (CASE_KEYS[key] is int and isinstance(value, bool)):
                mistakes.append(f"Invalid value: {at}: {value!r} (expected {_type_name(CASE_KEYS[key])})")
            else:
                typed.add(key)
        if "problem" not in case:
            mistakes.append(f"Invalid value: {where}: {case!r} (missing key 'problem')")
        name, params = case.get("problem"), None
        if "problem" in typed:
            at = _where(source, lines, ("cases", i, "problem"))
            if name not in PROBLEMS and ":" not in name:
                mistakes.append(f"Invalid problem: {at}: {name!r} is not a problem{suggest(name, PROBLEMS)}")
            else:
                try:
                    params = inspect.signature(resolve(name)).parameters
                except (TypeError, ValueError) as exc:
                    mistakes.append(f"{exc}: {at}")
        args = _numbers({"args": case.get("args") or {}})["args"] if "args" in typed or "args" not in case else {}
        for key, value in args.items():
            at = _where(source, lines, ("cases", i, "args", key))
            if params is not None and (key not in params or key == "seed"):
                valid = [p for p in params if p != "seed"]
                hint = " (a case's seed is its key seed)" if key == "seed" else suggest(key, valid)
                mistakes.append(f"Invalid builder argument: {at}: {key!r} is not a builder argument of {name}{hint}")
            elif isinstance(value, list):
                mistakes.append(f"Invalid value: {at}: {value!r} (a case gives one value per argument; a grid "
                                f"belongs under problems:)")
            elif key == "dtype" and not (isinstance(value, str) and value in DTYPES):
                mistakes.append(f"Invalid value: {at}: {value!r} (expected one of {', '.join(DTYPES)})"
                                f"{suggest(value, DTYPES)}")
        if "seed" in typed and case["seed"] < 0:
            mistakes.append(f"Invalid value: {_where(source, lines, ('cases', i, 'seed'))}: {case['seed']!r} "
                            f"(expected a whole number >= 0)")
        for key in RUN_KEYS:
            if key in typed:
                mistakes += _count_errors(case[key], _where(source, lines, ("cases", i, key)))
        errors += mistakes
        if mistakes:                                           # a case given twice is told only of right ones
            continue
        full = {"problem": name, "args": args, "seed": case.get("seed", 0),
                **{k: case[k] for k in RUN_KEYS if k in case}}
        identity = json.dumps(full, sort_keys=True, default=str)
        if identity in seen:
            errors.append(f"Invalid value: {where}: {case!r} (the same case as cases[{seen[identity]}])")
            continue
        seen[identity] = i
        out.append(full)
    return out


def _builder_args(args: dict[str, Any] | None) -> dict[str, Any]:
    """A problem entry without its run settings (max_iter, log_every): the builder's arguments."""
    return {k: v for k, v in (args or {}).items() if k not in RUN_KEYS}


def _values(value: Any) -> list[Any]:
    """A grid entry's values: the list itself, or the one value."""
    return value if isinstance(value, list) else [value]


_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _number(value: Any) -> Any:
    """A number such as 1e-3 (YAML 1.1 reads it as a string: no dot) as a float, in lists too."""
    if isinstance(value, list):
        return [_number(v) for v in value]
    return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.match(value) else value


def _numbers(section: dict[str, Any]) -> dict[str, Any]:
    """The numbers written such as 1e-3 of a section's mappings as floats."""
    return {name: ({k: _number(v) for k, v in mapping.items()} if isinstance(mapping, dict) else mapping)
            for name, mapping in section.items()}


def _check_section(raw: dict, section: str, registry: dict, what: str, entry: str, valid_keys, source: str,
                   lines: dict[tuple, int]) -> list[str]:
    """The mistakes of raw[section]: a name not in the registry, an entry that is not a
    mapping, a key that is not valid, an empty grid."""
    errors = []
    for name, mapping in raw[section].items():
        where = _where(source, lines, (section, name))
        if name not in registry and not (section == "problems" and ":" in str(name)):   # or package.module:function
            errors.append(f"Invalid {what}: {where}: {name!r} is not a {what}{suggest(name, registry)}")
            continue
        if mapping is not None and not isinstance(mapping, dict):
            errors.append(f"Invalid value: {where}: {mapping!r} (expected a mapping of {entry}s, e.g. {{}}, "
                          f"or nothing)")
            continue
        try:
            valid = valid_keys(name)
        except (TypeError, ValueError) as exc:
            errors.append(f"{exc}: {where}")
            continue
        for key, value in (mapping or {}).items():
            if key not in valid:
                errors.append(f"Invalid {entry}: {_where(source, lines, (section, name, key))}: "
                              f"{key!r} is not a {entry} of {name}{suggest(key, valid)}")
            elif value == []:
                errors.append(f"Invalid value: {_where(source, lines, (section, name, key))}: [] (an empty "
                              f"grid: expected a value or a list of at least one)")
    return errors


PATTERN_CHARACTERS = "*?["


def expand_problem_names(problems: dict[str, Any], source: str = "<config>",
                         lines: dict[tuple, int] | None = None, errors: list[str] | None = None) -> dict[str, Any]:
    """The problems section with each pattern ("bolib/*", "quadratic/cond1?-*": fnmatch's *, ?
    and [...]) replaced by the registered names it matches, in the registry's order, each with
    the pattern's arguments. A pattern that matches nothing, or a name given twice (by two
    patterns, or by a pattern and by name), is an error: a ConfigError, or where `errors` is
    given a line appended to it (the name is then left out); `lines` gains the pattern's line
    for each name it gave."""
    lines = {} if lines is None else lines
    out: dict[str, Any] = {}
    given_by: dict[str, str] = {}

    def mistake(message: str) -> None:
        if errors is None:
            raise ConfigError(message)
        errors.append(message)
    for key, args in problems.items():
        key = str(key)
        if ":" in key or not any(c in key for c in PATTERN_CHARACTERS):
            names = [key]
        else:
            names = [n for n in PROBLEMS if fnmatch.fnmatchcase(n, key)]
            if not names:
                families = sorted({n.split("/")[0] + "/*" for n in PROBLEMS if "/" in n})
                mistake(f"Invalid problem pattern: {_where(source, lines, ('problems', key))}: {key!r} "
                        f"matches no registered problem (patterns such as {', '.join(families)})")
        for name in names:
            if name in given_by:
                mistake(f"Invalid problems: {_where(source, lines, ('problems', key))}: {name!r} is "
                        f"given twice (by {given_by[name]!r} and by {key!r})")
                continue
            given_by[name] = key
            out[name] = args
            if name != key:
                lines.update({("problems", name, *path[2:]): line for path, line in list(lines.items())
                              if path[:2] == ("problems", key)})
    return out


def _builder_arguments(name: str) -> list[str]:
    """The arguments of a problem's builder (a registered name or package.module:function) but seed."""
    return [p for p in inspect.signature(resolve(name)).parameters if p != "seed"]


def _grid(mapping: dict[str, Any] | None) -> list[dict[str, Any]]:
    """{'a': [1, 2], 'b': 3} -> [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]."""
    mapping = mapping or {}
    keys = sorted(mapping)
    values = [mapping[k] if isinstance(mapping[k], list) else [mapping[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def run_policy(config: dict[str, Any]) -> RunPolicy:
    """The run settings of a checked config: its keys named as `bilevel.RunPolicy`'s fields,
    the policy's defaults for the others."""
    return RunPolicy(**{name: config[name] for name in FIELDS if name in config})


def expand(config: dict[str, Any]) -> list[RunSpec]:
    """All runs of a config: problems x problem-argument grid x methods x option grid x seeds,
    then each case (problem, args, seed) x methods x option grid. A problem's or a case's own
    max_iter and log_every replace the config's."""
    seeds = config.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    policy = run_policy(config)
    points = [(problem, problem_args, seeds, args or {}) for problem, args in config.get("problems", {}).items()
              for problem_args in _grid(_builder_args(args))]
    points += [(case["problem"], case["args"], [case["seed"]], case) for case in config.get("cases", [])]
    runs = []
    for problem, problem_args, point_seeds, settings in points:
        own = policy.replace(**{key: settings[key] for key in RUN_KEYS if key in settings})
        for method, options in config["methods"].items():
            for opts in _grid(options):
                batch_size = opts.pop("batch_size", config.get("batch_size"))
                for seed in point_seeds:
                    runs.append(RunSpec.with_policy(problem, problem_args, method, opts, seed, own,
                                                    batch_size, config.get("oracle", "autograd")))
    return runs
