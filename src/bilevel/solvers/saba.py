"""saba: the framework of Dagreou et al. (2022) with SAGA variance reduction of all three
directions; memories of fixed blocks of samples, chosen through the oracle's sample indices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux
from .base import check_choice, x_step
from .soba import Directions, Framework, FrameworkState, directions, framework_aux


class Blocks(NamedTuple):
    """A fixed partition of one level's n samples into blocks of `size` consecutive entries of a
    random permutation (the last block may be shorter): `order` the permutation, `of` the
    block of each sample, `weight` each block's share of the samples |b| / n."""

    order: Tensor
    of: Tensor
    size: int
    weight: Tensor

    @classmethod
    def make(cls, n: int, size: int, generator: torch.Generator, like: Tensor) -> "Blocks":
        order = torch.randperm(n, generator=generator, device=generator.device)
        of = torch.empty(n, dtype=torch.long, device=order.device)
        of[order] = torch.arange(n, device=order.device) // size
        count = -(-n // size)
        weight = torch.full((count,), size / n, dtype=like.dtype, device=like.device)
        weight[-1] = (n - (count - 1) * size) / n
        return cls(order, of, size, weight)

    def members(self, block: int) -> Tensor:
        return self.order[block * self.size:(block + 1) * self.size]


class Memory(NamedTuple):
    """SAGA tables (one row per block) and their weighted means: from the lower blocks
    grad_y g, grad_yy g v and grad_xy g v; from the upper blocks grad_y f and grad_x f."""

    tables: tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
    means: tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class SABAState(FrameworkState):
    """saba's state: also the blocks of each level and the SAGA memory (None on full data)."""

    blocks: tuple[Blocks, Blocks] | None = None
    memory: Memory | None = None


@dataclass(frozen=True)
class SABA(Framework):
    """SABA: SOBA's three directions with SAGA variance reduction (global variance reduction).

    Each level's finite sum is split once (at init, by a random permutation) into blocks of the
    run's batch size; a step draws one lower block i and one upper block j, each with
    probability its share of the samples, and replaces every per-block term of SOBA's
    directions by its SAGA estimate,

        T_i <- T_i(x, y, v) - M_i + sum_b w_b M_b     (then M_i <- T_i(x, y, v)),

    with M the memory of the term's last value on each block and w_b = |b| / n, for the terms
    grad_y g, grad_yy g v, grad_xy g v (lower blocks) and grad_y f, grad_x f (upper blocks):

        D_y = [grad_y g]~,   D_v = [grad_yy g v]~ + [grad_y f]~,   D_x = [grad_xy g v]~ + [grad_x f]~,
        y <- P_Y(y - rho D_y),   v <- v - rho D_v,   x <- P_X(x - gamma D_x),

    with constant steps (the paper's O(1/T) rate). Each estimate is unbiased; its variance
    vanishes as the iterates converge, so SABA converges with constant steps where SOBA
    hovers. With batch size 1 the blocks are the samples: Algorithm 2 of the paper; blocks of
    the batch size (as the authors' benchmark does with its minibatches) keep one backward per
    term and block instead of one per sample. The block is chosen from the sample drawn first
    by the run's sampler (`oracle.indices`: uniform, so a block comes with probability
    |b| / n) and set with `oracle.select`. On full data (no batch_size) there is one block and
    SABA is the deterministic method of the framework (SOBA with constant steps).

    Memory: the tables hold ceil(n_g / B_g) rows of dim y (grad_y g), dim y (grad_yy g v) and
    dim x (grad_xy g v), and ceil(n_f / B_f) rows of dim y and dim x (grad f): O(n / B x dim)
    per direction, O(n x dim) at batch size 1 (n samples, B the batch size). A step writes the
    chosen blocks' rows of the tables in place (O(B dim) work, no copy of the tables): the
    state it returns shares the tables with the state it was given, whose memory then no
    longer holds the values it had (its x, y, v and means are untouched; step from the newest
    state only). The means are new tensors at every step.

    Cost per step: as SOBA (one gradient of g, one of f, one backward through grad_y g).
    init_memory="full" adds, once, one gradient of g per lower block and one of f per upper
    block (the terms with v are zero at v0 = 0).

    Args:
        step_size: gamma, the step on x. Default None: AdaGrad-norm on D_x on minibatches, rho on full data
            (as SOBA's).
        inner_step_size: rho, the step on y and v. Default None: min(0.1, 1/L_g), L_g the largest
            eigenvalue of grad_yy g at (x0, y0) on the first batch (20 Hessian-vector products),
            raised along the run where the curvature grows (as SOBA's).
        schedule: "constant" (default) or "decreasing" (as SOBA's).
        decay: tau of the decreasing schedule. Default 100.
        x_scale: as SOBA's. Default 0.1.
        curvature_every: as SOBA's. Default 10.
        init_memory: "full" (every block's terms at (x0, y0, v0): SAGA's usual start) or "zero"
            (the authors' benchmark default; the estimates are unbiased either way). Default "full".

    Convergence with constant steps against SOBA's: benchmarks/RESULTS.md, section
    "stochastic-defaults".

    References:
        Dagreou, Ablin, Vaiter, Moreau. A framework for bilevel optimization that enables
        stochastic and global variance reduction algorithms. NeurIPS 2022 (SABA, Algorithm 2).

    Example:
        >>> import bilevel
        >>> p = bilevel.PROBLEMS["biased-ridge"](seed=0)
        >>> r = bilevel.solve(p, "saba", max_iter=3000, log_every=3000, batch_size=64, seed=0)
        >>> r.history["relative_gap"][-1] < 0.005
        True
    """

    init_memory: str = "full"

    name: ClassVar[str] = "saba"
    summary: ClassVar[str] = "stochastic single-loop bilevel framework, SAGA on every direction (Dagreou et al. 2022)"
    cost: ClassVar[str] = "as soba (plus SAGA tables of n/B rows per direction)"
    diagnostics: ClassVar[tuple[str, ...]] = ("step_size",)
    stochastic: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        check_choice(self, "init_memory", ("full", "zero"))

    def batch_support(self) -> str:
        return ""

    def init(self, problem: BilevelProblem, oracle: Oracle, *, max_iter: int,
             generator: torch.Generator) -> SABAState:
        base = super().init(problem, oracle, max_iter=max_iter, generator=generator)
        state = SABAState(**{name: getattr(base, name) for name in base.__dataclass_fields__})
        if not oracle.stochastic:
            return state
        x, y = state.x, state.y
        upper_indices, lower_indices = oracle.indices
        n_upper, n_lower = oracle.data_sizes          # over all the ranks of a data-parallel run
        blocks = (Blocks.make(n_upper, len(upper_indices), generator, x),
                  Blocks.make(n_lower, len(lower_indices), generator, x))
        rows = (len(blocks[1].weight),) * 3 + (len(blocks[0].weight),) * 2
        tables = [torch.zeros((r, *t.shape), dtype=t.dtype, device=t.device) for r, t in zip(rows, (y, y, x, y, x))]
        if self.init_memory == "full":
            for b in range(rows[0]):
                oracle.select(lower=blocks[1].members(b))
                tables[0][b] = oracle.grad_g_y(x, y)
            for b in range(rows[3]):
                oracle.select(upper=blocks[0].members(b))
                _, tables[4][b], tables[3][b] = oracle.grad_f(x, y)
            oracle.select(upper_indices, lower_indices)
        weights = (blocks[1].weight,) * 3 + (blocks[0].weight,) * 2
        means = tuple(w @ t.reshape(len(w), -1) for w, t in zip(weights, tables))
        memory = Memory(tuple(tables), tuple(m.reshape(t.shape[1:]) for m, t in zip(means, tables)))
        return state.replace(blocks=blocks, memory=memory)

    def _estimate(self, oracle: Oracle, state: SABAState, update: bool):
        """The variance-reduced directions at state's iterate, and (if update) the memory with the
        chosen blocks' rows replaced by the fresh terms, in place (see `SABA`)."""
        upper_blocks, lower_blocks = state.blocks
        upper_indices, lower_indices = oracle.indices
        i = int(lower_blocks.of[lower_indices[0]])
        j = int(upper_blocks.of[upper_indices[0]])
        oracle.select(upper=upper_blocks.members(j), lower=lower_blocks.members(i))
        g, gy, jx, jy = oracle.grad_y_g_and_vjp(state.x, state.y, state.v)
        f, fx, fy = oracle.grad_f(state.x, state.y)
        fresh = (gy, jy, jx, fy, fx)
        rows = (i, i, i, j, j)
        tables, means = state.memory
        changes = tuple(new - table[r] for new, table, r in zip(fresh, tables, rows))
        reduced = tuple(change + mean for change, mean in zip(changes, means))
        d = Directions(reduced[0], reduced[1] + reduced[3], reduced[2] + reduced[4], f, g, gy)
        if not update:
            return d, None
        weights = (lower_blocks.weight[i],) * 3 + (upper_blocks.weight[j],) * 2
        for table, r, new in zip(tables, rows, fresh):
            table[r] = new
        return d, Memory(tables, tuple(mean + w * change for mean, w, change in zip(means, weights, changes)))

    def step(self, problem: BilevelProblem, oracle: Oracle, state: SABAState) -> tuple[SABAState, Aux]:
        state = self.refresh(oracle, state)
        if state.memory is None:       # full data: the deterministic framework
            d = directions(oracle, state.x, state.y, state.v)
            new, gamma = self.advance(problem, state, d.dy, d.dv, d.dx)
        else:
            d, memory = self._estimate(oracle, state, update=True)
            new, gamma = self.advance(problem, state, d.dy, d.dv, d.dx, memory=memory)
        return new, framework_aux(problem, state.y, d, state.v, gamma)

    def diagnose(self, problem: BilevelProblem, oracle: Oracle, state: SABAState) -> Aux:
        if state.memory is None:
            return self.step(problem, oracle, state)[1]
        d = self._estimate(oracle, state, update=False)[0]
        return framework_aux(problem, state.y, d, state.v, x_step(self.steps(state)[1], self.x_scale, state, d.dx)[0])
