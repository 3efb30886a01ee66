"""solve(): run a solver on a problem. It checks its arguments, chooses the oracle, and
hands the iterations to the loop core (bilevel.run.loop) shared with solve_batch."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from ..core import checks, data
from ..core.distributed import data_shards, run_context
from ..core.oracles import BACKENDS, Oracle, backend
from ..core.problem import BilevelProblem
from ..core.result import Result, Status
from ..core.state import Aux, State, checksum
from ..solvers import SOLVERS
from ..solvers.base import Solver
from . import checkpoint as checkpoints
from . import verify as verification
from .history import History
from .loop import Clock, iterate, nonfinite_names
from .policy import DEFAULT, FIELDS, RunPolicy, settings_as_overrides


def make_solver(solver: str | Solver, options: Mapping[str, Any] | None = None) -> Solver:
    """A solver object from a registered name or an object, with options applied.

    Unknown names and options are errors that list the valid ones.
    """
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"Invalid options: {options!r} (expected a dict of the solver's hyperparameters, "
                        f"e.g. {{'step_size': 0.1}})")
    options = dict(options or {})
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"Invalid solver: {solver!r} (expected one of {', '.join(sorted(SOLVERS))})"
                             f"{checks.suggest(solver, SOLVERS)}")
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


def _check_options(cls: type[Solver], options: dict[str, Any]) -> None:
    valid = cls.options()
    unknown = [k for k in options if k not in valid]
    if unknown:
        if unknown[0] in {f.name for f in dataclasses.fields(BilevelProblem)}:
            raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} is an argument of "
                            f"BilevelProblem(...), not of the solver")
        if unknown[0] in SOLVE_ARGUMENTS:
            raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} is an argument of solve(...), "
                            f"not of the solver")
        if unknown[0] in FIELDS:
            raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} is a setting of the run, "
                            f"solve(..., policy=RunPolicy({unknown[0]}=...)), not of the solver")
        raise TypeError(f"Invalid option for {cls.name}: {unknown[0]!r} (valid options: {', '.join(valid)})"
                        f"{checks.suggest(unknown[0], valid)}")


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



SOLVE_ARGUMENTS = ("policy", "max_iter", "tol", "callback", "log_every", "progress", "device", "dtype", "seed",
                   "kkt", "oracle", "distributed", "checkpoint", "checkpoint_every", "flush_denormal", "verify",
                   "verify_tol", "init", "batch_size")


@settings_as_overrides
def solve(problem: BilevelProblem, solver: str | Solver, *, options: Mapping[str, Any] | None = None,
          policy: RunPolicy | None = None, max_iter: int = DEFAULT.max_iter, tol: float | None = DEFAULT.tol,
          callback: Callable[[State, Aux], Any] | None = None, log_every: int = DEFAULT.log_every,
          progress: bool = False, device: Any = None, dtype: torch.dtype | None = None, seed: int | None = None,
          kkt: str | None = DEFAULT.kkt, oracle: str | Oracle = "autograd", distributed: bool = False,
          checkpoint: str | Path | None = None, checkpoint_every: int = 100, flush_denormal: bool = True,
          verify: bool = DEFAULT.verify, verify_tol: float = DEFAULT.verify_tol, init: Result | None = None,
          batch_size: int | tuple[int, int] | None = None) -> Result:
    """Run a bilevel solver on a problem.

    The run's settings (max_iter, tol, log_every, kkt, verify, verify_tol and the
    verification's other tolerances) are a `bilevel.RunPolicy`, given whole as `policy` or
    setting by setting as keywords; a keyword given overrides the policy's setting. The
    defaults are `RunPolicy()`'s, shared with `solve_batch`, the command line and sweep configs.

    Args:
        problem: the `BilevelProblem`.
        solver: a registered name (see `bilevel.SOLVERS`) or a solver object.
        options: hyperparameters of the solver by name, e.g. {"step_size": 0.1}: the same as
            passing `SOLVERS[name](**options)`. Default None.
        policy: the run's settings (`bilevel.RunPolicy`), among them the verification's
            upper_tol, curvature_tol, resolve_fraction and verify_max_iter. Default None
            (`RunPolicy()`, with the keywords below).
        max_iter: number of outer iterations at most. Default 1000.
        tol: stop with CONVERGED once max(kkt_stationarity, kkt_feasibility) <= tol at a
            logged iteration (with kkt left at its default, kkt_stationarity is then the
            least-squares residual, which goes to zero along every method's iterates as they
            approach a KKT point). Default None (run max_iter iterations).
        callback: called as callback(state, aux) for every iterate (aux: its diagnostics,
            `bilevel.solvers.Aux`); a true return stops the run there (STOPPED).
        log_every: log diagnostics and metrics every this many iterations (the first and
            the final iterate are always logged). Default 1.
        progress: show a progress bar. Default False.
        device: move x0, y0 and the bounds to this device (data inside f and g stay put:
            build the problem on the device). Default: as the problem is.
        dtype: move x0, y0 and the bounds to this floating dtype. Default: as the problem is.
        seed: seed of the generator handed to the solver (random starts of power iteration,
            stochastic steps). Default None (torch's initial seed).
        kkt: the residuals of Definition 2.4 at logged iterations, kkt_stationarity =
            ||grad f + J^T nu||^2 and kkt_feasibility = h, for a multiplier nu:
            "method": the multiplier the method defines (free where its step computes the
            residual, one product otherwise), the least-squares one where it defines none;
            "least_squares": nu = argmin ||grad f + J^T nu|| for every method (comparable
            across methods; about 100 products a row by conjugate gradient), the method's
            own value kept as kkt_stationarity_method; "none": only what the step computes.
            Neither counted nor timed. Default None: "least_squares" when tol is given (a
            method's own multiplier need not vanish along its iterates: pgdqp's heavy ball
            makes its residual oscillate), "method" otherwise.
        oracle: how derivatives are computed, for everything in the run (steps, logged rows,
            final diagnostics): "autograd" (default, fastest eagerly), "func" (torch.func
            transforms), "compiled" (torch.func compiled by torch.compile: several times faster
            per iteration on small problems after seconds of compilation; a derivative that
            does not compile runs uncompiled, with a warning and the reason in
            `Result.message`), or an `Oracle` object (its counts are reset).
        distributed: run data-parallel over the torch.distributed process group: the
            problem's f and g are this rank's parts of sums over ranks, the oracle sums over
            ranks (`bilevel.distributed.Reduced`), and only rank 0 shows progress. Every rank
            returns the same Result. Default False.
        checkpoint: a file for checkpoints. The run saves its state there every
            `checkpoint_every` iterations and at the end (atomically); when the file exists
            at the start, the run continues from it (same solver, problem, log_every and
            seed; max_iter may be larger), to the same iterates as an uninterrupted run.
            Default None.
        checkpoint_every: iterations between checkpoints. Default 100.
        flush_denormal: flush subnormal floats to zero during the run (restored after),
            which keeps x86 CPUs from slowing down when values decay towards zero.
            Default True.
        verify: after the run, re-solve the lower level at the final x from y and check the
            answer there (`bilevel.run.verify.verify`): `Result.verification` holds the honest
            values (f at the re-solved y, the problem's metrics there), and `Result.success`
            requires that y is within verify_tol of the re-solved y, that it is a minimiser,
            and that x is first-order stationary for x -> f(x, y*(x)) (its projected
            hypergradient at most the policy's upper_tol, 1e-3, of its value at x0). Its cost is
            reported in `verification["cost"]`. Default True.
        verify_tol: the largest relative distance ||y - y_resolved|| / max(1, ||y_resolved||)
            that passes. Default 1e-2.
        init: a `Result` of an earlier run to continue: its state (schedule, momentum, inner
            variables), history, counts and generator, up to a larger max_iter (the same
            iterates as one longer run). It must come from the same problem, solver, log_every
            and seed (else a ValueError says what differs). Default None.
        batch_size: for a problem with data (`upper_data`, `lower_data`): evaluate the run's
            oracle on minibatches of this size (an (upper, lower) pair for two sizes), drawn
            anew at every step from the run's seeded generator (`bilevel.core.data`): the same seed
            gives the same batches, and checkpoints hold the sampler's position. The step's
            diagnostics and the KKT residuals of logged rows are then estimates on the current
            batch; the problem's metrics and the verification use all the data. With
            distributed=True the batch is drawn over all the ranks' samples and each rank
            evaluates the part it holds (`bilevel.distributed`). Default None (all the data at
            every step).

    Returns:
        A `Result`. A non-finite value ends the run with `Status.DIVERGED` and the last
        finite iterate; it never returns NaN as an answer. `success` is the verdict on the
        answer: with verify, that the verification passed (never for DIVERGED or RUNAWAY);
        without, that the run ended well.

    Example:
        >>> import bilevel
        >>> problem = bilevel.PROBLEMS["quadratic"](seed=0)
        >>> result = bilevel.solve(problem, "pgdqp", max_iter=6000, log_every=1000)
        >>> result.success
        True
    """
    solver = make_solver(solver, options)
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"Invalid problem: {problem!r} (expected a bilevel.BilevelProblem, e.g. "
                        f"BilevelProblem(f, g, x0, y0), or one from bilevel.PROBLEMS)")
    if callback is not None and not callable(callback):
        raise TypeError(f"Invalid callback: {callback!r} (expected a callable (state, aux) -> bool or None)")
    seed = checks.seed("seed", seed)
    device, dtype = checks.device("device", device), checks.floating_dtype("dtype", dtype)
    checks.integer("checkpoint_every", checkpoint_every, 1)
    if not isinstance(flush_denormal, bool):
        raise TypeError(f"Invalid flush_denormal: {flush_denormal!r} (expected True or False)")
    if not (isinstance(oracle, Oracle) or oracle in BACKENDS):
        raise ValueError(f"Invalid oracle: {oracle!r} (expected one of {', '.join(map(repr, BACKENDS))} "
                         f"or a bilevel.Oracle){checks.suggest(oracle, BACKENDS) if isinstance(oracle, str) else ''}")
    if init is not None and not (isinstance(init, Result) and init.resume is not None):
        raise TypeError(f"Invalid init: {init!r} (expected a Result of solve that did not diverge)")
    if batch_size is not None:
        if problem.batched is None:
            raise ValueError(f"Invalid batch_size: {batch_size!r} for a problem without data (give BilevelProblem "
                             f"upper_data and lower_data, and f(x, y, batch), g(x, y, batch))")
        if isinstance(oracle, Oracle):
            raise ValueError("Invalid oracle: an Oracle object with batch_size (pass the back-end by name: "
                             "'autograd', 'func' or 'compiled')")
    if isinstance(oracle, Oracle) and distributed:
        raise ValueError("Invalid oracle: an Oracle object with distributed=True (pass the back-end by name, "
                         "'autograd', 'func' or 'compiled', and it is wrapped to sum over the ranks)")
    if device is not None or dtype is not None:
        try:
            problem = problem.to(device=device, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"Invalid device/dtype: {device!r}/{dtype!r}: the problem cannot be evaluated there "
                             f"({exc}); build the problem on that device and dtype instead, e.g. "
                             f"PROBLEMS[name](device=..., dtype=...)") from exc
    context = run_context(solver, distributed, seed, problem.x0, problem.y0)
    generator = torch.Generator(device=problem.x0.device)
    generator.manual_seed(context.seed)
    shards = None
    if context.distributed and problem.batched is not None:   # each rank holds a block of the samples
        shards = data_shards(problem.upper_data.size, problem.lower_data.size)
    if batch_size is not None:
        totals = (problem.upper_data.size, problem.lower_data.size) if shards is None else (
            shards[0].total, shards[1].total)
        batch_size = data.batch_sizes(batch_size, totals)
    if isinstance(oracle, Oracle):
        oracle.reset()
        full = oracle
    else:
        f, g = problem.f, problem.g
        if shards is not None:   # this rank's share n_r / N of the mean over all the samples
            f, g = (partial(data.on_data, fn=fn, data=d.all(), weight=s.size / s.total)
                    for fn, d, s in zip(problem.batched, (problem.upper_data, problem.lower_data), shards))
        full = Oracle(context.wrap(backend(oracle, f, g, problem.y_bounds)))
        if batch_size is not None:
            make = partial(backend, oracle, y_bounds=problem.y_bounds)
            oracle = Oracle(context.wrap(data.Sampled(make, problem.batched, (problem.upper_data, problem.lower_data),
                                                      batch_size, generator, shards)))
        else:
            oracle = full
    with flushing_denormals(flush_denormal):
        result = _run(problem, solver, oracle, context, generator, max_iter=max_iter, tol=tol, callback=callback,
                      log_every=log_every, progress=progress and context.is_main, kkt=policy.kkt_mode,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, init=init)
        if verify:
            result = with_verification(result, problem, full, policy, context.seed)
    result = in_structure(result, problem)
    failures = getattr(oracle.backend, "compile_failures", {})
    if failures:
        note = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        result = dataclasses.replace(result, message=f"{result.message} (oracle='compiled': ran uncompiled: {note})")
    return result


class Single:
    """The `bilevel.run.loop.Stepper` of one run: the solver's step on one problem and oracle."""

    size = 1

    def __init__(self, solver: Solver, problem: BilevelProblem, oracle: Oracle):
        self.solver, self.problem, self.oracle = solver, problem, oracle

    def step(self, state: State, k: int) -> tuple[State, Aux]:
        self.oracle.resample()            # new minibatches for every step (nothing on full data)
        return self.solver.step(self.problem, self.oracle, state)

    def diagnose(self, state: State) -> Aux:
        with self.oracle.uncounted():
            return self.solver.diagnose(self.problem, self.oracle, state)

    def check(self, state: State, aux: Aux) -> tuple[list[bool], list[bool]]:
        """One sum (NaN and inf survive a sum; the step's `Aux.checksum` where it made one) and one
        host sync: the guard that keeps NaN out of every answer. A sum that overflows is checked
        entry by entry before anything is called non-finite."""
        numbers = [v for v in aux.diagnostics.values() if not isinstance(v, torch.Tensor)]
        total = aux.checksum
        if total is None:
            total = checksum(state.x, state.y, [v for v in aux.diagnostics.values() if isinstance(v, torch.Tensor)],
                             eager=True)
        if math.isfinite(float(total)) and all(math.isfinite(v) for v in numbers):
            return [True], [True]
        return ([not nonfinite_names([("x", state.x), ("y", state.y)])],
                [not nonfinite_names(list(aux.diagnostics.items()))])

    def member(self, state: State, aux: Aux, b: int) -> tuple[State, Aux]:
        return state, aux

    def counts(self) -> dict[str, int]:
        return self.oracle.snapshot()


def _run(problem: BilevelProblem, solver: Solver, oracle: Oracle, context: Any, generator: torch.Generator, *,
         max_iter: int, tol: float | None, callback: Callable | None, log_every: int, progress: bool, kkt: str,
         checkpoint: str | Path | None, checkpoint_every: int, init: Result | None) -> Result:
    """The run of `solve`, after its arguments are checked: set-up (or a continuation of a
    checkpoint or of `init`), the loop, the final row."""
    history = History(problem, kkt, oracle)
    stamp = checkpoints.fingerprint(solver, problem, oracle, log_every, context.seed)
    saved, origin = None, ""
    if init is not None:
        why = checkpoints.mismatch(init.resume["fingerprint"], stamp)
        if why:
            raise ValueError(f"Invalid init: the result given was produced by {why} (continue a result with the "
                             f"same problem, solver, log_every and seed)")
        # a copy: a step may update parts of a state in place (saba's tables), and the result given
        # must stay the state it was, for another continuation
        saved, origin = {**init.resume, "state": copy.deepcopy(init.resume["state"])}, "the result given as init"
    elif checkpoint is not None and Path(checkpoint).exists():
        saved, origin = checkpoints.load(checkpoint, stamp), f"the checkpoint {str(checkpoint)!r}"
    if saved is not None:
        state, clock = saved["state"], Clock(saved["k"], saved["elapsed"], dict(saved["counts"]))
        history.restore(saved["history"], before=clock.k)
        oracle.counts.update({name: value for name, value in saved["counts"].items() if name != "oracle_calls"})
        generator.set_state(saved["generator"])
    else:
        start = time.perf_counter()
        state = solver.init(problem, oracle, max_iter=max_iter, generator=generator)
        clock = Clock(0, time.perf_counter() - start, oracle.snapshot())

    def payload(state: State, clock: Clock) -> dict[str, Any]:
        return {"fingerprint": stamp, "state": state, "k": clock.k, "elapsed": clock.elapsed,
                "history": {name: list(values) for name, values in history.columns.items()}, "counts": clock.counts,
                "generator": generator.get_state()}

    def on_advance(state: State, clock: Clock) -> None:
        if checkpoint is not None and context.is_main and clock.k % checkpoint_every == 0:
            checkpoints.save(checkpoint, payload(state, clock))

    outcome = iterate(Single(solver, problem, oracle), solver, state, clock, max_iter=max_iter, log_every=log_every,
                      tol=tol, histories=[history], callback=callback, on_advance=on_advance, progress=progress)[0]
    history.finish(outcome.state.x, outcome.state.y)
    message = outcome.message + (f" (continued from {origin} at iteration {clock.k})" if saved is not None else "")
    message = "; ".join([message, *solver.caveats(outcome.state)])
    resume = None
    if outcome.status is not Status.DIVERGED:
        resume = payload(outcome.state, outcome.clock)
        if checkpoint is not None and context.is_main:
            checkpoints.save(checkpoint, resume)
    return Result(x=outcome.state.x, y=outcome.state.y, status=outcome.status, n_iter=outcome.n_iter,
                  history=history.as_dict(), message=message, solver=solver, state=outcome.state, resume=resume)


def in_structure(result: Result, problem: BilevelProblem) -> Result:
    """The result with x, y (and the verification's y_resolved) in the problem's given structure."""
    if all(layout.kind == "tensor" for layout in problem.layouts):
        return result
    x, y = problem.structure(result.x, result.y)
    verification = result.verification
    if verification is not None:
        verification = {**verification, "y_resolved": problem.layouts[1].structure(verification["y_resolved"])}
    return dataclasses.replace(result, x=x, y=y, verification=verification)


def with_verification(result: Result, problem: BilevelProblem, oracle: Oracle, policy: RunPolicy,
                      seed: int) -> Result:
    """The result with its verification (`bilevel.run.verify.verify`, with the policy's
    tolerances and budget) and, where it fails, why in the message."""
    found = verification.verify(problem, oracle, result.x, result.y, tol=policy.verify_tol,
                                upper_tol=policy.upper_tol, curvature_tol=policy.curvature_tol,
                                resolve_fraction=policy.resolve_fraction, max_iter=policy.verify_max_iter, seed=seed)
    message = result.message if found["passed"] else f"{result.message}; verification failed: {found['reason']}"
    return dataclasses.replace(result, verification=found, message=message)
