"""ProblemSpec: a registered problem, its builder and what is declared about it.

The registry `PROBLEMS` maps a name to a spec. A spec is called like its builder
(`PROBLEMS["quadratic"](seed=0)` builds the problem), and it declares what the harness would
otherwise keep in lists of its own: the names of the problem's metrics and which way each is
better, tags (the family of a suite problem, "known-optimum", "data"), a one-line summary, and
an `evaluate(problem, result)` hook that scores a finished run against what is known about the
problem (e.g. the distance to a verified optimum), so that `bilevel sweep` scores suite runs.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..core.problem import BilevelProblem

Direction = str       # "min" (lower is better) or "max"


@dataclass(frozen=True)
class ProblemSpec:
    """A registered problem.

    Args:
        builder: (seed=..., **args) -> BilevelProblem.
        summary: one line: what the problem is.
        metrics: the names of the metrics the problem's `metrics(x, y)` (and `final_metrics`)
            return, each with "min" or "max": which way is better.
        tags: words that group problems ("synthetic", "data", "suite", "bolib", "known-optimum").
        evaluate: (problem, result) -> {score: number}, the scores of a finished run, added to
            its final row and summary.json by the harness; None: no scores.
        scores: the names of the scores `evaluate` returns, each with "min" or "max".
    """

    builder: Callable[..., BilevelProblem]
    summary: str = ""
    metrics: Mapping[str, Direction] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    evaluate: Callable[[BilevelProblem, Any], dict[str, float]] | None = None
    scores: Mapping[str, Direction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.builder):
            raise TypeError(f"Invalid builder: {self.builder!r} (expected a callable returning a BilevelProblem)")
        for argument in ("metrics", "scores"):
            bad = {m: d for m, d in getattr(self, argument).items() if d not in ("min", "max")}
            if bad:
                raise ValueError(f"Invalid {argument}: {bad!r} (expected 'min' or 'max' for each name)")
        if self.scores and self.evaluate is None:
            raise ValueError(f"Invalid scores: {dict(self.scores)!r} (declared without an evaluate hook)")
        # inspect.signature(spec) is the builder's: the harness checks arguments against it
        object.__setattr__(self, "__signature__", inspect.signature(self.builder))

    def __call__(self, *args: Any, **kwargs: Any) -> BilevelProblem:
        return self.builder(*args, **kwargs)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics)


KNOWN_OPTIMUM_SCORES = {"x_error": "min"}


def distance_to_known_optimum(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """x_error = ||x - x*|| / max(1, ||x*||) where the problem's info holds a verified x*
    ({} where it holds none): the score of a run on a problem with a known answer."""
    x_star = (problem.info or {}).get("x_star")
    if x_star is None:
        return {}
    x = result.x.detach().reshape(-1).to(x_star)
    star = x_star.reshape(-1)
    error = float(torch.linalg.vector_norm(x - star)) / max(1.0, float(torch.linalg.vector_norm(star)))
    return {"x_error": error if math.isfinite(error) else math.inf}


def final_value(result: Any, column: str) -> float:
    """The last logged value of a history column of a finished run (nan where it has none)."""
    values = (getattr(result, "history", None) or {}).get(column)
    return float(values[-1]) if values else math.nan


def diverged(result: Any) -> bool:
    """Whether the run ended DIVERGED (a run that did is never solved)."""
    return getattr(getattr(result, "status", None), "name", None) == "DIVERGED"


def solved_flag(ok: bool, result: Any) -> float:
    """1.0 where `ok` holds and the run did not diverge, else 0.0: the score `solved`."""
    return float(bool(ok) and not diverged(result))
