"""Data-parallel runs with torch.distributed: sharded objectives, reduced oracles.

The objectives are sums over data held by the ranks r = 0..W-1 of a process group:

    f = sum_r f_r,   g = sum_r g_r,

where rank r holds a shard of the training and validation data, and f_r, g_r are
already scaled by the GLOBAL sample counts (e.g. (1/N) sum over the local shard).
x and y are replicated: every rank holds the whole of both (when x is per-sample, g_r
reads only its slice, and grad_x g_r is zero elsewhere). `DistributedOracle` sums
values, gradients and second-order products over the ranks, so every rank sees the
oracle of the full problem, computes the same lambda and takes the same step.

h = ||grad_y g||^2 is not a sum over ranks; with G = sum_r grad_y g_r and
J = sum_r J_r (J_r the Jacobian of grad_y g_r):

    grad h = 2 J^T G = sum_r 2 J_r^T G                  (local vjp with the global G)
    hess h v = 2 J^T (J v) + 2 sum_r d/dz <grad_y g_r, G> . v

A problem builder that supports sharding takes `rank` and `world_size` keyword
arguments and keeps the block `shard_range(n, rank, world_size)` of each data split
(see bilevel.problems.toy_cleaning). A solver that cannot run data-parallel sets
`supports_distributed = False`; `solve(..., distributed=True)` then fails with a
clear error.

Example (launched as `torchrun --nproc-per-node 2 script.py`):

    >>> import torch.distributed as dist, bilevel
    >>> dist.init_process_group("gloo")                          # doctest: +SKIP
    >>> p = bilevel.PROBLEMS["toy-cleaning"](rank=dist.get_rank(), world_size=dist.get_world_size())  # doctest: +SKIP
    >>> r = bilevel.solve(p, "pgdqp", max_iter=100, distributed=True)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from .oracles import Oracle, inner

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped or failed, or the group's timeout passed."""


def check_shard(rank: Any, world_size: Any) -> None:
    """rank and world_size describe a shard: integers with 0 <= rank < world_size."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"Invalid world_size: {world_size!r} (expected an integer >= 1)")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
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


def _rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group."""
    return dist.get_rank(), dist.get_world_size()


def all_reduce(*tensors: Tensor, op: Any = None) -> tuple[Tensor, ...]:
    """The sums (or op) over the ranks of the given tensors, in one collective call.

    Raises DistributedError, naming this rank, when the collective fails.
    """
    flat = torch.cat([t.reshape(-1) for t in tensors])
    try:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM if op is None else op)
    except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, ...)
        rank, world = _rank_and_world()
        raise DistributedError(
            f"rank {rank} of {world}: all_reduce failed: another rank stopped or failed, or the process "
            f"group's timeout passed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return tuple(out)


class DistributedOracle(Oracle):
    """The oracle of f = sum_r f_r, g = sum_r g_r, from this rank's f_r and g_r.

    Every method returns the same values on every rank: the local results of the parent
    `Oracle` summed by all_reduce (one collective per call, two where h needs the global
    grad_y g first). Call counts are those of the single-process `Oracle`: one call of
    a method counts as that method counts there, whatever it costs here.

    Args:
        f: this rank's part f_r of the upper-level objective, (x, y) -> scalar tensor.
        g: this rank's part g_r of the lower-level objective.

    Needs an initialized default process group (torch.distributed.init_process_group).
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], g: Callable[[Tensor, Tensor], Tensor]):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedOracle needs an initialized torch.distributed process group "
                               "(call torch.distributed.init_process_group or launch with torchrun)")
        super().__init__(f, g)

    @contextlib.contextmanager
    def _counted_as(self, **increments: int) -> Iterator[None]:
        """Count the block's parent calls as the given increments, not as themselves."""
        before = Counter(self.counts)
        yield
        self.counts.clear()
        self.counts.update(before)
        self.counts.update(increments)

    # ----- sums over ranks of the parent's results ------------------------------------------
    def f(self, x: Tensor, y: Tensor) -> Tensor:
        return all_reduce(super().f(x, y))[0]

    def g(self, x: Tensor, y: Tensor) -> Tensor:
        return all_reduce(super().g(x, y))[0]

    def grad_f(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return all_reduce(*super().grad_f(x, y))

    def grad_g(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return all_reduce(*super().grad_g(x, y))

    def grad_g_y(self, x: Tensor, y: Tensor) -> Tensor:
        return all_reduce(super().grad_g_y(x, y))[0]

    def grad_g_x(self, x: Tensor, y: Tensor) -> Tensor:
        return all_reduce(super().grad_g_x(x, y))[0]

    def vjp_grad_y_g(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return all_reduce(*super().vjp_grad_y_g(x, y, v))

    def jvp_grad_y_g(self, x: Tensor, y: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        return all_reduce(super().jvp_grad_y_g(x, y, dx, dy))[0]

    def hvp_f(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        return all_reduce(*super().hvp_f(x, y, vx, vy))

    def hvp_inner_grad_y_g(self, x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        return all_reduce(*super().hvp_inner_grad_y_g(x, y, w, vx, vy))

    # ----- h = ||grad_y g||^2 is not a sum: reduce grad_y g first ------------------------------
    def h_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, h, grad_x h, grad_y h) of the full problem: grad h = 2 sum_r J_r^T G."""
        with self._counted_as(n_grad_g=1, n_hvp=1):
            g_local, _, gy_local = Oracle.grad_g(self, x, y)
            g, gy = all_reduce(g_local, gy_local)
            hx, hy = all_reduce(*Oracle.vjp_grad_y_g(self, x, y, gy))
        return g, gy, inner(gy, gy), 2 * hx, 2 * hy

    def hvp_h(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """hess h v = 2 J^T (J v) + 2 (d/dz <grad_y g, G>) v, each part summed over ranks."""
        with self._counted_as(n_hvp=1):
            gy = self.grad_g_y(x, y)
            jv = self.jvp_grad_y_g(x, y, vx, vy)
            ax, ay = self.vjp_grad_y_g(x, y, jv)
            bx, by = self.hvp_inner_grad_y_g(x, y, gy, vx, vy)
        return 2 * (ax + bx), 2 * (ay + by)


# ----- what solve() needs --------------------------------------------------------------------
@dataclass(frozen=True)
class RunContext:
    """How solve() runs: the oracle class, the agreed seed, and whether this rank reports."""

    oracle: Callable[[Callable, Callable], Oracle]
    seed: int
    is_main: bool


def run_context(solver: Any, distributed: bool, seed: int | None, x0: Tensor, y0: Tensor) -> RunContext:
    """Check a data-parallel run and agree on what every rank must share.

    Single-process (distributed=False): the plain Oracle and seed (or torch's initial
    seed). Data-parallel: the solver must support it, the process group must exist,
    x0 and y0 must agree on every rank, and a seed of None becomes rank 0's.
    """
    if not isinstance(distributed, bool):
        raise TypeError(f"Invalid distributed: {distributed!r} (expected True or False)")
    if not distributed:
        return RunContext(Oracle, seed if seed is not None else torch.initial_seed(), True)
    if not getattr(solver, "supports_distributed", True):
        raise ValueError(f"Invalid distributed: True with solver {solver.name!r} (it does not run data-parallel: "
                         "it needs the whole data set on one process; run it with distributed=False)")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("Invalid distributed: True without a torch.distributed process group (call "
                         "torch.distributed.init_process_group first, or launch with torchrun and --distributed)")
    rank, world = _rank_and_world()
    own_seed = seed if seed is not None else torch.initial_seed() % 2 ** 52  # exact in float64
    shared = torch.cat([torch.tensor([float(own_seed)], dtype=torch.float64, device=x0.device),
                        x0.reshape(-1).to(torch.float64), y0.reshape(-1).to(torch.float64)])
    low, high = all_reduce(shared, op=dist.ReduceOp.MIN)[0], all_reduce(shared, op=dist.ReduceOp.MAX)[0]
    if seed is not None and low[0] != high[0]:
        raise ValueError(f"Invalid seed: {seed!r} on rank {rank} (the {world} ranks were given different seeds)")
    if not torch.equal(low[1:], high[1:]):
        raise ValueError(f"Invalid problem on rank {rank}: x0 and y0 differ across the {world} ranks "
                         "(build the problem with the same seed and arguments on every rank)")
    if seed is None:  # rank 0's seed
        seed = int(all_reduce(shared[:1] * (rank == 0))[0].item())
    return RunContext(DistributedOracle, seed, rank == 0)


def init_from_env(device: str | None = None, timeout: float = 300.0) -> tuple[int, int, str | None]:
    """Initialise the default process group from torchrun's environment.

    gloo when the device is the CPU, NCCL on CUDA (each process then uses the GPU of its
    LOCAL_RANK). Collectives that wait longer than `timeout` seconds fail (a stopped or
    dead rank ends the run on every rank instead of hanging).

    Returns:
        (rank, world_size, device), device made per-rank for CUDA ("cuda:LOCAL_RANK").
    """
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ValueError(f"Invalid --distributed: {', '.join(missing)} not set (launch with "
                         "`torchrun --nproc-per-node N -m bilevel run ... --distributed`)")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"Invalid timeout: {timeout!r} (expected seconds > 0)")
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:  # the NCCL path: written for GPUs, not exercised by the CPU test-suite
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
