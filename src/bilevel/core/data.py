"""Data of a bilevel problem and minibatches of it.

A problem given `upper_data` and `lower_data` has objectives f(x, y, batch) and
g(x, y, batch) that read a batch of their level's data: a tensor, a tuple of tensors sharing
their first dimension (samples), or a `torch.utils.data.Dataset` (a batch is its items put
together by `default_collate`). Full-data evaluations (the problem's f(x, y), metrics,
verification) pass all of it; `solve(..., batch_size=B)` evaluates the run's oracle on
minibatches instead:

    Sampled     the derivative back-end of f(., ., B_f) and g(., ., B_g) for the current batches,
                redrawn at every step from the run's seeded generator

Batches are drawn uniformly with replacement (`torch.randint`): every minibatch value,
gradient and Hessian- or Jacobian-vector product is an unbiased estimate of its full-data
value. A product of two estimates from one batch is not (h = ||grad_y g||^2 is biased upwards
by the batch variance); solvers that need it draw a second, independent batch (`resample`).
The sample indices of the current batches are `Sampled.indices`; `Sampled.select(upper, lower)`
makes the batches those of given indices (a method whose estimator keeps memories of fixed
groups of samples, as SABA's SAGA tables, chooses its batch itself).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from . import checks


class Data:
    """One level's data: tensors sharing their first dimension, or a Dataset.

    Args:
        name: the argument it came from (for messages), "upper_data" or "lower_data".
        value: a tensor, a tuple or list of tensors with one first dimension, or a Dataset.
    """

    def __init__(self, name: str, value: Any):
        self.name, self.value = name, value
        if isinstance(value, Tensor):
            self.size = self._size(value)
        elif isinstance(value, (tuple, list)) and value and all(isinstance(t, Tensor) for t in value):
            sizes = {self._size(t) for t in value}
            if len(sizes) != 1:
                raise ValueError(f"Invalid {name}: tensors with first dimensions {sorted(sizes)} (expected one "
                                 f"number of samples)")
            self.size = sizes.pop()
            self.value = tuple(value)
        elif isinstance(value, Dataset) and hasattr(value, "__len__"):
            self.size = len(value)
            if self.size < 1:
                raise ValueError(f"Invalid {name}: an empty Dataset")
        else:
            raise TypeError(f"Invalid {name}: {type(value).__name__} (expected a tensor, a tuple of tensors sharing "
                            f"their first dimension, or a torch.utils.data.Dataset)")
        self._all: Any = None

    def _size(self, t: Tensor) -> int:
        if t.dim() == 0 or t.shape[0] < 1:
            raise ValueError(f"Invalid {self.name}: a tensor of shape {tuple(t.shape)} (expected samples along the "
                             f"first dimension)")
        return t.shape[0]

    @property
    def tensors(self) -> bool:
        """Whether the data are tensors (a tensor or a tuple of them), which `rows` takes from."""
        return not isinstance(self.value, Dataset)

    def take(self, indices: Tensor) -> Any:
        """The batch of the samples at `indices` (a 1-d integer tensor)."""
        if self.tensors:
            return rows(self.value, indices)
        return default_collate([self.value[int(i)] for i in indices])

    def all(self) -> Any:
        """The batch of every sample (collated once for a Dataset)."""
        if not isinstance(self.value, Dataset):
            return self.value
        if self._all is None:
            self._all = self.take(torch.arange(self.size))
        return self._all


def rows(value: Tensor | tuple[Tensor, ...], indices: Tensor) -> Any:
    """The rows at `indices` (a 1-d integer tensor) of a tensor or of each tensor of a tuple, by
    index_select (a copy of whole rows: on the CPU 5x faster than t[indices] for 64 rows of 784
    floats)."""
    if isinstance(value, Tensor):
        return torch.index_select(value, 0, indices.to(value.device))
    return tuple(torch.index_select(t, 0, indices.to(t.device)) for t in value)


def on_data(x: Tensor, y: Tensor, *, fn: Callable, data: Any, weight: float = 1.0) -> Tensor:
    """fn(x, y, data): an objective on a batch (what the problem's two-argument f and g are, as
    functools.partial of this function, with all of their level's data), times `weight` (a
    rank's share of a batch in a data-parallel run, `Shard`)."""
    value = fn(x, y, data)
    return value if weight == 1.0 else weight * value


def _level(x: Tensor, y: Tensor, upper: Any, lower: Any, upper_weight: float, lower_weight: float, *,
           fn: Callable, level: int) -> Tensor:
    """fn on its level's batch of the pair (upper, lower), weighted (`on_data`): the objectives of
    data that `Sampled` hands a back-end built once for all batches."""
    return on_data(x, y, fn=fn, data=(upper, lower)[level], weight=(upper_weight, lower_weight)[level])


def _level_rows(x: Tensor, y: Tensor, upper: Any, upper_indices: Tensor, lower: Any, lower_indices: Tensor, *,
                fn: Callable, level: int) -> Tensor:
    """fn on the `rows` of its level's data at its level's indices: `_level` with the batches
    taken inside the objective (inside a compiled graph, where the rows are copied without a
    dispatch of their own)."""
    data, indices = ((upper, upper_indices), (lower, lower_indices))[level]
    return fn(x, y, rows(data, indices))


@dataclass(frozen=True)
class Shard:
    """This rank's block of one level's samples in a data-parallel run: its `size` samples are
    numbers offset .. offset + size - 1 of the `total` held by all the ranks (in rank order).

    Objectives of data are means over a batch (plus terms that do not depend on it), so that the
    sum over the ranks of weight_r fn(x, y, part_r), with part_r the samples of a batch of B that
    rank r holds and weight_r = |part_r| / B, is fn on the whole batch: the ranks together
    evaluate exactly the batch a single process would draw from all the data."""

    offset: int
    size: int
    total: int

    def part(self, indices: Tensor) -> tuple[Tensor, float]:
        """(the local indices of the samples of `indices` this rank holds, their weight |part| / B)."""
        mine = (indices >= self.offset) & (indices < self.offset + self.size)
        return indices[mine] - self.offset, float(mine.sum()) / indices.numel()


def batch_sizes(value: Any, sizes: tuple[int, int]) -> tuple[int, int]:
    """`batch_size` of solve, checked: one number for both levels or an (upper, lower) pair, each
    at most the level's number of samples."""
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"Invalid batch_size: {value!r} (expected a number or an (upper, lower) pair)")
    out = tuple(checks.integer("batch_size", b, 1) for b in pair)
    for level, b, n in zip(("upper", "lower"), out, sizes):
        if b > n:
            raise ValueError(f"Invalid batch_size: {value!r} (the {level} level has {n} samples)")
    return out  # type: ignore[return-value]


class Batches(tuple):
    """The current (upper, lower) batches of a `Sampled` back-end, as a pair, carrying the sample
    `indices` they were taken at (so that setting them back restores the indices too) and the
    `weights` of this rank's parts (1 outside data-parallel runs)."""

    indices: tuple[Tensor | None, Tensor | None] = (None, None)
    weights: tuple[float, float] = (1.0, 1.0)


class Sampled:
    """The back-end of minibatch objectives: `make(f_B, g_B)` for the current batches B_f, B_g of
    the problem's data, redrawn by `resample` from `generator`. Where `make(f, g, on_data=True)`
    gives a back-end of objectives of data (torch.func, compiled or not), it is built once and
    every batch is an argument of its derivatives (`bilevel.core.oracles.Func.on`): compiled
    derivatives are compiled once, not once per batch.

    Args:
        make: (f, g) -> a back-end (`bilevel.core.oracles.backend` of a kind); (f, g, on_data=True)
            -> a back-end of objectives f(x, y, B_f, B_g, w_f, w_g), or None, where make takes on_data.
        objectives: the problem's f(x, y, batch) and g(x, y, batch).
        data: the problem's upper and lower `Data`.
        sizes: the batch sizes (upper, lower).
        generator: the run's generator (its state is in checkpoints, so a continued run draws the
            batches an uninterrupted one would).
        shards: in a data-parallel run, this rank's (upper, lower) `Shard`: batches are drawn
            over all the ranks' samples from the generator every rank shares, and each rank
            evaluates the part it holds, weighted. None: the data are all here.
    """

    sampled = True

    def __init__(self, make: Callable, objectives: tuple[Callable, Callable], data: tuple[Data, Data],
                 sizes: tuple[int, int], generator: torch.Generator, shards: tuple[Shard, Shard] | None = None):
        self.make, self.objectives, self.data, self.sizes, self.generator = make, objectives, data, sizes, generator
        self.shards = shards
        self.totals = tuple(d.size for d in data) if shards is None else tuple(s.total for s in shards)
        self.current: tuple[Any, Any] = (None, None)
        self.current_indices: tuple[Tensor | None, Tensor | None] = (None, None)
        self.current_weights: tuple[float, float] = (1.0, 1.0)
        self._local: tuple[Tensor | None, Tensor | None] = (None, None)
        self._stale = [False, False]
        self.reusable = self.taking = None
        self._untaken: tuple[Tensor, Tensor] | None = None
        if "on_data" in inspect.signature(make).parameters:
            self.reusable = make(partial(_level, fn=objectives[0], level=0),
                                 partial(_level, fn=objectives[1], level=1), on_data=True)
            if shards is None and all(d.tensors for d in data):
                self.taking = make(partial(_level_rows, fn=objectives[0], level=0),
                                   partial(_level_rows, fn=objectives[1], level=1), on_data=True)
        self.resample()

    def _draw(self, level: int) -> Tensor:
        return torch.randint(self.totals[level], (self.sizes[level],), generator=self.generator,
                             device=self.generator.device)

    def resample(self, which: str = "both") -> None:
        """Draw new batches: "both", "upper" (f's) or "lower" (g's)."""
        upper = self._draw(0) if which in ("both", "upper") else None
        lower = self._draw(1) if which in ("both", "lower") else None
        self.select(upper, lower)

    def select(self, upper: Tensor | None = None, lower: Tensor | None = None) -> None:
        """Make the current batches those of the samples at these indices (1-d integer tensors;
        None keeps that level's batch). Their data are taken when the back-end is first asked
        for a value: a batch replaced before that (the one drawn for a step whose solver picks
        its own, as saba) costs nothing."""
        local, indices, weights = list(self._local), list(self.current_indices), list(self.current_weights)
        for level, chosen in enumerate((upper, lower)):
            if chosen is None:
                continue
            here = chosen
            if self.shards is not None:
                here, weights[level] = self.shards[level].part(chosen)
                if here.numel() == 0:           # none of the batch here: any sample, weighted 0
                    here = torch.zeros(1, dtype=chosen.dtype, device=chosen.device)
            local[level], indices[level] = here, chosen
            self._stale[level] = True
        self._local, self.current_indices, self.current_weights = tuple(local), tuple(indices), tuple(weights)

    def _take(self) -> None:
        """Take the data of the batches selected since the last evaluation and rebuild the back-end.
        Where both levels were drawn anew and `taking` exists (tensor data, one process), the
        back-end takes the rows itself from the indices (`_level_rows`) and the batches are
        taken here only when read (`batches`)."""
        if not any(self._stale):
            return
        if self.taking is not None and all(self._stale):
            self._untaken = self._local
            self._stale = [False, False]
            self.inner = self.taking.on(self.data[0].value, self._local[0], self.data[1].value, self._local[1])
            return
        current = self._taken()
        batches = [self.data[level].take(self._local[level]) if self._stale[level] else current[level]
                   for level in (0, 1)]
        pair = Batches((batches[0], batches[1]))
        pair.indices, pair.weights = self.current_indices, self.current_weights
        self.batches = pair

    def _taken(self) -> tuple[Any, Any]:
        """The current batches, taken now where the back-end took them itself."""
        if self._untaken is not None:
            pair = Batches((self.data[0].take(self._untaken[0]), self.data[1].take(self._untaken[1])))
            pair.indices, pair.weights = self._untaken, (1.0, 1.0)
            self.current, self._untaken = pair, None
        return self.current

    @property
    def indices(self) -> tuple[Tensor | None, Tensor | None]:
        """The sample indices of the current (upper, lower) batches, as drawn by `resample` or
        chosen by `select` (None for a level whose batch was set through `batches` as plain data)."""
        return self.current_indices

    @property
    def batches(self) -> tuple[Any, Any]:
        """The current (upper, lower) batches (a `Batches` pair, which also carries their indices);
        setting them rebuilds the back-end on them."""
        self._take()
        return self._taken()

    @batches.setter
    def batches(self, value: tuple[Any, Any]) -> None:
        self.current, self._untaken = value, None
        self.current_indices = getattr(value, "indices", (None, None))
        self.current_weights = getattr(value, "weights", (1.0, 1.0))
        self._stale = [False, False]
        (f, g), (wf, wg) = self.objectives, self.current_weights
        if self.reusable is not None:
            self.inner = self.reusable.on(value[0], value[1], wf, wg)
        else:
            self.inner = self.make(partial(on_data, fn=f, data=value[0], weight=wf),
                                   partial(on_data, fn=g, data=value[1], weight=wg))

    @property
    def compile_failures(self) -> dict[str, str]:
        self._take()
        backends = (self.inner,) if self.reusable is None else (self.reusable, self.taking)
        return {name: reason for b in backends for name, reason in getattr(b, "compile_failures", {}).items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or "_stale" not in self.__dict__:
            raise AttributeError(name)
        self._take()
        return getattr(self.__dict__["inner"], name)


def check_shard(rank: Any, world_size: Any) -> None:
    """rank and world_size describe a shard: integers with 0 <= rank < world_size."""
    world_size = checks.integer("world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank: {rank!r} (expected an integer in [0, {world_size - 1}])")


def shard_range(n: int, rank: int, world_size: int) -> slice:
    """The contiguous block of range(n) that rank holds; block sizes differ by at most one.

    Example:
        >>> [shard_range(5, r, 2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    check_shard(rank, world_size)
    size, extra = divmod(n, world_size)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))
