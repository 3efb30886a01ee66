"""Shards of a data set for data-parallel runs: which block of the samples each rank holds."""
from __future__ import annotations

from typing import Any

from . import checks


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
