"""Sweep configs: a YAML file checked field by field (errors say where, with line numbers and
"did you mean"), expanded into `RunSpec`s, one per run.

    name: coreset-grid
    max_iter: 500
    log_every: 50
    seeds: 3                       # a count (0..2) or a list [0, 5, 7]
    kkt: method                    # KKT residuals at logged iterations: method, least_squares or none
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

A config needs `problems`, `cases` or both (the runs of the grid, then the cases), and
`max_iter` unless every problem and case gives its own. Everything is checked before the
first run, plot metrics included: each must be a column the runs will have (`run_columns()`, or a metric of one of the problems, or its verified_ value).
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
from ..run.solve import make_solver
from ..solvers import SOLVERS, diagnostic_columns
from .plot import X_AXES
from .store import VERIFIED_COLUMNS

TOP_KEYS = {"name": str, "max_iter": int, "log_every": int, "seeds": (int, list), "kkt": str, "tol": (int, float),
            "problems": dict, "methods": dict, "plot": dict, "description": str, "batch_size": int,
            "oracle": str, "cases": list}
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
    max_iter: int
    log_every: int
    kkt: str | None = None
    tol: float | None = None
    batch_size: int | None = None          # minibatches of this size (solve's batch_size); None: all the data
    oracle: str = "autograd"               # the derivative back-end (solve's oracle)

    @property
    def run_id(self) -> str:
        """A stable id: a hash of the full configuration (batch_size left out where None and oracle
        where autograd, so that runs keep the ids they had before these existed)."""
        fields = dataclasses.asdict(self)
        if fields["batch_size"] is None:
            del fields["batch_size"]
        if fields["oracle"] == "autograd":
            del fields["oracle"]
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "problem": self.problem, "problem_args": dict(self.problem_args),
                "method": self.method, "options": dict(self.options), "seed": self.seed,
                "max_iter": self.max_iter, "log_every": self.log_every, "kkt": self.kkt, "tol": self.tol,
                "batch_size": self.batch_size, "oracle": self.oracle}

    @classmethod
    def make(cls, problem: str, problem_args: dict[str, Any], method: str, options: dict[str, Any], seed: int,
             max_iter: int, log_every: int, kkt: str | None = None, tol: float | None = None,
             batch_size: int | None = None, oracle: str = "autograd") -> "RunSpec":
        return cls(problem, tuple(sorted(problem_args.items())), method, tuple(sorted(options.items())), seed,
                   max_iter, log_every, kkt, tol, batch_size, oracle)


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
    """Validate a config mapping (see the module docstring)."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: {source}: expected a mapping with keys {', '.join(REQUIRED)}")
    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise ConfigError(f"Invalid key: {_where(source, lines, (key,))}: unknown key {key!r}{suggest(key, TOP_KEYS)}")
        expected = TOP_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"Invalid value: {_where(source, lines, (key,))}: {value!r} "
                              f"(expected {_type_name(expected)})")
    for key in REQUIRED:
        if key not in raw:
            raise ConfigError(f"Invalid config: {source}: missing key {key!r}")
    if "problems" not in raw and "cases" not in raw:
        raise ConfigError(f"Invalid config: {source}: missing key 'problems' (or 'cases': the runs to make)")
    if raw.get("kkt", "method") not in KKT_MODES:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('kkt',))}: {raw['kkt']!r} "
                          f"(expected one of {', '.join(KKT_MODES)}){suggest(raw['kkt'], KKT_MODES)}")
    if raw.get("oracle", "autograd") not in BACKENDS:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('oracle',))}: {raw['oracle']!r} "
                          f"(expected one of {', '.join(BACKENDS)}){suggest(raw['oracle'], BACKENDS)}")
    if "tol" in raw and (isinstance(raw["tol"], bool) or raw["tol"] < 0):
        raise ConfigError(f"Invalid value: {_where(source, lines, ('tol',))}: {raw['tol']!r} (expected a number >= 0)")
    if "tol" in raw and raw.get("kkt") == "none":
        raise ConfigError(f"Invalid value: {_where(source, lines, ('tol',))}: {raw['tol']!r} with kkt: none (tol is "
                          f"checked against the KKT residuals)")
    for key in ("max_iter", "log_every", "batch_size"):
        if key in raw and raw[key] < 1:
            raise ConfigError(f"Invalid value: {_where(source, lines, (key,))}: {raw[key]!r} (expected >= 1)")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"Invalid value: {_where(source, lines, ('seeds',))}: {seeds!r} (expected a list of integers)")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('seeds',))}: {seeds!r} (expected >= 1)")
    if seeds == []:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('seeds',))}: [] (expected at least one seed)")
    raw = {**raw, "problems": _numbers(expand_problem_names(raw.get("problems", {}), source, lines)),
           "methods": _numbers(raw["methods"])}
    _check_section(raw, "problems", PROBLEMS, "problem", "builder argument",
                   lambda name: [*(p for p in inspect.signature(_builder(name, source, lines)).parameters
                                   if p != "seed"), *RUN_KEYS], source, lines)
    for name, args in raw["problems"].items():
        for key in RUN_KEYS:
            if key in (args or {}):
                _check_count(args[key], _where(source, lines, ("problems", name, key)), "one per problem")
    if "cases" in raw:
        raw["cases"] = _check_cases(raw["cases"], source, lines)
    if "max_iter" not in raw:
        missing = [f"problems.{n}" for n, a in raw["problems"].items() if "max_iter" not in (a or {})] + \
            [f"cases[{i}]" for i, c in enumerate(raw.get("cases", [])) if "max_iter" not in c]
        if missing:
            raise ConfigError(f"Invalid config: {source}: missing key 'max_iter' (needed by {', '.join(missing[:3])}"
                              f"{', ...' if len(missing) > 3 else ''}: give it at the top level or to each)")
    _check_section(raw, "methods", SOLVERS, "solver", "hyperparameter",
                   lambda name: (*SOLVERS[name].options(), "batch_size"), source, lines)
    for name, args in raw["problems"].items():
        for dtype in _values((args or {}).get("dtype")):
            if dtype is not None and not (isinstance(dtype, str) and dtype in DTYPES):
                raise ConfigError(f"Invalid value: {_where(source, lines, ('problems', name, 'dtype'))}: {dtype!r} "
                                  f"(expected one of {', '.join(DTYPES)}){suggest(dtype, DTYPES)}")
    for name, options in raw["methods"].items():
        where = _where(source, lines, ("methods", name))
        for batch_size in _values((options or {}).get("batch_size")):
            if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                           or batch_size < 1):
                raise ConfigError(f"Invalid value: {_where(source, lines, ('methods', name, 'batch_size'))}: "
                                  f"{batch_size!r} (expected a whole number >= 1, or null for all the data)")
        for combo in _grid(options):                      # every grid point must build
            combo.pop("batch_size", None)
            try:
                make_solver(name, combo)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Invalid hyperparameters: {where}: {exc}") from None
    for key, value in (raw.get("plot") or {}).items():
        if key not in PLOT_KEYS:
            raise ConfigError(f"Invalid key: {_where(source, lines, ('plot', key))}: unknown key {key!r}"
                              f"{suggest(key, PLOT_KEYS)}")
        if not isinstance(value, PLOT_KEYS[key]):
            raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', key))}: {value!r} "
                              f"(expected {_type_name(PLOT_KEYS[key])})")
    plot = raw.get("plot") or {}
    if "x" in plot and plot["x"] not in X_AXES:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', 'x'))}: {plot['x']!r} "
                          f"(expected one of {', '.join(X_AXES)}){suggest(plot['x'], X_AXES)}")
    if "metrics" in plot and (not plot["metrics"] or not all(isinstance(m, str) for m in plot["metrics"])):
        raise ConfigError(f"Invalid value: {_where(source, lines, ('plot', 'metrics'))}: {plot['metrics']!r} "
                          f"(expected a non-empty list of column names, e.g. [f, h])")
    _check_plot_metrics(raw, plot.get("metrics", []), _where(source, lines, ("plot", "metrics")))
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


def _check_plot_metrics(raw: dict[str, Any], metrics: list[str], where: str) -> None:
    """Each plot metric is a column the runs will have: one of `run_columns()`, or a metric of one
    of the problems (built once, with the first grid point and seed) or its verified_ value.
    Nothing is built when every metric is in run_columns(), and nothing is refused when a problem
    cannot be built here."""
    unknown = [m for m in metrics if m not in run_columns()]
    if not unknown:
        return
    seeds = raw.get("seeds", 1)
    columns = set(run_columns())
    first = [(name, _grid(_builder_args(args))[0], 0 if isinstance(seeds, int) else seeds[0])
             for name, args in raw["problems"].items()]
    for name, args, seed in first + [(c["problem"], c["args"], c["seed"]) for c in raw.get("cases", [])]:
        names = problem_metric_names(name, args, seed)
        if names is None:
            return
        columns.update(names + [f"verified_{n}" for n in names])
    for metric in unknown:
        if metric not in columns:
            raise ConfigError(f"Invalid metric: {where}: {metric!r} is not a column the runs will have "
                              f"(expected one of {', '.join(sorted(columns))}){suggest(metric, columns)}")


def _check_count(value: Any, where: str, note: str = "") -> int:
    """A count such as max_iter: a whole number >= 1 (a list, a grid, is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Invalid value: {where}: {value!r} (expected a whole number >= 1{', ' + note if note else ''})")
    return value


def _check_cases(cases: list[Any], source: str, lines: dict[tuple, int]) -> list[dict[str, Any]]:
    """Each case is {problem: NAME, args: {...}, seed: N, max_iter: K, log_every: L} (only problem
    required; args default {}, seed 0): a registered name or package.module:function, builder
    arguments with one value each, and no case given twice. Returns the cases with the defaults."""
    if not cases:
        raise ConfigError(f"Invalid value: {_where(source, lines, ('cases',))}: [] (expected at least one case, "
                          f"e.g. - {{problem: ring, seed: 0}})")
    out, seen = [], {}
    for i, case in enumerate(cases):
        where = _where(source, lines, ("cases", i))
        if not isinstance(case, dict):
            raise ConfigError(f"Invalid value: {where}: {case!r} (expected a mapping such as "
                              f"{{problem: quadratic, args: {{cond: 10}}, seed: 3}})")
        for key, value in case.items():
            at = _where(source, lines, ("cases", i, key))
            if key not in CASE_KEYS:
                raise ConfigError(f"Invalid key: {at}: unknown key {key!r} (expected {', '.join(CASE_KEYS)})"
                                  f"{suggest(key, CASE_KEYS)}")
            if not isinstance(value, CASE_KEYS[key]) or (CASE_KEYS[key] is int and isinstance(value, bool)):
                raise ConfigError(f"Invalid value: {at}: {value!r} (expected {_type_name(CASE_KEYS[key])})")
        if "problem" not in case:
            raise ConfigError(f"Invalid value: {where}: {case!r} (missing key 'problem')")
        name = case["problem"]
        if name not in PROBLEMS and ":" not in name:
            raise ConfigError(f"Invalid problem: {_where(source, lines, ('cases', i, 'problem'))}: {name!r} is not a "
                              f"problem{suggest(name, PROBLEMS)}")
        try:
            params = inspect.signature(resolve(name)).parameters
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{exc}: {_where(source, lines, ('cases', i, 'problem'))}") from None
        args = _numbers({"args": case.get("args") or {}})["args"]
        for key, value in args.items():
            at = _where(source, lines, ("cases", i, "args", key))
            if key not in params or key == "seed":
                valid = [p for p in params if p != "seed"]
                hint = " (a case's seed is its key seed)" if key == "seed" else suggest(key, valid)
                raise ConfigError(f"Invalid builder argument: {at}: {key!r} is not a builder argument of {name}{hint}")
            if isinstance(value, list):
                raise ConfigError(f"Invalid value: {at}: {value!r} (a case gives one value per argument; a grid "
                                  f"belongs under problems:)")
            if key == "dtype" and not (isinstance(value, str) and value in DTYPES):
                raise ConfigError(f"Invalid value: {at}: {value!r} (expected one of {', '.join(DTYPES)})"
                                  f"{suggest(value, DTYPES)}")
        if case.get("seed", 0) < 0:
            raise ConfigError(f"Invalid value: {_where(source, lines, ('cases', i, 'seed'))}: {case['seed']!r} "
                              f"(expected a whole number >= 0)")
        for key in RUN_KEYS:
            if key in case:
                _check_count(case[key], _where(source, lines, ("cases", i, key)))
        full = {"problem": name, "args": args, "seed": case.get("seed", 0),
                **{k: case[k] for k in RUN_KEYS if k in case}}
        identity = json.dumps(full, sort_keys=True, default=str)
        if identity in seen:
            raise ConfigError(f"Invalid value: {where}: {case!r} (the same case as cases[{seen[identity]}])")
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
        if name not in registry and not (section == "problems" and ":" in str(name)):   # or package.module:function
            raise ConfigError(f"Invalid {what}: {where}: {name!r} is not a {what}{suggest(name, registry)}")
        if mapping is not None and not isinstance(mapping, dict):
            raise ConfigError(f"Invalid value: {where}: {mapping!r} (expected a mapping of {entry}s, "
                              f"e.g. {{}}, or nothing)")
        valid = valid_keys(name)
        for key, value in (mapping or {}).items():
            if key not in valid:
                raise ConfigError(f"Invalid {entry}: {_where(source, lines, (section, name, key))}: "
                                  f"{key!r} is not a {entry} of {name}{suggest(key, valid)}")
            if value == []:
                raise ConfigError(f"Invalid value: {_where(source, lines, (section, name, key))}: [] (an empty "
                                  f"grid: expected a value or a list of at least one)")


PATTERN_CHARACTERS = "*?["


def expand_problem_names(problems: dict[str, Any], source: str = "<config>",
                         lines: dict[tuple, int] | None = None) -> dict[str, Any]:
    """The problems section with each pattern ("bolib/*", "quadratic/cond1?-*": fnmatch's *, ?
    and [...]) replaced by the registered names it matches, in the registry's order, each with
    the pattern's arguments. A pattern that matches nothing, or a name given twice (by two
    patterns, or by a pattern and by name), is an error; `lines` gains the pattern's line for
    each name it gave."""
    lines = {} if lines is None else lines
    out: dict[str, Any] = {}
    given_by: dict[str, str] = {}
    for key, args in problems.items():
        key = str(key)
        if ":" in key or not any(c in key for c in PATTERN_CHARACTERS):
            names = [key]
        else:
            names = [n for n in PROBLEMS if fnmatch.fnmatchcase(n, key)]
            if not names:
                families = sorted({n.split("/")[0] + "/*" for n in PROBLEMS if "/" in n})
                raise ConfigError(f"Invalid problem pattern: {_where(source, lines, ('problems', key))}: {key!r} "
                                  f"matches no registered problem (patterns such as {', '.join(families)})")
        for name in names:
            if name in given_by:
                raise ConfigError(f"Invalid problems: {_where(source, lines, ('problems', key))}: {name!r} is "
                                  f"given twice (by {given_by[name]!r} and by {key!r})")
            given_by[name] = key
            out[name] = args
            if name != key:
                lines.update({("problems", name, *path[2:]): line for path, line in list(lines.items())
                              if path[:2] == ("problems", key)})
    return out


def _builder(name: str, source: str, lines: dict[tuple, int]):
    """The builder of a problem named in a config (a registered name or package.module:function)."""
    try:
        return resolve(name)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{exc}: {_where(source, lines, ('problems', name))}") from None


def _grid(mapping: dict[str, Any] | None) -> list[dict[str, Any]]:
    """{'a': [1, 2], 'b': 3} -> [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]."""
    mapping = mapping or {}
    keys = sorted(mapping)
    values = [mapping[k] if isinstance(mapping[k], list) else [mapping[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def expand(config: dict[str, Any]) -> list[RunSpec]:
    """All runs of a config: problems x problem-argument grid x methods x option grid x seeds,
    then each case (problem, args, seed) x methods x option grid. A problem's or a case's own
    max_iter and log_every replace the config's."""
    seeds = config.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    points = [(problem, problem_args, seeds, args or {}) for problem, args in config.get("problems", {}).items()
              for problem_args in _grid(_builder_args(args))]
    points += [(case["problem"], case["args"], [case["seed"]], case) for case in config.get("cases", [])]
    runs = []
    for problem, problem_args, point_seeds, settings in points:
        for method, options in config["methods"].items():
            for opts in _grid(options):
                batch_size = opts.pop("batch_size", config.get("batch_size"))
                for seed in point_seeds:
                    runs.append(RunSpec.make(problem, problem_args, method, opts, seed,
                                             settings.get("max_iter", config.get("max_iter")),
                                             settings.get("log_every", config.get("log_every", 10)),
                                             config.get("kkt"), config.get("tol"), batch_size,
                                             config.get("oracle", "autograd")))
    return runs
