"""The iterate loop shared by `solve` and `solve_batch`.

Each iteration k: the step maps the state z_k to (z_{k+1}, aux_k), aux_k the diagnostics of
z_k; a guard checks both for non-finite values (one host synchronisation); a row of z_k is
logged every `log_every` iterations; the stop tests run (tol on logged rows, the callback);
then the state advances. A run of several members (solve_batch) keeps one outcome per
member: each stops on its own, and the loop ends when all have stopped or max_iter is
reached. What a single run and a batch do differently lives in a `Stepper`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from ..core.result import Status
from ..core.state import Aux, State
from ..solvers.base import Solver
from .history import History


@dataclass
class Clock:
    """Iterations done, seconds spent in steps (metrics excluded) and the counts at that point."""

    k: int
    elapsed: float
    counts: dict[str, int]


@dataclass(frozen=True)
class Outcome:
    """How one member's run ended: its answer (the last finite iterate) and the clock there,
    the status, the iterations performed and a message."""

    state: State
    clock: Clock
    status: Status
    n_iter: int
    message: str


class Stepper(Protocol):
    """What the loop needs from a run of `size` members."""

    size: int

    def step(self, state: Any, k: int) -> tuple[Any, Any]:
        """(the next state, the aux of `state`) for every member."""

    def diagnose(self, state: Any) -> Any:
        """The aux of `state` without moving, uncounted (the final row)."""

    def check(self, state: Any, aux: Any) -> tuple[list[bool], list[bool]]:
        """Per member: whether its iterate in `state` and its diagnostics in `aux` are finite."""

    def member(self, state: Any, aux: Any, b: int) -> tuple[State, Aux]:
        """Member b's state and aux."""

    def counts(self) -> dict[str, int]:
        """The oracle counts of one member so far."""


def with_context(call: Callable[[], Any], where: str) -> Any:
    """call(); an exception from it carries a note saying where in the run it happened."""
    try:
        return call()
    except Exception as exc:
        _note(exc, where)
        raise


def _note(exc: Exception, where: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(f"bilevel.solve: raised {where}")


def nonfinite_names(items: Sequence[tuple[str, Any]]) -> str:
    """The names of the values (tensors or numbers) that are not all finite, comma-separated."""
    def finite(v: Any) -> bool:
        return bool(torch.isfinite(v).all()) if isinstance(v, torch.Tensor) else math.isfinite(v)
    return ", ".join(name for name, v in items if not finite(v))


def converged(row: dict[str, float], tol: float | None) -> bool:
    """The stop test of a logged row: max(kkt_stationarity, kkt_feasibility) <= tol."""
    return tol is not None and max(row.get("kkt_stationarity", math.inf), row.get("kkt_feasibility", math.inf)) <= tol


def iterate(stepper: Stepper, solver: Solver, state: Any, clock: Clock, *, max_iter: int, log_every: int,
            tol: float | None, histories: Sequence[History], callback: Callable[[State, Aux], Any] | None = None,
            on_advance: Callable[[Any, Clock], None] | None = None, progress: bool = False) -> list[Outcome]:
    """Run from `state` (at iteration clock.k) to max_iter; one Outcome per member.

    `on_advance(state, clock)` is called after every step that leaves the loop running (for
    checkpoints). Members that stop early keep their answer while the others go on. Where the
    callback has a method `on_row`, it is called with every row of the histories
    (`History.listen`: those restored from a checkpoint at once, the others as they are
    logged; a batch's rows with "member": b first; `bilevel.run.monitor`).
    """
    size = stepper.size
    on_row = getattr(callback, "on_row", None)
    for b, history in enumerate(histories if callable(on_row) else ()):
        history.listen(on_row if size == 1 else (lambda row, b=b: on_row({"member": float(b), **row})))
    outcomes: list[Outcome | None] = [None] * size
    previous: tuple[Any, Any, Clock] | None = None          # iterate k - 1, its aux and clock
    bar = tqdm(total=max_iter, initial=min(clock.k, max_iter), disable=not progress,
               desc=solver.name + (f" x {size}" if size > 1 else ""), leave=False)
    k = clock.k
    for k in range(clock.k, max_iter):
        start = time.perf_counter()
        try:
            new, aux = stepper.step(state, k)
        except Exception as exc:
            _note(exc, f"in iteration {k + 1} of {solver.name}")
            raise
        point_ok, aux_ok = stepper.check(new, aux)           # the guard: one host synchronisation
        step_time = time.perf_counter() - start
        for b in range(size):
            if outcomes[b] is None:
                outcomes[b] = _visit(stepper, b, k, state, new, aux, point_ok[b], aux_ok[b], clock, previous,
                                     histories[b], log_every, tol, callback)
        if all(o is not None for o in outcomes):
            break
        previous = (state, aux, clock)
        clock = Clock(k + 1, clock.elapsed + step_time, stepper.counts())
        state = new
        if on_advance is not None:
            on_advance(state, clock)
        bar.update(1)
        if progress and size == 1 and histories[0].columns.get("f"):
            bar.set_postfix({n: f"{histories[0].columns[n][-1]:.3g}" for n in ("f", "h") if histories[0].columns.get(n)},
                            refresh=False)
    else:
        k = max(max_iter, clock.k)
    bar.close()
    if any(o is None for o in outcomes):
        final = stepper.diagnose(state)
        for b, outcome in enumerate(outcomes):
            if outcome is None:
                member, member_aux = stepper.member(state, final, b)
                row = histories[b].log(k, clock.elapsed, clock.counts, member_aux, member.x, member.y)
                status = Status.COMPLETED if tol is None else Status.CONVERGED if converged(row, tol) else Status.MAX_ITER
                away = histories[b].runaway(final=status is not Status.CONVERGED)
                message = str(status) if not away else f"{Status.RUNAWAY}: {away} by iteration {k}"
                outcomes[b] = Outcome(member, clock, Status.RUNAWAY if away else status, k, message)
    return outcomes


def _visit(stepper: Stepper, b: int, k: int, state: Any, new: Any, aux: Any, point_ok: bool, aux_ok: bool,
           clock: Clock, previous: tuple[Any, Any, Clock] | None, history: History, log_every: int,
           tol: float | None, callback: Callable | None) -> Outcome | None:
    """Member b at iteration k: log its row, and its outcome if it stops here (else None)."""
    current, current_aux = stepper.member(state, aux, b)
    if not aux_ok:   # the diagnostics of iterate k are not finite: the answer is iterate k - 1
        bad = nonfinite_names(list(current_aux.diagnostics.items()))
        if previous is None:   # nothing finite before: report the start as it is
            history.log(k, clock.elapsed, clock.counts, current_aux, current.x, current.y)
            where = "the start" if k == 0 else "the first of this run"
            return Outcome(current, clock, Status.DIVERGED, k, f"non-finite {bad} at the iterate of iteration {k} ({where}): "
                                                         f"the gradient of f or g is not finite there; returning it")
        p_state, p_aux, p_clock = previous
        answer, answer_aux = stepper.member(p_state, p_aux, b)
        if history.last_iter != k - 1:
            history.log(k - 1, p_clock.elapsed, p_clock.counts, answer_aux, answer.x, answer.y)
        return Outcome(answer, p_clock, Status.DIVERGED, k, f"non-finite {bad} at the iterate of iteration {k}: returning the "
                                                   f"finite iterate of iteration {k - 1}")
    row = None
    if k % log_every == 0 or not point_ok:
        row = history.log(k, clock.elapsed, clock.counts, current_aux, current.x, current.y)
        if point_ok and converged(row, tol):
            return Outcome(current, clock, Status.CONVERGED, k, str(Status.CONVERGED))
        away = history.runaway()
        if away:
            return Outcome(current, clock, Status.RUNAWAY, k, f"{Status.RUNAWAY}: {away} by iteration {k}")
    if not point_ok:
        next_state, _ = stepper.member(new, aux, b)
        bad = nonfinite_names([("x", next_state.x), ("y", next_state.y)])
        return Outcome(current, clock, Status.DIVERGED, k + 1, f"non-finite {bad} at iteration {k + 1}: returning the finite "
                                                        f"iterate of iteration {k}; try a smaller step_size")
    if callback is not None and with_context(lambda: callback(current, current_aux),
                                             f"in the callback at iteration {k}"):
        if row is None:
            history.log(k, clock.elapsed, clock.counts, current_aux, current.x, current.y)
        return Outcome(current, clock, Status.STOPPED, k, str(Status.STOPPED))
    return None
