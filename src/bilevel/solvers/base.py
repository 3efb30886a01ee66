"""Solver and State base classes, and the checks every solver's hyperparameters share.

A solver is a frozen dataclass of hyperparameters. Its progress lives in a `State`;
`init` builds the first state and `step` returns the next one. Only `bilevel.solve`
loops over outer iterations; inner loops that a method defines stay in its `step`.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import checks, metrics
from ..oracles import Oracle
from ..problem import BilevelProblem


@dataclass(frozen=True)
class State:
    """Progress of a solver.

    Attributes:
        x, y: the current iterate z_k.
        k: the number of steps taken.
        info: diagnostics (0-d tensors or floats) of the previous iterate z_{k-1}, computed by the
            step that left it: `f`, `g`, `h`, `kkt_stationarity`, `kkt_feasibility` and
            method-specific values (lambda, step size, ...). Logged without recomputation.
        nu: the multiplier estimate of grad_y g = 0 that the method defines, or None.
    """

    x: Tensor
    y: Tensor
    k: int = 0
    info: dict[str, Tensor] = field(default_factory=dict)
    nu: Tensor | None = None


@dataclass(frozen=True)
class Solver(abc.ABC):
    """Base class: subclasses are frozen dataclasses of hyperparameters."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # True when the solver touches the problem only through the oracle, so that it runs
    # data-parallel (solve(..., distributed=True)); False makes such a run a clear error.
    supports_distributed: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check hyperparameters; raise with a message naming the argument."""

    @abc.abstractmethod
    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> State:
        """The first state, at (problem.x0, problem.y0)."""

    @abc.abstractmethod
    def step(self, problem: BilevelProblem, oracle: Oracle, state: State) -> State:
        """One outer iteration: the next state, with `info` describing `state`."""

    def batch_support(self) -> str:
        """'' when `bilevel.solve_batch` can run this solver under torch.func.vmap (its init and
        step use tensor operations and no data-dependent Python control flow), else why not."""
        return ""

    def diagnose(self, problem: BilevelProblem, oracle: Oracle, state: State) -> dict[str, Tensor]:
        """Diagnostics at `state`'s iterate without moving (used for the final row).

        The default evaluates f, g, h and the KKT residuals with the state's multiplier,
        or with the least-squares multiplier where the method defines none.
        """
        return metrics.kkt_info(oracle, state.x, state.y, state.nu)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of the hyperparameters."""
        return tuple(f.name for f in dataclasses.fields(cls))


# ----- hyperparameter checks, shared by every solver --------------------------------------
def check_positive(obj: Any, *names: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    """Each named field is a finite number > 0 (>= 0 with allow_zero; None allowed if asked)."""
    for name in names:
        checks.number(name, getattr(obj, name), positive=not allow_zero, minimum=0 if allow_zero else None,
                      allow_none=allow_none)


def check_int(obj: Any, *names: str, minimum: int = 1) -> None:
    """Each named field is an integer >= minimum."""
    for name in names:
        checks.integer(name, getattr(obj, name), minimum)


def check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    """The named field is one of `choices`."""
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")
