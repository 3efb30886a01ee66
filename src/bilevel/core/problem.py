"""BilevelProblem: min_x f(x, y) s.t. y in argmin_y g(x, y), checked at construction."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from . import oracles
from .data import Data, on_data
from .layout import Layout, on_layouts

Objective = Callable[[Tensor, Tensor], Tensor]


def _check_tensor(name: str, value: Any) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"Invalid {name}: {type(value).__name__} (expected a torch.Tensor)")
    if not value.is_floating_point():
        raise TypeError(f"Invalid {name}: dtype {value.dtype} (expected a floating dtype, e.g. torch.float64)")
    if value.numel() == 0:
        raise ValueError(f"Invalid {name}: an empty tensor of shape {tuple(value.shape)} (expected at least one entry)")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"Invalid {name}: {bad} non-finite entries (expected all entries finite)")


def _check_bounds(name: str, bounds: Any, like: Tensor) -> tuple[Tensor | None, Tensor | None] | None:
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"Invalid {name}: {bounds!r} (expected a (low, high) pair; use None for no bound)")
    out = []
    for side, b in zip(("low", "high"), bounds):
        if b is None:
            out.append(None)
            continue
        try:
            t = torch.as_tensor(b, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"Invalid {name}: {side} bound {b!r} (expected a number or a tensor)") from None
        try:
            torch.broadcast_shapes(t.shape, like.shape)
        except RuntimeError:
            raise ValueError(f"Invalid {name}: {side} bound of shape {tuple(t.shape)} does not broadcast "
                             f"to the variable's shape {tuple(like.shape)}") from None
        if bool(torch.isnan(t).any()):
            raise ValueError(f"Invalid {name}: {side} bound contains NaN")
        out.append(t)
    low, high = out
    if low is not None and high is not None and bool((low > high).any()):
        raise ValueError(f"Invalid {name}: {bounds!r} (expected low <= high everywhere)")
    return (low, high)


def _check_inside(name: str, start: Tensor, bounds_name: str, bounds: tuple | None) -> None:
    """A start inside its box: an entry outside is an error that says how many, and the first."""
    if bounds is None:
        return
    inf = torch.tensor(math.inf, dtype=start.dtype, device=start.device)
    low = torch.broadcast_to(-inf if bounds[0] is None else bounds[0], start.shape)
    high = torch.broadcast_to(inf if bounds[1] is None else bounds[1], start.shape)
    outside = (start < low) | (start > high)
    if bool(outside.any()):
        i = int(outside.reshape(-1).nonzero()[0])
        lo, hi, value = (float(t.reshape(-1)[i]) for t in (low, high, start.detach()))
        raise ValueError(f"Invalid {name}: {int(outside.sum())} of its {start.numel()} entries are outside "
                         f"{bounds_name}, the first {value:g} (flat index {i}) not in [{lo:g}, {hi:g}] (give a start "
                         f"inside the box, e.g. {name}.clamp(low, high))")


@dataclass(frozen=True)
class NamedMetrics:
    """metrics given as {name: (x, y) -> number}: one callable (x, y) -> {name: value}."""

    functions: Mapping[str, Callable[..., Any]]

    def __call__(self, *args: Any) -> dict[str, Any]:
        return {name: function(*args) for name, function in self.functions.items()}


def _check_metrics(name: str, value: Any) -> Any:
    """None, a callable (x, y) -> dict, or a dict of callables (x, y) -> number (wrapped)."""
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and callable(v) for k, v in value.items()):
        return NamedMetrics(dict(value))
    raise TypeError(f"Invalid {name}: {value!r} (expected a callable (x, y) -> dict, a dict "
                    "{name: callable (x, y) -> number}, or None)")


def _clamp(t: Tensor, bounds: tuple[Tensor | None, Tensor | None] | None) -> Tensor:
    if bounds is None:
        return t
    return torch.clamp(t, min=bounds[0], max=bounds[1])


@dataclass(frozen=True)
class BilevelProblem:
    """A bilevel problem  min_x f(x, y)  s.t.  y in argmin_y g(x, y).

    Args:
        f: upper-level objective, (x, y) -> scalar tensor.
        g: lower-level objective, (x, y) -> scalar tensor; must depend on y.
        x0: starting upper-level variable: a floating tensor of any shape, a dict of tensors
            (e.g. `dict(model.named_parameters())`), or an nn.Module (its parameters).
        y0: starting lower-level variable, likewise; same dtype and device as x0.
        x_bounds: optional (low, high) box for x, applied by projection (None: no bound). Each
            side a number, a tensor that broadcasts to x, or for a dict or module a dict of those.
        y_bounds: optional (low, high) box for y.
        metrics: optional (x, y) -> dict[str, float], or a dict {name: (x, y) -> number},
            evaluated at logged iterations and excluded from timing (test accuracy, distance
            to a known solution, ...).
        final_metrics: optional, as metrics, for metrics too costly for every logged row (a
            model retrained from scratch): evaluated at the final row and at the verified
            answer only.
        upper_data: data of the upper level: a tensor, a tuple of tensors sharing their first
            dimension (samples), or a torch Dataset. With data, f is called as f(x, y, batch)
            (see `bilevel.core.data`): on all of it for the problem's own f(x, y), metrics and
            verification, on minibatches with `solve(..., batch_size=...)`.
        lower_data: likewise for g.
        name: a short name used in logs and result tables.
        info: facts about the instance (split sizes, known optimum, builder arguments, ...).

    Variables given as dicts or modules are flattened once into one vector (in the order of
    the dict, or of `module.parameters()`); f, g and the metrics receive them in the structure
    they were given (a dict of views for a module: use `torch.func.functional_call(module,
    params, inputs)`), the solvers work on the flat vector, and `Result.x` and `Result.y` come
    back in the given structure (a copy of the module for a module). `x0`, `y0` and the
    bounds of the problem object are the flat tensors; `layouts` says how they map back.

    Example:
        >>> import torch, bilevel
        >>> p = bilevel.BilevelProblem(
        ...     f=lambda x, y: ((x - 1) ** 2).sum() + (y ** 2).sum(),
        ...     g=lambda x, y: ((y - x) ** 2).sum(),
        ...     x0=torch.zeros(3, dtype=torch.float64), y0=torch.zeros(3, dtype=torch.float64))
    """

    f: Objective
    g: Objective
    x0: Tensor
    y0: Tensor
    x_bounds: Any = None
    y_bounds: Any = None
    metrics: Callable[[Tensor, Tensor], Mapping[str, float]] | None = None
    name: str = "custom"
    info: Mapping[str, Any] = field(default_factory=dict)
    final_metrics: Callable[[Tensor, Tensor], Mapping[str, float]] | None = None
    upper_data: Any = None
    lower_data: Any = None
    layouts: tuple[Layout, Layout] | None = None
    batched: tuple[Callable, Callable] | None = None

    def __post_init__(self) -> None:
        for arg in ("f", "g"):
            if not callable(getattr(self, arg)):
                raise TypeError(f"Invalid {arg}: {getattr(self, arg)!r} (expected a callable (x, y) -> scalar tensor)")
        for arg in ("metrics", "final_metrics"):
            object.__setattr__(self, arg, _check_metrics(arg, getattr(self, arg)))
        if self.layouts is None:
            self._flatten()
        if (self.upper_data is not None or self.lower_data is not None) and self.batched is None:
            self._bind_data()
        _check_tensor("x0", self.x0)
        _check_tensor("y0", self.y0)
        if self.x0.dtype != self.y0.dtype:
            raise TypeError(f"Invalid y0: dtype {self.y0.dtype} differs from x0's {self.x0.dtype} (expected the same dtype)")
        if self.x0.device != self.y0.device:
            raise ValueError(f"Invalid y0: device {self.y0.device} differs from x0's {self.x0.device} (expected the same device)")
        object.__setattr__(self, "x_bounds", _check_bounds("x_bounds", self.x_bounds, self.x0))
        object.__setattr__(self, "y_bounds", _check_bounds("y_bounds", self.y_bounds, self.y0))
        _check_inside("x0", self.x0, "x_bounds", self.x_bounds)
        _check_inside("y0", self.y0, "y_bounds", self.y_bounds)
        # private copies: the caller's tensors are never changed, and later changes to them do not leak in
        object.__setattr__(self, "x0", self.x0.detach().clone())
        object.__setattr__(self, "y0", self.y0.detach().clone())
        for arg in ("f", "g"):
            self._check_objective(arg)
        dep_x, dep_y = self._depends_on("g")
        if not dep_y:
            raise ValueError("Invalid g: g(x0, y0) does not depend on y (the lower level must be a function of y)")
        fx, fy = self._depends_on("f")
        if not (fx or fy):
            raise ValueError("Invalid f: f(x0, y0) depends on neither x nor y (nothing to optimise)")
        if not fy:
            warnings.warn("f(x0, y0) does not depend on y: the lower level cannot change the upper objective "
                          "(did .item(), .detach() or .numpy() on y drop its gradient?)", UserWarning, stacklevel=3)
        if oracles.flat_in_y(self.g, self.x0, self.y0):
            warnings.warn("g is flat in y at (x0, y0): grad_y g and grad_yy g v are zero there (does g use y only "
                          "through 0 * y, round, argmax or a comparison?)", UserWarning, stacklevel=3)

    def _flatten(self) -> None:
        """Variables given as dicts or modules become flat tensors, and f, g and the metrics
        functions of the flat tensors (partials of `layout.on_layouts`, so that solve_batch can
        stack the problems of several seeds)."""
        x_layout, x0 = Layout.of("x0", self.x0)
        y_layout, y0 = Layout.of("y0", self.y0)
        object.__setattr__(self, "layouts", (x_layout, y_layout))
        if x_layout.kind == y_layout.kind == "tensor":
            return
        for arg in ("f", "g", "metrics", "final_metrics"):
            fn = getattr(self, arg)
            if fn is not None:
                object.__setattr__(self, arg, partial(on_layouts, fn=fn, x_layout=x_layout, y_layout=y_layout))
        for arg, layout in (("x_bounds", x_layout), ("y_bounds", y_layout)):
            bounds = getattr(self, arg)
            if isinstance(bounds, (tuple, list)) and len(bounds) == 2:
                object.__setattr__(self, arg, tuple(None if b is None else layout.flatten_like(arg, b) for b in bounds))
        object.__setattr__(self, "x0", x0)
        object.__setattr__(self, "y0", y0)

    def _bind_data(self) -> None:
        """With data: keep f(x, y, batch) and g(x, y, batch) for minibatches (`batched`), and make
        f and g the full-data objectives (partials of `data.on_data`)."""
        if self.upper_data is None or self.lower_data is None:
            missing = "upper_data" if self.upper_data is None else "lower_data"
            raise ValueError(f"Invalid {missing}: None while the other level has data (give both; a level whose "
                             f"objective reads no data can take a tensor of sample indices)")
        object.__setattr__(self, "upper_data", Data("upper_data", self.upper_data))
        object.__setattr__(self, "lower_data", Data("lower_data", self.lower_data))
        object.__setattr__(self, "batched", (self.f, self.g))
        object.__setattr__(self, "f", partial(on_data, fn=self.f, data=self.upper_data.all()))
        object.__setattr__(self, "g", partial(on_data, fn=self.g, data=self.lower_data.all()))

    def lower_residual(self, y: Tensor, grad_y: Tensor) -> Tensor:
        """The lower level's optimality residual at y: r = y - P_Y(y - grad_y g), zero exactly at
        the KKT points of min_y g(x, .) over the y box (grad_y g itself without a box)."""
        return grad_y if self.y_bounds is None else y - self.project_y(y - grad_y)

    def free_y(self, y: Tensor, grad_y: Tensor) -> Tensor | None:
        """The coordinates of y that the lower level does not hold at a bound (a bool mask, True
        where free: y - grad_y g stays inside the box), or None without a y box."""
        if self.y_bounds is None:
            return None
        step = y - grad_y
        return self.project_y(step) == step

    def structure(self, x: Tensor, y: Tensor) -> tuple[Any, Any]:
        """(x, y) of the flat variables in the structure the problem was given (`Result.x`, `.y`)."""
        return self.layouts[0].structure(x), self.layouts[1].structure(y)

    def _check_objective(self, arg: str) -> None:
        fn = getattr(self, arg)
        try:
            with torch.no_grad():
                out = fn(self.x0.clone(), self.y0.clone())
        except Exception as exc:  # the user's function failed: say where, keep the cause
            raise ValueError(f"Invalid {arg}: calling {arg}(x0, y0) raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, Tensor):
            raise TypeError(f"Invalid {arg}: {arg}(x0, y0) returned {type(out).__name__} (expected a scalar tensor)")
        if out.numel() != 1 or out.dim() > 1:
            raise ValueError(f"Invalid {arg}: {arg}(x0, y0) returned shape {tuple(out.shape)} "
                             f"(expected a scalar; reduce with .sum() or .mean())")
        if not out.is_floating_point():
            raise TypeError(f"Invalid {arg}: {arg}(x0, y0) returned dtype {out.dtype} (expected a floating scalar; "
                            f"comparisons, argmax and integer casts are not differentiable)")
        if not math.isfinite(float(out)):
            raise ValueError(f"Invalid {arg}: {arg}(x0, y0) = {float(out)} (expected a finite value at the start)")

    def _depends_on(self, arg: str) -> tuple[bool, bool]:
        try:
            return oracles.depends_on(getattr(self, arg), self.x0.clone(), self.y0.clone())
        except Exception as exc:
            raise ValueError(f"Invalid {arg}: {arg}(x, y) cannot be differentiated ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0]}); write it with differentiable torch operations: "
                             f"no .numpy() or .item(), no in-place changes to x or y (x = x - 1, not x.sub_(1))") from exc

    # ----- helpers used by solvers and solve ---------------------------------------------
    def project_x(self, x: Tensor) -> Tensor:
        """Projection of x onto x_bounds (identity without bounds)."""
        return _clamp(x, self.x_bounds)

    def project_y(self, y: Tensor) -> Tensor:
        """Projection of y onto y_bounds (identity without bounds)."""
        return _clamp(y, self.y_bounds)

    def with_objectives(self, f: Objective, g: Objective, x0: Tensor, y0: Tensor) -> "BilevelProblem":
        """This checked problem with other f, g and start, NOT checked again: for views that
        share its structure, built inside torch.func transforms where the checks cannot run
        (bilevel.solve_batch)."""
        view = object.__new__(BilevelProblem)
        for name, value in vars(self).items():
            object.__setattr__(view, name, value)
        for name, value in (("f", f), ("g", g), ("x0", x0), ("y0", y0), ("metrics", None), ("final_metrics", None)):
            object.__setattr__(view, name, value)
        return view

    def with_start(self, x0: Any = None, y0: Any = None) -> "BilevelProblem":
        """The same problem from another starting point (given flat, or in the problem's structure)."""
        x0 = self.x0 if x0 is None else Layout.of("x0", x0)[1]
        y0 = self.y0 if y0 is None else Layout.of("y0", y0)[1]
        return replace(self, x0=x0, y0=y0)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "BilevelProblem":
        """x0, y0 and the bounds moved to a device and dtype. Data that f and g close
        over stay where they are: build the problem on the device instead."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        def move_bounds(b: Any) -> Any:
            return None if b is None else (move(b[0]), move(b[1]))

        return replace(self, x0=move(self.x0), y0=move(self.y0),
                       x_bounds=move_bounds(self.x_bounds), y_bounds=move_bounds(self.y_bounds))
