"""Variables as the user writes them (a tensor, a dict of tensors, an nn.Module's parameters)
and as the solvers see them (one tensor).

    model = torch.nn.Linear(3, 2)
    layout, flat = Layout.of("y0", model)          # flat: the 8 parameters in one vector
    params = layout.view(flat)                     # {"weight": (2, 3) view, "bias": (2,) view}
    answer = layout.structure(flat)                # a copy of the module holding flat's values

A tensor is kept as it is (any shape). A dict of floating tensors, or a module's
`named_parameters()`, is concatenated in its own order (the order of `model.parameters()`,
which `torch.nn.utils.parameters_to_vector` uses too); `view` gives a dict of views into the
flat vector, differentiable and usable with `torch.func.functional_call(model, params, ...)`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

KINDS = ("tensor", "dict", "module")


@dataclass(frozen=True)
class Layout:
    """How one variable maps to a flat tensor: its kind, and for dicts and modules the names
    and shapes of the parts (and the module to copy for answers)."""

    kind: str
    names: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()
    module: Any = None

    @staticmethod
    def of(name: str, value: Any) -> tuple["Layout", Tensor]:
        """The layout of `value` and its flat tensor (a detached copy); errors name the argument."""
        if isinstance(value, Tensor):
            return Layout("tensor"), value
        if isinstance(value, nn.Module):
            parts = dict(value.named_parameters())
            if not parts:
                raise ValueError(f"Invalid {name}: the module {type(value).__name__} has no parameters")
            layout = Layout("module", tuple(parts), tuple(tuple(p.shape) for p in parts.values()), value)
        elif isinstance(value, dict):
            parts = value
            if not parts:
                raise ValueError(f"Invalid {name}: an empty dict (expected name -> tensor)")
            layout = Layout("dict", tuple(parts), tuple(tuple(getattr(p, "shape", ())) for p in parts.values()))
        else:
            raise TypeError(f"Invalid {name}: {type(value).__name__} (expected a torch.Tensor, a dict of tensors such "
                            f"as dict(model.named_parameters()), or a torch.nn.Module)")
        for key, part in parts.items():
            if not isinstance(part, Tensor):
                raise TypeError(f"Invalid {name}[{key!r}]: {type(part).__name__} (expected a torch.Tensor)")
            if not part.is_floating_point():
                raise TypeError(f"Invalid {name}[{key!r}]: dtype {part.dtype} (expected a floating dtype)")
        first = next(iter(parts.values()))
        for key, part in parts.items():
            if (part.dtype, part.device) != (first.dtype, first.device):
                raise TypeError(f"Invalid {name}[{key!r}]: {part.dtype} on {part.device} differs from "
                                f"{first.dtype} on {first.device} (expected one dtype and device)")
        return layout, torch.cat([p.detach().reshape(-1) for p in parts.values()])

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    def view(self, flat: Tensor) -> Any:
        """What f and g receive: the tensor itself, or name -> view of `flat` with the part's shape."""
        if self.kind == "tensor":
            return flat
        return {name: chunk.view(shape) for name, chunk, shape in zip(self.names, torch.split(flat, self.sizes),
                                                                       self.shapes)}

    def structure(self, flat: Tensor) -> Any:
        """An answer in the user's structure: the tensor, a dict of tensors (copies), or a copy of the
        module holding the values, its parameters with requires_grad=False (an answer, not a
        model in training: `module.requires_grad_()` to train it on)."""
        if self.kind == "tensor":
            return flat
        parts = {name: part.clone() for name, part in self.view(flat.detach()).items()}
        if self.kind == "dict":
            return parts
        module = copy.deepcopy(self.module)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                parameter.copy_(parts[name])
        return module.requires_grad_(False)

    def flatten_like(self, name: str, value: Any) -> Any:
        """A bound (a number, or a flat tensor, or for dicts and modules a dict of numbers or
        tensors with the same names) as something that broadcasts against the flat variable."""
        if self.kind == "tensor" or not isinstance(value, dict):
            return value
        if set(value) != set(self.names):
            raise ValueError(f"Invalid {name}: names {sorted(value)} (expected {sorted(self.names)})")
        return torch.cat([torch.as_tensor(value[n], dtype=torch.float64).expand(s).reshape(-1)
                          for n, s in zip(self.names, self.shapes)])


def on_layouts(x: Tensor, y: Tensor, *rest: Any, fn: Callable, x_layout: Layout, y_layout: Layout) -> Any:
    """fn evaluated at the structured views of flat x and y (and a batch of data where f and g
    take one): what BilevelProblem hands the solvers in place of the user's f, g and metrics,
    as functools.partial of this function."""
    return fn(x_layout.view(x), y_layout.view(y), *rest)
