"""solve(): the one loop over outer iterations (stopping, callback, history, timing, progress)."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from . import checkpoint as checkpoints
from . import checks, metrics
from .distributed import run_context
from .oracles import FuncOracle, Oracle
from .problem import BilevelProblem
from .result import Result, Status
from .solvers import SOLVERS
from .solvers.base import Solver, State


def make_solver(solver: str | Solver, options: dict[str, Any] | None = None) -> Solver:
    """A solver object from a registered name or an object, with options applied.

    Unknown names and options are errors that list the valid ones.
    """
    options = dict(options or {})
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"Invalid solver: {solver!r} (expected one of {', '.join(sorted(SOLVERS))})"
                             f"{suggest(solver, SOLVERS)}")
        cls = SOLVERS[solver]
        _check_options(cls, options)
        return cls(**options)
    if isinstance(solver, Solver):
        _check_options(type(solver), options)
        return dataclasses.replace(solver, **options) if options else solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        raise TypeError(f"Invalid solver: the class {solver.__name__} (pass an instance, {solver.__name__}(), "
                        f"or the name {solver.name!r})")
    raise TypeError(f"Invalid solver: {solver!r} (expected a registered name such as 'pgdqp' or a Solver object)")


def suggest(name: str, valid: Any) -> str:
    """'; did you mean ...?' for the valid name nearest to `name` (case, '-' and '_' ignored), or ''."""
    def key(text: str) -> str:
        return str(text).lower().replace("-", "_")
    keys = {key(v): v for v in valid}
    near = difflib.get_close_matches(key(name), list(keys), n=1)
    return f"; did you mean {keys[near[0]]!r}?" if near else ""


def _check_options(cls: type[Solver], options: dict[str, Any]) -> None:
    valid = cls.options()
    unknown = [k for k in options if k not in valid]
    if unknown:
        if unknown[0] in {f.name for f in dataclasses.fields(BilevelProblem)}:
            raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} is an argument of "
                            f"BilevelProblem(...), not of solve()")
        raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} (valid options: {', '.join(valid)})"
                        f"{suggest(unknown[0], valid)}")


def _check_solve_args(problem: Any, max_iter: Any, tol: Any, log_every: Any, callback: Any) -> None:
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"Invalid problem: {problem!r} (expected a bilevel.BilevelProblem, e.g. "
                        f"BilevelProblem(f, g, x0, y0), or one from bilevel.PROBLEMS)")
    checks.integer("max_iter", max_iter, 0)
    checks.number("tol", tol, minimum=0, allow_none=True)
    checks.integer("log_every", log_every, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"Invalid callback: {callback!r} (expected a callable (state) -> bool or None)")


def _nonfinite(state: State) -> tuple[str, str]:
    """What is not finite in (the iterate, the diagnostics) of a state: names, or '' for none.

    The fast test is one sum (NaN and inf survive a sum) and one host sync per iteration:
    the guard that keeps NaN out of every answer. A sum that overflows is checked entry by
    entry before anything is called non-finite.
    """
    total = state.x.sum() + state.y.sum()
    numbers = []
    for v in state.info.values():
        if isinstance(v, torch.Tensor):
            total = total + v.to(total.device)
        else:
            numbers.append(v)
    if math.isfinite(float(total)) and all(math.isfinite(v) for v in numbers):
        return "", ""

    def bad(items: Any) -> str:
        return ", ".join(name for name, v in items
                         if not (bool(torch.isfinite(v).all()) if isinstance(v, torch.Tensor) else math.isfinite(v)))
    return bad((("x", state.x), ("y", state.y))), bad(state.info.items())


def _with_context(call: Callable[[], Any], where: str) -> Any:
    """call(); an exception from it carries a note saying where in the run it happened."""
    try:
        return call()
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"bilevel.solve: raised {where}")
        raise


def denormals_are_flushed() -> bool:
    """Whether the CPU currently flushes subnormal floats to zero (torch has no getter:
    a subnormal float64 times one is zero exactly when flushing is on)."""
    return bool(torch.tensor([2.0 ** -1060], dtype=torch.float64).mul(1.0)[0] == 0)


@contextlib.contextmanager
def flushing_denormals(enabled: bool) -> Iterator[None]:
    """Flush subnormal floats to zero inside the block (when enabled), then restore the setting.

    Arithmetic on subnormals is slow on x86 CPUs: a hyper-cleaning run whose weights
    sigmoid(x) decay below 1e-38 (float32) slowed about threefold (benchmarks/RESULTS.md).
    """
    if not enabled:
        yield
        return
    before = denormals_are_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


KKT_MODES = ("method", "least_squares", "none")


class History:
    """Rows of the history, as columns of floats."""

    def __init__(self, problem: BilevelProblem, kkt: str, make_oracle: Callable[..., Oracle] = Oracle):
        self.problem = problem
        self.kkt = kkt
        self.make_oracle = make_oracle
        self.columns: dict[str, list[float]] = defaultdict(list)

    def log(self, k: int, elapsed: float, counts: dict[str, int], info: dict[str, Any], x, y, nu) -> dict[str, float]:
        """One row: iteration, time and counts to reach (x, y), the step's diagnostics,
        the KKT residuals that `kkt` asks for and the problem's metrics. The last two use
        their own oracle and are neither counted nor timed."""
        row: dict[str, float] = {"iter": float(k), "time": elapsed}
        row.update({name: float(v) for name, v in counts.items()})
        row.update({name: float(v) for name, v in info.items()})
        if self.kkt == "least_squares" or (self.kkt == "method" and "kkt_stationarity" not in row):
            if "kkt_stationarity" in row:
                row["kkt_stationarity_method"] = row["kkt_stationarity"]
            oracle = self.make_oracle(self.problem.f, self.problem.g)
            residuals = metrics.kkt_info(oracle, x, y, nu if self.kkt == "method" else None)
            row.update({name: float(residuals[name]) for name in ("kkt_stationarity", "kkt_feasibility")})
        if self.problem.metrics is not None:
            row.update(self._metrics(x, y, row))
        n_rows = len(self.columns["iter"])
        for name, value in row.items():
            column = self.columns[name]
            column.extend([math.nan] * (n_rows - len(column)))  # a column that appears late
            column.append(value)
        return row

    def _metrics(self, x, y, row: dict[str, float]) -> dict[str, float]:
        """The problem's metrics at (x, y), checked: a mapping of new names to numbers."""
        with torch.no_grad():
            values = self.problem.metrics(x, y)
        if not isinstance(values, Mapping):
            raise TypeError(f"Invalid metrics: metrics(x, y) returned {type(values).__name__} "
                            f"(expected a dict of name -> number)")
        out = {}
        for name, value in values.items():
            if name in row:
                raise ValueError(f"Invalid metrics: {name!r} is already a history column (rename the metric)")
            try:
                out[name] = float(value)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"Invalid metrics: value of {name!r} is {value!r} (expected a number or a "
                                f"one-element tensor)") from None
        return out

    def as_dict(self) -> dict[str, list[float]]:
        n = len(self.columns["iter"])
        return {name: col + [math.nan] * (n - len(col)) for name, col in self.columns.items()}


def solve(problem: BilevelProblem, solver: str | Solver, *, max_iter: int = 1000, tol: float | None = None,
          callback: Callable[[State], Any] | None = None, log_every: int = 1, progress: bool = False,
          device: Any = None, dtype: torch.dtype | None = None, seed: int | None = None,
          kkt: str = "method", distributed: bool = False, checkpoint: str | Path | None = None,
          checkpoint_every: int = 100, compile: bool = False, flush_denormal: bool = True,
          **solver_options: Any) -> Result:
    """Run a bilevel solver on a problem.

    Args:
        problem: the `BilevelProblem`.
        solver: a registered name (see `bilevel.SOLVERS`) or a solver object.
        max_iter: number of outer iterations at most. Default 1000.
        tol: stop with CONVERGED once max(kkt_stationarity, kkt_feasibility) <= tol at a
            logged iteration. Default None (run max_iter iterations).
        callback: called as callback(state) after every step; a true return stops the run.
        log_every: log diagnostics and metrics every this many iterations (the first and
            the final iterate are always logged). Default 1.
        progress: show a progress bar. Default False.
        device, dtype: move x0, y0 and the bounds (data inside f and g stay put: build
            the problem on the device). Default: as the problem is.
        seed: seed of the generator handed to stochastic solvers. Default None.
        kkt: the residuals of Definition 2.4 at logged iterations, kkt_stationarity =
            ||grad f + J^T nu||^2 and kkt_feasibility = h, for a multiplier nu:
            "method": the multiplier the method defines (free where its step computes the
            residual, one product otherwise), the least-squares one where it defines none;
            "least_squares": nu = argmin ||grad f + J^T nu|| for every method (comparable
            across methods; about 100 products a row by conjugate gradient), the method's
            own value kept as kkt_stationarity_method; "none": only what the step computes.
            Neither counted nor timed. Default "method".
        distributed: run data-parallel over the torch.distributed process group: the
            problem's f and g are this rank's parts of sums over ranks, the oracle is a
            `bilevel.distributed.DistributedOracle`, and only rank 0 shows progress.
            Every rank returns the same Result. Default False.
        checkpoint: a file for checkpoints. The run saves its state there every
            `checkpoint_every` iterations and at the end (atomically); when the file exists
            at the start, the run continues from it (same solver, problem, log_every and
            seed; max_iter may be larger), to the same iterates as an uninterrupted run.
            Default None.
        checkpoint_every: iterations between checkpoints. Default 100.
        compile: evaluate the oracle through torch.func transforms compiled by
            torch.compile (`bilevel.oracles.FuncOracle`). Compilation takes seconds (counted
            in `time`); a derivative that fails to compile runs uncompiled, with a warning
            and the reason in `Result.message`. Default False.
        flush_denormal: flush subnormal floats to zero during the run (restored after),
            which keeps x86 CPUs from slowing down when values decay towards zero.
            Default True.
        **solver_options: hyperparameters of the solver, e.g. step_size=0.1.

    Returns:
        A `Result`. A non-finite value ends the run with `Status.DIVERGED` and the last
        finite iterate; it never returns NaN as an answer.

    Example:
        >>> import bilevel
        >>> problem = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> result = bilevel.solve(problem, "pgdqp", max_iter=2000, log_every=100)
        >>> result.success
        True
    """
    solver = make_solver(solver, solver_options)
    _check_solve_args(problem, max_iter, tol, log_every, callback)
    seed = checks.seed("seed", seed)
    device, dtype = checks.device("device", device), checks.floating_dtype("dtype", dtype)
    checks.integer("checkpoint_every", checkpoint_every, 1)
    if kkt not in KKT_MODES:
        raise ValueError(f"Invalid kkt: {kkt!r} (expected one of {', '.join(map(repr, KKT_MODES))})")
    if tol is not None and kkt == "none":
        raise ValueError(f"Invalid tol: {tol!r} with kkt='none' (tol is checked against the KKT residuals; "
                         "use kkt='method' or kkt='least_squares')")
    for name, value in (("compile", compile), ("flush_denormal", flush_denormal)):
        if not isinstance(value, bool):
            raise TypeError(f"Invalid {name}: {value!r} (expected True or False)")
    if compile and distributed:
        raise ValueError("Invalid compile: True with distributed=True (the data-parallel oracle is not compiled; "
                         "pass one of them)")
    if device is not None or dtype is not None:
        try:
            problem = problem.to(device=device, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"Invalid device/dtype: {device!r}/{dtype!r}: the problem cannot be evaluated there "
                             f"({exc}); build the problem on that device and dtype instead, e.g. "
                             f"PROBLEMS[name](device=..., dtype=...)") from exc
    context = run_context(solver, distributed, seed, problem.x0, problem.y0)
    oracle = FuncOracle(problem.f, problem.g, compile=True) if compile else context.oracle(problem.f, problem.g)
    with flushing_denormals(flush_denormal):
        result = _run(problem, solver, oracle, context, max_iter=max_iter, tol=tol, callback=callback,
                      log_every=log_every, progress=progress, kkt=kkt, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every)
    failures = getattr(oracle, "compile_failures", {})
    if failures:
        note = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        result = dataclasses.replace(result, message=f"{result.message} (compile=True: ran uncompiled: {note})")
    return result


def _run(problem: BilevelProblem, solver: Solver, oracle: Oracle, context: Any, *, max_iter: int,
         tol: float | None, callback: Callable[[State], Any] | None, log_every: int, progress: bool, kkt: str,
         checkpoint: str | Path | None, checkpoint_every: int) -> Result:
    """The loop of `solve`, after its arguments are checked."""
    generator = torch.Generator(device=problem.x0.device)
    generator.manual_seed(context.seed)
    history = History(problem, kkt, context.oracle)

    stamp = checkpoints.fingerprint(solver, problem, log_every, context.seed)
    if checkpoint is not None and Path(checkpoint).exists():
        saved = checkpoints.load(checkpoint, stamp)
        state, first, elapsed = saved["state"], saved["k"], saved["elapsed"]
        history.columns.update(saved["history"])
        oracle.counts.update(saved["counts"])
        generator.set_state(saved["generator"])
    else:
        start = time.perf_counter()
        state = solver.init(problem, oracle, max_iter=max_iter, generator=generator)
        first, elapsed = 0, time.perf_counter() - start

    def save_checkpoint(k_done: int) -> None:
        if checkpoint is not None and context.is_main:
            checkpoints.save(checkpoint, {"fingerprint": stamp, "state": state, "k": k_done, "elapsed": elapsed,
                                          "history": dict(history.columns), "counts": dict(oracle.counts),
                                          "generator": generator.get_state()})

    status, message = (Status.COMPLETED if tol is None else Status.MAX_ITER), ""
    bar = tqdm(total=max_iter, initial=min(first, max_iter), disable=not (progress and context.is_main),
               desc=solver.name, leave=False)
    counts = oracle.snapshot()
    # the iterate before `state` as (state, counts, elapsed), and the diagnostics that describe it:
    # the answer if the diagnostics of `state` turn out non-finite
    previous, new_info_of_previous = None, {}
    k = first
    for k in range(first, max_iter):
        start = time.perf_counter()
        new = _with_context(lambda: solver.step(problem, oracle, state), f"in iteration {k + 1} of {solver.name}")
        # the guard against NaN answers; its one host sync per iteration also ends the step's GPU work,
        # so that step_time is the step's
        bad_point, bad_info = _nonfinite(new)
        step_time = time.perf_counter() - start
        if bad_info:  # the diagnostics of state (f, g, ... at iterate k) are not finite: return iterate k - 1
            status = Status.DIVERGED
            if previous is None:  # nothing finite before: report the start as it is
                history.log(k, elapsed, counts, new.info, state.x, state.y, new.nu)
                message = (f"non-finite {bad_info} at the iterate of iteration {k} (the start): the gradient of f "
                           f"or g is not finite there; returning it")
            else:
                state, counts, elapsed = previous
                if not history.columns["iter"] or history.columns["iter"][-1] != k - 1:
                    history.log(k - 1, elapsed, counts, new_info_of_previous, state.x, state.y, state.nu)
                message = (f"non-finite {bad_info} at the iterate of iteration {k}: returning the finite "
                           f"iterate of iteration {k - 1}")
            break
        if k % log_every == 0 or bad_point:
            row = history.log(k, elapsed, counts, new.info, state.x, state.y, new.nu)
            bar.set_postfix({n: f"{row[n]:.3g}" for n in ("f", "h") if n in row}, refresh=False)
            bar.update(k + 1 - bar.n)
            if tol is not None and not bad_point and max(row.get("kkt_stationarity", math.inf),
                                                         row.get("kkt_feasibility", math.inf)) <= tol:
                status = Status.CONVERGED
                break
        if bad_point:
            status = Status.DIVERGED
            message = (f"non-finite {bad_point} at iteration {k + 1}: returning the finite iterate "
                       f"of iteration {k}; try a smaller step_size")
            k += 1
            break
        previous, new_info_of_previous = (state, counts, elapsed), new.info
        elapsed += step_time
        counts = oracle.snapshot()
        state = new
        if (k + 1) % checkpoint_every == 0:
            save_checkpoint(k + 1)
        if callback is not None and _with_context(lambda: callback(state), f"in the callback after iteration {k + 1}"):
            status = Status.STOPPED
            k += 1
            break
    else:
        k = max(max_iter, first)
    if status is not Status.DIVERGED:
        save_checkpoint(k)
    bar.update(k - bar.n)
    bar.close()

    if status in (Status.COMPLETED, Status.MAX_ITER, Status.STOPPED):
        diagnostics_oracle = context.oracle(problem.f, problem.g)
        final = solver.diagnose(problem, diagnostics_oracle, state)
        row = history.log(k, elapsed, counts, final, state.x, state.y, state.nu)
        if status is Status.MAX_ITER and max(row["kkt_stationarity"], row["kkt_feasibility"]) <= tol:
            status = Status.CONVERGED
        curvature, scale = metrics.lower_curvature(diagnostics_oracle, state.x, state.y)
        if curvature < -1e-3 * scale and curvature < -1e-10:
            message = (f"{status}; note: y is not a minimiser of g(x, .): its curvature along a random direction "
                       f"is {curvature:.3g} < 0 (a saddle or a maximiser; if the lower level maximises, pass -g)")
    return Result(x=state.x, y=state.y, status=status, n_iter=k, history=history.as_dict(),
                  message=message or str(status), solver=solver, state=state)
