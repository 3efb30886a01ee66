"""Data-parallel runs with torch.distributed: sharded objectives, reduced oracles.

The objectives are sums over data held by the ranks r = 0..W-1 of a process group:

    f = sum_r f_r,   g = sum_r g_r,

where rank r holds a shard of the training and validation data, and f_r, g_r are
already scaled by the GLOBAL sample counts (e.g. (1/N) sum over the local shard).
x and y are replicated: every rank holds the whole of both (when x is per-sample, g_r
reads only its slice, and grad_x g_r is zero elsewhere). `Reduced` wraps a rank's
derivative back-end and sums values, gradients and second-order products over the ranks,
so every rank sees the oracle of the full problem, computes the same lambda and takes the
same step.

h = ||grad_y g||^2 is not a sum over ranks; with G = sum_r grad_y g_r and
J = sum_r J_r (J_r the Jacobian of grad_y g_r):

    grad h = 2 J^T G = sum_r 2 J_r^T G                  (local vjp with the global G)
    hess h v = 2 J^T (J v) + 2 sum_r d/dz <grad_y g_r, G> . v

A problem with data (`BilevelProblem(upper_data=..., lower_data=...)`, objectives that are
means over a batch) needs no scaling: give each rank its block of the samples, in rank order,
and f(x, y, batch), g(x, y, batch) as in one process; the full-data objective of rank r is
weighted n_r / N. With `batch_size=B` the ranks draw one batch of B from all N samples (the
generator they share) and each evaluates the part it holds, weighted by its share: the run is
the single-process run on all the data, batch for batch (`bilevel.core.data.Shard`).

A problem builder that supports sharding takes `rank` and `world_size` keyword
arguments and keeps the block `bilevel.core.data.shard_range(n, rank, world_size)` of each
data split (see bilevel.problems.toy_cleaning). A solver that cannot run data-parallel sets
`supports_distributed = False`; `solve(..., distributed=True)` then fails with a
clear error.

Example (launched as `torchrun --nproc-per-node 2 script.py`):

    >>> import torch.distributed as dist, bilevel
    >>> dist.init_process_group("gloo")                          # doctest: +SKIP
    >>> p = bilevel.PROBLEMS["toy-cleaning"](rank=dist.get_rank(), world_size=dist.get_world_size())  # doctest: +SKIP
    >>> r = bilevel.solve(p, "pgdqp", max_iter=100, distributed=True)  # doctest: +SKIP
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .data import Shard
from .oracles import inner, lower_residual

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped or failed, or the group's timeout passed."""


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


class Reduced:
    """The back-end of f = sum_r f_r, g = sum_r g_r, from this rank's back-end of f_r and g_r.

    Every method returns the same values on every rank: the local results summed by
    all_reduce (one collective per call, two where h needs the global grad_y g first). It
    wraps a back-end (`bilevel.core.oracles.Autograd` or `Func`); the counting `Oracle` around it
    counts one call as the single-process oracle does, whatever it costs here.

    Args:
        local: the back-end of this rank's parts f_r and g_r.

    Needs an initialized default process group (torch.distributed.init_process_group).
    """

    compiles = False        # no fused steps (`bilevel.core.oracles.Oracle.fused`): each call is reduced

    def __init__(self, local):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("Reduced needs an initialized torch.distributed process group "
                               "(call torch.distributed.init_process_group or launch with torchrun)")
        self.local = local

    @property
    def compile_failures(self) -> dict[str, str]:
        return getattr(self.local, "compile_failures", {})

    # ----- a rank's own minibatches (bilevel.core.data.Sampled) -------------------------------------
    @property
    def sampled(self) -> bool:
        return getattr(self.local, "sampled", False)

    def resample(self, which: str = "both") -> None:
        self.local.resample(which)

    @property
    def batches(self) -> Any:
        return self.local.batches

    @batches.setter
    def batches(self, value: Any) -> None:
        self.local.batches = value

    @property
    def indices(self) -> Any:
        return self.local.indices

    def select(self, upper: Any = None, lower: Any = None) -> None:
        self.local.select(upper, lower)

    @property
    def totals(self) -> Any:
        return self.local.totals

    def __getattr__(self, name: str) -> Any:
        """The sum over ranks of the local back-end's `name` (values, gradients, products)."""
        # iaptt_gm says it does not run data-parallel; products from one local graph are not reduced
        if name.startswith("_") or name in ("unrolled_grad", "linearize_grad_y_g"):
            raise AttributeError(name)
        method = getattr(self.__dict__["local"], name)

        def reduced(*args: Tensor):
            out = method(*args)
            return all_reduce(*out) if isinstance(out, tuple) else all_reduce(out)[0]
        return reduced

    # ----- h = ||grad_y g||^2 is not a sum: reduce grad_y g first ------------------------------
    def h_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, h, grad_x h, grad_y h) of the full problem: grad h = 2 sum_r J_r^T G. On a
        y box, with r = y - P(y - G): grad h = 2 sum_r J_r^T (r on free coordinates) + 2 r on the
        coordinates P holds at a bound (there dr_i/dy_i = 1)."""
        g_local, _, gy_local = self.local.grad_g(x, y)
        g, gy = all_reduce(g_local, gy_local)
        bounds = getattr(self.local, "y_bounds", None)
        r = lower_residual(y, gy, bounds)
        step = y - gy
        free = torch.ones_like(y, dtype=torch.bool) if bounds is None else torch.clamp(step, *bounds) == step
        hx, hy = all_reduce(*self.local.vjp_grad_y_g(x, y, torch.where(free, r, 0.0)))
        return g, gy, inner(r, r), 2 * hx, 2 * (hy + torch.where(free, 0.0, r))

    def hvp_h(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """`hess h v = 2 J^T (J v) + 2 (d/dz <grad_y g, G>) v`, each part summed over ranks."""
        gy = self.grad_g_y(x, y)
        jv = self.jvp_grad_y_g(x, y, vx, vy)
        ax, ay = self.vjp_grad_y_g(x, y, jv)
        bx, by = self.hvp_inner_grad_y_g(x, y, gy, vx, vy)
        return 2 * (ax + bx), 2 * (ay + by)


def data_shards(upper_size: int, lower_size: int) -> tuple[Shard, Shard]:
    """This rank's (upper, lower) `bilevel.core.data.Shard`: its numbers of samples and those of every
    rank (one all_reduce), the ranks' blocks numbered in rank order."""
    rank, world = _rank_and_world()
    counts = torch.zeros(2, world, dtype=torch.float64)
    counts[0, rank], counts[1, rank] = upper_size, lower_size
    counts = all_reduce(counts)[0].to(torch.int64)
    return tuple(Shard(int(row[:rank].sum()), int(row[rank]), int(row.sum())) for row in counts)  # type: ignore[return-value]


# ----- what solve() needs --------------------------------------------------------------------
@dataclass(frozen=True)
class RunContext:
    """How solve() runs: the agreed seed, whether this rank reports, and whether f and g are
    this rank's parts (the back-end is then wrapped in `Reduced`)."""

    seed: int
    is_main: bool
    distributed: bool

    def wrap(self, backend):
        """The back-end of the full problem from this rank's back-end."""
        return Reduced(backend) if self.distributed else backend


def run_context(solver: Any, distributed: bool, seed: int | None, x0: Tensor, y0: Tensor) -> RunContext:
    """Check a data-parallel run and agree on what every rank must share.

    Single-process (distributed=False): the seed (or torch's initial seed). Data-parallel:
    the solver must support it, the process group must exist, x0 and y0 must agree on every
    rank, and a seed of None becomes rank 0's.
    """
    if not isinstance(distributed, bool):
        raise TypeError(f"Invalid distributed: {distributed!r} (expected True or False)")
    if not distributed:
        return RunContext(seed if seed is not None else torch.initial_seed(), True, False)
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
    return RunContext(seed, rank == 0, True)


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


def shutdown(wait_for_others: bool = True) -> None:
    """Destroy the default process group if there is one.

    With `wait_for_others` every rank first meets the others at a barrier, so that no rank
    tears its connections down while another still uses them (gloo then aborts the process
    at exit). After another rank failed, pass False: the barrier would wait for a dead rank.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            try:
                dist.barrier()
            except RuntimeError:  # another rank is gone already: nothing left to wait for
                pass
        dist.destroy_process_group()
