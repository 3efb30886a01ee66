"""State and Aux: what a solver's step takes and returns.

A solver's progress lives in a `State`; its `step` returns the next state together with an
`Aux`, the diagnostics of the iterate it was given (as optimistix's step returns
(y, state, aux)). The loop, the history and the solvers all speak these two types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor

# what every step's Aux reports (`kkt_stationarity` where the step computes it); a solver
# declares the rest in `Solver.diagnostics`
COMMON_DIAGNOSTICS = ("f", "g", "h", "kkt_feasibility", "kkt_stationarity")


@dataclass(frozen=True)
class State:
    """Progress of a solver: the iterate z_k = (x, y) and the number k of steps taken.
    Solvers subclass it with what their next step needs (a persistent inner variable, the
    step sizes resolved by `init`, ...)."""

    x: Tensor
    y: Tensor
    k: int = 0

    def replace(self, **changes) -> "State":
        """A copy with `changes` (dataclasses.replace without its call of __init__, which costs
        a few microseconds per field: a step makes one state per iteration)."""
        unknown = changes.keys() - self.__dataclass_fields__.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


@dataclass(frozen=True)
class Aux:
    """What a step computed at the iterate it was given.

    Attributes:
        diagnostics: scalars (0-d tensors or floats) at that iterate: `f`, `g`, `h`,
            `kkt_feasibility`, where the step has it `kkt_stationarity`, and method-specific
            values (lambda, the step size, ...). Logged without recomputation.
        nu: the multiplier of grad_y g = 0 that the method defines there, or None.
        checksum: None, or a 0-d tensor the step computed that is finite where the new iterate's
            x and y and these diagnostics are (their sum): the loop's guard then reads it instead
            of summing them itself (a fused step computes it inside its graph).
    """

    diagnostics: dict[str, Tensor | float] = field(default_factory=dict)
    nu: Tensor | None = None
    checksum: Tensor | None = None


def checksum(x: Tensor, y: Tensor, diagnostics: Iterable[Tensor], eager: bool = False) -> Tensor:
    """The guard's sum (`Aux.checksum`): sum x + sum y + the diagnostics (0-d tensors), finite
    exactly where all of them are, up to an overflow of the sum (which the loop then checks entry
    by entry). A chain of additions in a compiled graph (inductor fuses it into one kernel, where
    a stack of scalars costs a kernel of its own); one stack and one sum eagerly (`eager`: two ops
    in place of one per diagnostic; stack promotes the dtypes)."""
    parts = [x.sum(), y.sum(), *diagnostics]
    if eager and all(part.dim() == 0 and part.device == x.device for part in parts):
        return torch.stack(parts).sum()
    total = parts[0]
    for part in parts[1:]:
        total = total + part.to(total.device)
    return total
