"""Solver and State base classes, and the checks every solver's hyperparameters share.

A solver is a frozen dataclass of hyperparameters. Its progress lives in a `State`;
`init` builds the first state and `step` returns the next one. Only `bilevel.solve`
loops over outer iterations; inner loops that a method defines stay in its `step`.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import checks, metrics
from ..oracles import Oracle, inner
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
        lipschitz_g: L_g, the largest |eigenvalue| of grad_yy g at (x0, y0), estimated by
            `init` where a default step size is a multiple of 1/L_g (`curvatures`);
            None where no step depends on it. A float, or a 0-d tensor under vmap.
        lipschitz_f_y: likewise the largest |eigenvalue| of grad_yy f at (x0, y0), for the
            methods whose y step descends f (divided by a penalty) plus g; None elsewhere.
    """

    x: Tensor
    y: Tensor
    k: int = 0
    info: dict[str, Tensor] = field(default_factory=dict)
    nu: Tensor | None = None
    lipschitz_g: float | Tensor | None = None
    lipschitz_f_y: float | Tensor | None = None


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


# ----- curvature estimates for default step sizes -----------------------------------------
def power_iteration(matvec, like: tuple[Tensor, Tensor], iters: int, generator: torch.Generator) -> Tensor:
    """The largest |eigenvalue| of a symmetric operator on (x, y) pairs, by `iters` steps of power
    iteration from a random start, as a 0-d tensor (tensor operations only, so that it runs
    under torch.func.vmap)."""
    v = tuple(torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(t.device) for t in like)
    estimate = torch.zeros((), dtype=like[0].dtype, device=like[0].device)
    for _ in range(iters):
        norm = torch.sqrt(sum(inner(p, p) for p in v))
        v = tuple(p / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny) for p in v)
        w = matvec(v)
        # ||A v_k|| grows with k for symmetric A: the running maximum keeps an overflow (inf) once seen
        estimate = torch.maximum(estimate, torch.sqrt(sum(inner(p, p) for p in w)))
        v = w
    return torch.clamp(estimate, min=1e-12)


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
    along the run, which is why the default steps (`step_or`) are also capped.
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


def curvatures(oracle: Oracle, problem: BilevelProblem, generator: torch.Generator, *, g: bool,
               f: bool = False) -> dict[str, float | Tensor | None]:
    """The State fields lipschitz_g (L_g, where g) and lipschitz_f_y (where f) at (x0, y0), each
    from `curvature_in_y` (L_g drawn first), None where not asked for: `init` asks for those
    that a default step of the solver needs."""
    x, y = problem.x0, problem.y0
    return {"lipschitz_g": curvature_in_y(oracle, x, y, generator) if g else None,
            "lipschitz_f_y": curvature_in_y(oracle, x, y, generator, of="f") if f else None}


def step_or(value: float | None, curvature: float | Tensor | None, cap: float) -> float | Tensor:
    """A step size: `value` when given, else min(cap, 1 / curvature), the default of a step
    that is None, from the estimate that `init` stored. The cap (the fixed default the
    methods used to take) guards a nonconvex g whose curvature is small at the start and
    grows along the run (g = 1/4 (||y||^2 - 1 - x^2)^2: 0.5 at the start, about 13 at the
    solution, where a step 1/0.5 diverges and 0.1 converges)."""
    return value if value is not None else capped(cap, curvature)


def capped(step: float, curvature: float | Tensor) -> float | Tensor:
    """min(step, 1 / curvature), for floats or (batched) 0-d tensors, without dividing by 0."""
    if isinstance(curvature, Tensor):
        return step / torch.clamp(step * curvature, min=1.0)
    return step / max(1.0, step * curvature)


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
