"""Solver, State and Aux, and what solvers share: curvature estimates behind default steps,
lower-level descent and hyperparameter checks.

A solver is a frozen dataclass of hyperparameters. Its progress lives in a `State`; `init`
builds the first state and `step` returns the next one together with an `Aux`, the
diagnostics of the iterate it was given (as optimistix's step returns (y, state, aux)).
Only the loop of `bilevel.solve` iterates over outer iterations; inner loops that a method
defines stay in its `step`.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core import checks
from ..core.linear import power_iteration
from ..core.oracles import Oracle, inner
from ..core.problem import BilevelProblem
from ..core.state import Aux, State


@dataclass(frozen=True)
class Solver(abc.ABC):
    """Base class: subclasses are frozen dataclasses of hyperparameters."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # the oracle calls of one step, in words (the solver tables of the docs are made from it)
    cost: ClassVar[str] = ""
    # what its Aux reports beyond COMMON_DIAGNOSTICS (lambda, penalty, ...): history columns
    diagnostics: ClassVar[tuple[str, ...]] = ()
    # True for the methods whose papers draw minibatches (run them with solve(..., batch_size=B))
    stochastic: ClassVar[bool] = False
    # the values of its `schedule` option, the default first, where it has one
    schedules: ClassVar[tuple[str, ...]] = ()
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
    def step(self, problem: BilevelProblem, oracle: Oracle, state: State) -> tuple[State, Aux]:
        """One outer iteration: the next state, and the diagnostics of `state`'s iterate."""

    def diagnose(self, problem: BilevelProblem, oracle: Oracle, state: State) -> Aux:
        """The diagnostics of `state`'s iterate without moving (the final row of a history):
        by default those of one more step, whose new state is discarded."""
        return self.step(problem, oracle, state)[1]

    def caveats(self, state: State) -> list[str]:
        """What the run found that puts its answer in doubt beyond its status (aid_bio: a linear
        system it could not solve), as sentences; `solve` appends them to `Result.message`, so
        that they reach summary.json and the CLI's status line, not only a warning on the
        screen. [] by default."""
        return []

    def batch_support(self) -> str:
        """'' when `bilevel.solve_batch` can run this solver under torch.func.vmap (its init and
        step use tensor operations and no data-dependent Python control flow), else why not."""
        return ""

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of the hyperparameters."""
        return tuple(f.name for f in dataclasses.fields(cls))


def lower_diagnostics(problem: BilevelProblem, y: Tensor, g: Tensor, grad_y_g: Tensor) -> dict[str, Tensor | float]:
    """The lower level's part of an Aux at (x, y): g, and h = ||r||^2 (also kkt_feasibility) with
    r the residual `problem.lower_residual` (grad_y g, or the projected gradient on a y box)."""
    r = problem.lower_residual(y, grad_y_g)
    h = inner(r, r)
    return {"g": g, "h": h, "kkt_feasibility": h}


def descend(problem: BilevelProblem, oracle: Oracle, x: Tensor, y: Tensor, *, steps: int,
            step_size: float | Tensor, gradient: Tensor | None = None, tol: float | None = None) -> Tensor:
    """`steps` projected gradient steps on the lower level from y:

        y <- P_Y(y - step_size grad_y g(x, y)),

    with `gradient` as grad_y g(x, y) at the start where the caller has it (one gradient
    fewer), and, with `tol`, an early stop once ||grad_y g||^2 <= tol (a test on values,
    so not under torch.func.vmap)."""
    for t in range(steps):
        gy = gradient if t == 0 and gradient is not None else oracle.grad_g_y(x, y)
        if tol is not None and float(inner(gy, gy)) <= tol:
            break
        y = problem.project_y(y - step_size * gy)
    return y


# ----- curvature estimates for default step sizes -----------------------------------------
def as_float(value: Tensor) -> float | Tensor:
    """A 0-d tensor as a Python float; the tensor itself under torch.func.vmap (one value per member)."""
    try:
        return float(value)
    except RuntimeError:  # a batched tensor has no single value
        return value


def curvature_in_y(oracle: Oracle, x: Tensor, y: Tensor, generator: torch.Generator, *, of: str = "g",
                   iters: int = 20) -> float | Tensor:
    """The largest |eigenvalue| of grad_yy g (of="g": L_g) or of grad_yy f (of="f") at (x, y).

    `iters` steps of power iteration on Hessian-vector products (one product each, counted
    by the oracle as n_hvp) from a random start drawn from `generator`. Power iteration
    approaches the value from below: after 20 steps it is typically within a few percent,
    so a step 1/L_g from it stays well inside the stable range (0, 2/L_g) of gradient
    descent on an L_g-smooth function. Tensor operations only, so that it runs under
    torch.func.vmap (`bilevel.solve_batch`), where it returns the 0-d tensor of each
    member; otherwise a Python float. Raises ValueError where the estimate is not finite
    (the curvature overflows at (x0, y0)), asking for explicit step sizes.

    The estimate is taken once, at the start: where g is not quadratic its curvature can grow
    along the run, which is why the default steps (`step_or`) are also capped. Taken only where
    a default step needs it: `curvature_in_y(...) if needed else None`.
    """
    if of == "g":
        def matvec(v):
            return (oracle.vjp_grad_y_g(x, y, v[0])[1],)
    elif of == "f":
        zero = torch.zeros_like(x)

        def matvec(v):
            return (oracle.hvp_f(x, y, zero, v[0])[1],)
    else:
        raise ValueError(f"Invalid of: {of!r} (expected 'g' or 'f')")
    value = as_float(power_iteration(matvec, (y,), iters, generator))
    if isinstance(value, float) and not math.isfinite(value):  # (under vmap: solve_batch checks)
        raise ValueError(f"Invalid problem: the estimate of the largest eigenvalue of grad_yy {of} at (x0, y0) is "
                         f"{value} (the curvature overflows there); give the step sizes explicitly")
    return value


def step_or(value: float | None, curvature: float | Tensor | None, cap: float) -> float | Tensor:
    """A step size: `value` when given, else min(cap, 1 / curvature), the default of a step
    that is None, from an estimate taken by `init`. The cap (the fixed default the
    methods used to take) guards a nonconvex g whose curvature is small at the start and
    grows along the run (g = 1/4 (||y||^2 - 1 - x^2)^2: 0.5 at the start, about 13 at the
    solution, where a step 1/0.5 diverges and 0.1 converges)."""
    return value if value is not None else capped(cap, curvature)


def capped(step: float, curvature: float | Tensor) -> float | Tensor:
    """min(step, 1 / curvature), for floats or (batched) 0-d tensors, without dividing by 0."""
    if isinstance(curvature, Tensor):
        return step / torch.clamp(step * curvature, min=1.0)
    return step / max(1.0, step * curvature)


# ----- the adaptive x step of the baselines ------------------------------------------------
@dataclass(frozen=True)
class AdaptiveXState(State):
    """A State with the memory of the adaptive x step (`x_step`): x_memory = sum_i ||d_i||^2 / dim x
    over the x directions so far, None before the first step or where the x step is a given number."""

    x_memory: Tensor | None = None


def x_step(step_size: float | None, scale: float, state: AdaptiveXState, d_x: Tensor) -> tuple[float | Tensor, Tensor | None]:
    """The step on x along the direction d_x (x <- x - step d_x), and the next `x_memory`.

    `step_size` when given (a fixed step, as in the papers). Otherwise AdaGrad-norm
    (Ward, Wu, Bottou 2019) with a dimension-free normalisation,

        S_k = S_{k-1} + ||d_k||^2 / dim x,    step_k = scale / sqrt(S_k),

    so that the first step moves x by `scale` in root mean square per coordinate whatever the
    scale of f and g, and later steps shrink only as much as the directions seen so far
    demand. Tensor operations only (runs under torch.func.vmap).
    """
    if step_size is not None:
        return step_size, state.x_memory
    total = inner(d_x, d_x) / d_x.numel()
    if state.x_memory is not None:
        total = state.x_memory + total
    return scale / torch.sqrt(torch.clamp(total, min=torch.finfo(total.dtype).tiny)), total


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
