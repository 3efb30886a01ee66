"""solve(): the one loop over outer iterations (stopping, callback, history, timing, progress)."""
from __future__ import annotations

import dataclasses
import difflib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import checkpoint as checkpoints
from . import metrics
from .distributed import run_context
from .oracles import Oracle
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
    """'' if the state's iterate and diagnostics are finite, else what is not."""
    parts = [state.x.reshape(-1), state.y.reshape(-1)]
    parts += [v.reshape(-1).to(state.x.dtype) for v in state.info.values()]
    if bool(torch.isfinite(torch.cat(parts)).all()):
        return ""
    bad = [name for name, v in (("x", state.x), ("y", state.y), *state.info.items())
           if not bool(torch.isfinite(v).all())]
    return ", ".join(bad)


class _History:
    """Rows of the history, as columns of floats."""

    def __init__(self, problem: BilevelProblem, kkt: bool, make_oracle: Callable[..., Oracle] = Oracle):
        self.problem = problem
        self.kkt = kkt
        self.make_oracle = make_oracle
        self.columns: dict[str, list[float]] = defaultdict(list)

    def log(self, k: int, elapsed: float, counts: dict[str, int], info: dict[str, Any], x, y) -> dict[str, float]:
        """One row: iteration, time and counts to reach (x, y), the step's diagnostics,
        the least-squares KKT residuals (if asked) and the problem's metrics. The last two
        use their own oracle and are not counted or timed."""
        row: dict[str, float] = {"iter": float(k), "time": elapsed}
        row.update({name: float(v) for name, v in counts.items()})
        row.update({name: float(v) for name, v in info.items()})
        if self.kkt:
            if "kkt_stationarity" in row:
                row["kkt_stationarity_method"] = row["kkt_stationarity"]
            residuals = metrics.kkt_info(self.make_oracle(self.problem.f, self.problem.g), x, y)
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
          kkt: bool = True, distributed: bool = False, checkpoint: str | Path | None = None,
          checkpoint_every: int = 100, **solver_options: Any) -> Result:
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
        kkt: at logged iterations, report kkt_stationarity with the least-squares
            multiplier nu = argmin ||grad f + J^T nu|| (Definition 2.4 asks for some nu;
            this is the best one), by conjugate gradient, not counted and not timed; the
            method's own estimate stays as kkt_stationarity_method. False: report the
            method's estimate only, at no cost. Default True.
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
    if device is not None or dtype is not None:
        try:
            problem = problem.to(device=device, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"Invalid device/dtype: {device!r}/{dtype!r}: the problem cannot be evaluated there "
                             f"({exc}); build the problem on that device and dtype instead, e.g. "
                             f"PROBLEMS[name](device=..., dtype=...)") from exc
    context = run_context(solver, distributed, seed, problem.x0, problem.y0)
    oracle = context.oracle(problem.f, problem.g)
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
            row = history.log(k, elapsed, counts, new.info, state.x, state.y)
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
        row = history.log(k, elapsed, counts, final, state.x, state.y)
        if status is Status.MAX_ITER and max(row["kkt_stationarity"], row["kkt_feasibility"]) <= tol:
            status = Status.CONVERGED
    n_iter = k
    return Result(x=state.x, y=state.y, status=status, n_iter=n_iter, history=history.as_dict(),
                  message=message or str(status), solver=solver, state=state)
