"""solve(): the one loop over outer iterations (stopping, callback, history, timing, progress)."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from . import checkpoint as checkpoints
from . import metrics
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
            near = difflib.get_close_matches(solver, SOLVERS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"Invalid solver: {solver!r} (expected one of {', '.join(sorted(SOLVERS))}){hint}")
        cls = SOLVERS[solver]
        _check_options(cls, options)
        return cls(**options)
    if isinstance(solver, Solver):
        _check_options(type(solver), options)
        return dataclasses.replace(solver, **options) if options else solver
    raise TypeError(f"Invalid solver: {solver!r} (expected a registered name such as 'pgdqp' or a Solver object)")


def _check_options(cls: type[Solver], options: dict[str, Any]) -> None:
    valid = cls.options()
    unknown = [k for k in options if k not in valid]
    if unknown:
        near = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} (valid options: {', '.join(valid)}){hint}")


def _check_solve_args(max_iter: Any, tol: Any, log_every: Any, callback: Any) -> None:
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"Invalid max_iter: {max_iter!r} (expected an integer >= 0)")
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"Invalid tol: {tol!r} (expected a finite number >= 0 or None)")
    if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
        raise ValueError(f"Invalid log_every: {log_every!r} (expected an integer >= 1)")
    if callback is not None and not callable(callback):
        raise TypeError(f"Invalid callback: {callback!r} (expected a callable (state) -> bool or None)")


def _nonfinite(state: State) -> str:
    """'' if the state's iterate and diagnostics are finite, else what is not.

    One fused check (a concatenation and one reduction) and one host sync per iteration:
    the guard that keeps NaN out of every answer.
    """
    tensors = [state.x.reshape(-1), state.y.reshape(-1)]
    tensors += [v.reshape(-1).to(state.x.device) for v in state.info.values() if isinstance(v, torch.Tensor)]
    numbers = [v for v in state.info.values() if not isinstance(v, torch.Tensor)]
    if bool(torch.isfinite(torch.cat(tensors)).all()) and all(math.isfinite(v) for v in numbers):
        return ""
    return ", ".join(name for name, v in (("x", state.x), ("y", state.y), *state.info.items())
                     if not (bool(torch.isfinite(v).all()) if isinstance(v, torch.Tensor) else math.isfinite(v)))


def denormals_are_flushed() -> bool:
    """Whether the CPU currently flushes subnormal floats to zero (torch has no getter:
    a subnormal float64 times one is zero exactly when flushing is on)."""
    return bool(torch.tensor([2.0 ** -1060], dtype=torch.float64).mul(1.0)[0] == 0)


@contextlib.contextmanager
def _flushing_denormals(enabled: bool) -> Iterator[None]:
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


class _History:
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
            with torch.no_grad():
                row.update({name: float(v) for name, v in self.problem.metrics(x, y).items()})
        n_rows = len(self.columns["iter"])
        for name, value in row.items():
            column = self.columns[name]
            column.extend([math.nan] * (n_rows - len(column)))  # a column that appears late
            column.append(value)
        return row

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
    _check_solve_args(max_iter, tol, log_every, callback)
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"Invalid checkpoint_every: {checkpoint_every!r} (expected an integer >= 1)")
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
    with _flushing_denormals(flush_denormal):
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
    cuda = problem.x0.is_cuda
    generator = torch.Generator(device=problem.x0.device)
    generator.manual_seed(context.seed)
    history = _History(problem, kkt, context.oracle)

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
    k = first
    for k in range(first, max_iter):
        start = time.perf_counter()
        new = solver.step(problem, oracle, state)
        bad = _nonfinite(new)  # one host sync per iteration: the guard against NaN answers
        if cuda:
            torch.cuda.synchronize()
        step_time = time.perf_counter() - start
        if k % log_every == 0 or bad:
            row = history.log(k, elapsed, counts, new.info, state.x, state.y, new.nu)
            bar.set_postfix({n: f"{row[n]:.3g}" for n in ("f", "h") if n in row}, refresh=False)
            bar.update(k + 1 - bar.n)
            if tol is not None and not bad and max(row.get("kkt_stationarity", math.inf),
                                                   row.get("kkt_feasibility", math.inf)) <= tol:
                status = Status.CONVERGED
                break
        if bad:
            status = Status.DIVERGED
            message = (f"non-finite {bad} at iteration {k + 1}: returning the finite iterate "
                       f"of iteration {k}; try a smaller step_size")
            k += 1
            break
        elapsed += step_time
        counts = oracle.snapshot()
        state = new
        if (k + 1) % checkpoint_every == 0:
            save_checkpoint(k + 1)
        if callback is not None and callback(state):
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
        final = solver.diagnose(problem, context.oracle(problem.f, problem.g), state)
        row = history.log(k, elapsed, counts, final, state.x, state.y, state.nu)
        if status is Status.MAX_ITER and max(row["kkt_stationarity"], row["kkt_feasibility"]) <= tol:
            status = Status.CONVERGED
    return Result(x=state.x, y=state.y, status=status, n_iter=k, history=history.as_dict(),
                  message=message or str(status), solver=solver, state=state)
