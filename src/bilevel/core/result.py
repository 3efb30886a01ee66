"""The outcome of a run: the final iterate, a readable status and the logged history."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class Status(enum.Enum):
    """Why a run ended. Each value is a message a person can read."""

    COMPLETED = "completed: ran max_iter iterations (no tol was given)"
    CONVERGED = "converged: max(kkt_stationarity, kkt_feasibility) <= tol"
    MAX_ITER = "not converged: reached max_iter before meeting tol"
    DIVERGED = "diverged: a non-finite value appeared; the last finite iterate is returned"
    RUNAWAY = "ran away: the iterates (or h) grew without bound; the last iterate is returned"
    STOPPED = "stopped: the callback asked to stop"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Result:
    """What `bilevel.solve` returns.

    Attributes:
        x, y: the final iterate (the last finite one if the run diverged).
        status: a `Status`; `str(status)` reads as a sentence.
        n_iter: iterations performed (for DIVERGED: the iteration that produced the
            non-finite value).
        history: column -> list of floats, one entry per logged iteration: `iter`,
            `time` (seconds, metric evaluation excluded), `f`, `g`, `h`,
            `kkt_stationarity`, `kkt_feasibility`, oracle counts (`n_f`, `n_g`,
            `n_grad_f`, `n_grad_g`, `n_hvp`, `oracle_calls`), the solver's own
            diagnostics and the problem's metrics.
        message: detail on the status (where a divergence happened, for example).
        solver: the solver object that produced the result (its hyperparameters).
        state: the solver's final state, for inspection.
        verification: what `bilevel.run.verify.verify` found at (x, y) (solve's verify=True):
            `y_resolved` (the lower level re-solved at x from y), `lower_gap`, `y_distance`,
            `upper_value` (f at y_resolved: the honest upper value), the re-solve's own
            residual and certificate (`lower_residual`, `re_solve_step`, `re_solve_converged`),
            the second-order check (`min_curvature`), the upper level's (`upper_stationarity`,
            absolute, and `upper_relative` to its value at x0), `metrics` (the problem's metrics
            at y_resolved), each check's verdict, `passed` and `reason`, `cost`; None when not
            verified.
        resume: what `solve(..., init=result)` continues from (the state, history, counts and
            generator at the answer, with the run's fingerprint); None for a diverged run.
    """

    x: Tensor
    y: Tensor
    status: Status
    n_iter: int
    history: dict[str, list[float]]
    message: str = ""
    solver: Any = None
    state: Any = field(default=None, repr=False)
    verification: dict[str, Any] | None = field(default=None, repr=False)
    resume: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        """The verdict on the answer. Where it was verified: the verification passed (y solves the
        lower level at x, is a minimiser there, and x is first-order stationary for the upper
        level), whatever the loop's status, except DIVERGED and RUNAWAY (their answer is the
        last iterate before the loop broke off). Unverified: the run ended well (COMPLETED,
        CONVERGED or STOPPED: tol met where one was given)."""
        if self.status in (Status.DIVERGED, Status.RUNAWAY):
            return False
        if self.verification is not None:
            return bool(self.verification["passed"])
        return self.status in (Status.COMPLETED, Status.CONVERGED, Status.STOPPED)

    def final(self, column: str) -> float:
        """The last logged value of a history column."""
        if column not in self.history:
            raise KeyError(f"Unknown history column: {column!r} (have {sorted(self.history)})")
        return self.history[column][-1]

    def __repr__(self) -> str:
        last = {k: self.history[k][-1] for k in ("f", "h", "kkt_stationarity") if self.history.get(k)}
        if self.verification is not None:
            last["verified_f"] = self.verification["upper_value"]
        return (f"Result(status={self.status.name}, success={self.success}, n_iter={self.n_iter}, "
                + ", ".join(f"{k}={v:.4g}" for k, v in last.items()) + ")")
