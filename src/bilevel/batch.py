"""solve_batch: many seeds or starting points of one problem, solved together with torch.func.vmap.

    results = bilevel.solve_batch(lambda seed: bilevel.PROBLEMS["synthetic-sc"](seed=seed), "pgdqp",
                                  seeds=range(1000), max_iter=2000, log_every=100)

The problems of the seeds must share their structure: the same f and g (other starting
points of one problem), or f and g that are `functools.partial` of one function whose
tensor arguments have the same shapes (other data, as the built-in synthetic builders make
them). The solver's `init` and `step` then run once per iteration for the whole batch,
vectorised by `torch.func.vmap` over a `FuncOracle`, and every member gets its own `Result`,
as `solve` would give it (up to round-off: the derivatives come from torch.func, not autograd).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.func import vmap
from tqdm.auto import tqdm

from . import checks
from .oracles import FuncOracle, Oracle
from .problem import BilevelProblem
from .result import Result, Status
from .solve import History, flushing_denormals, make_solver
from .solvers.base import Solver, State


def solve_batch(problem_factory: Callable[[int], BilevelProblem], solver: str | Solver, *, seeds: Iterable[int],
                max_iter: int = 1000, log_every: int = 1, progress: bool = False, seed: int | None = None,
                flush_denormal: bool = True, **solver_options: Any) -> list[Result]:
    """Solve the problems `problem_factory(s)` for every s in `seeds` at once.

    Args:
        problem_factory: seed -> BilevelProblem; every seed's problem has the same shapes,
            bounds and structure (see the module docstring).
        solver: a registered name or a solver object whose `batch_support()` is '' (pgdqp
            with rho="grad", sgf, bome, vpbgd, meha, f2ba, hjfbio, and aid_bio and galet with
            a Neumann linear solver).
        seeds: the seeds, one member each.
        max_iter: iterations of every member. Default 1000.
        log_every: log every this many iterations (and the final iterate). Default 1.
        progress: show a progress bar. Default False.
        seed: seed of the generator handed to the solver (shared by all members, as
            `solve(..., seed=seed)` for each). Default None (torch's initial seed).
        flush_denormal: flush subnormal floats to zero during the run, as in `solve`. Default True.
        **solver_options: hyperparameters of the solver.

    Returns:
        One `Result` per seed, in order. Histories hold the step's own diagnostics (as
        `solve(..., kkt="none")`) and each member's metrics; `time` is the batch's time.
        A member whose values turn non-finite stops with DIVERGED and its last finite
        iterate while the others go on.
    """
    solver = make_solver(solver, solver_options)
    reason = solver.batch_support()
    if reason:
        raise ValueError(f"Invalid solver for solve_batch: {solver.name} ({reason}); run solve() for each seed")
    max_iter, log_every = checks.integer("max_iter", max_iter, 0), checks.integer("log_every", log_every, 1)
    seed = checks.seed("seed", seed)
    if not callable(problem_factory):
        raise TypeError(f"Invalid problem_factory: {problem_factory!r} (expected a callable seed -> BilevelProblem)")
    seeds = [checks.integer(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("Invalid seeds: [] (expected at least one seed)")
    problems = [problem_factory(s) for s in seeds]
    _check_alike(problems, seeds)
    if not isinstance(flush_denormal, bool):
        raise TypeError(f"Invalid flush_denormal: {flush_denormal!r} (expected True or False)")
    batch = _Batch(problems, solver, max_iter, seed if seed is not None else torch.initial_seed())
    with flushing_denormals(flush_denormal):
        return batch.run(seeds, max_iter, log_every, progress)


# ----- stacking the members' problems ----------------------------------------------------------
def _check_alike(problems: Sequence[Any], seeds: Sequence[int]) -> None:
    first = problems[0]
    for s, p in zip(seeds, problems):
        if not isinstance(p, BilevelProblem):
            raise TypeError(f"Invalid problem_factory: it returned {type(p).__name__} for seed {s} "
                            f"(expected a BilevelProblem)")
        for name in ("x0", "y0"):
            a, b = getattr(first, name), getattr(p, name)
            if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
                raise ValueError(f"Invalid problem_factory: {name} of seed {s} has shape {tuple(b.shape)}, {b.dtype} on "
                                 f"{b.device}; seed {seeds[0]}'s has {tuple(a.shape)}, {a.dtype} on {a.device}")
        for name in ("x_bounds", "y_bounds"):
            if not _same_bounds(getattr(first, name), getattr(p, name)):
                raise ValueError(f"Invalid problem_factory: {name} of seed {s} differ from seed {seeds[0]}'s "
                                 f"(the members must share their bounds)")


def _same_bounds(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return all((u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
               for u, v in zip(a, b))


class _Stacked:
    """One objective of every member: a shared function, or functools.partial of one function
    whose differing tensor arguments are stacked along a new first dimension (`data`)."""

    def __init__(self, name: str, functions: Sequence[Callable]):
        first = functions[0]
        self.first, self.data = first, {}
        if all(fn is first for fn in functions):
            return
        if not all(isinstance(fn, functools.partial) and fn.func is first.func and len(fn.args) == len(first.args)
                   and fn.keywords.keys() == first.keywords.keys() for fn in functions):
            raise ValueError(f"Invalid problem_factory: the seeds' {name} differ, and are not functools.partial of "
                             f"one function with the same arguments (write {name} as partial(fn, data=...) with the "
                             f"data as tensors, or share one {name} and vary x0, y0)")
        values = {**{i: [fn.args[i] for fn in functions] for i in range(len(first.args))},
                  **{k: [fn.keywords[k] for fn in functions] for k in first.keywords}}
        for key, vals in values.items():
            if all(v is vals[0] for v in vals):
                continue
            if all(isinstance(v, Tensor) for v in vals) and len({(v.shape, v.dtype, v.device) for v in vals}) == 1:
                self.data[key] = torch.stack(vals)
            elif not all(isinstance(v, Tensor) for v in vals) and all(v == vals[0] for v in vals):
                continue
            else:
                raise ValueError(f"Invalid problem_factory: argument {key!r} of the seeds' {name} differs and is not "
                                 f"a tensor of one shape (it cannot be stacked)")

    def member(self, data: dict[Any, Tensor]) -> Callable:
        """The objective of one member, from its slice of `data` (inside vmap)."""
        if not isinstance(self.first, functools.partial) or not data:
            return self.first
        args = [data.get(i, a) for i, a in enumerate(self.first.args)]
        keywords = {k: data.get(k, v) for k, v in self.first.keywords.items()}
        return functools.partial(self.first.func, *args, **keywords)


# ----- states as tensors (batched by vmap) and Python values (shared) ----------------------------
def _all_tensors(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, Tensor) for v in value)


def _split(state: State) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fields holding tensors, the other fields); info is split entry by entry."""
    dynamic, static = {}, {}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if field.name == "info":
            dynamic["info"] = {k: v for k, v in value.items() if isinstance(v, Tensor)}
            static["info"] = {k: v for k, v in value.items() if not isinstance(v, Tensor)}
        elif _all_tensors(value):
            dynamic[field.name] = value
        else:
            static[field.name] = value
    return dynamic, static


def _merge(cls: type, static: dict[str, Any], dynamic: dict[str, Any]) -> State:
    info = {**static.get("info", {}), **dynamic.get("info", {})}
    fields = {**static, **dynamic, "info": info}
    return cls(**fields)


def _member(value: Any, b: int) -> Any:
    """Member b of a batched value (tensors, tuples and dicts of them)."""
    if isinstance(value, Tensor):
        return value[b]
    if isinstance(value, (tuple, list)):
        return type(value)(_member(v, b) for v in value)
    if isinstance(value, dict):
        return {k: _member(v, b) for k, v in value.items()}
    return value


def _finite(tensors: Iterable[Tensor], size: int, device: Any) -> Tensor:
    """Per member: whether all the batched tensors are finite, as a bool tensor of shape (size,)."""
    ok = torch.ones(size, dtype=torch.bool, device=device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(size, -1)).all(dim=1)
    return ok


class _Batch:
    """The batched init and step of one solver on stacked problems."""

    def __init__(self, problems: Sequence[BilevelProblem], solver: Solver, max_iter: int, seed: int):
        self.problems, self.solver, self.template = problems, solver, problems[0]
        self.f, self.g = _Stacked("f", [p.f for p in problems]), _Stacked("g", [p.g for p in problems])
        self.generator = torch.Generator(device=self.template.x0.device).manual_seed(seed)
        self.tally = Oracle(self.template.f, self.template.g)   # the call counts of one member
        self.state_cls: type = State
        self.static: dict[str, Any] = {}
        self.max_iter = max_iter

    def _view(self, x: Tensor, y: Tensor, f_data: dict, g_data: dict) -> tuple[BilevelProblem, FuncOracle]:
        f, g = self.f.member(f_data), self.g.member(g_data)
        return self.template.with_objectives(f, g, x, y), FuncOracle(f, g)

    def _traced(self, make_state: Callable, count: bool) -> Callable:
        """A function of (batched tensors, data) for vmap; shared values and counts go through self."""
        def member(dynamic: dict, f_data: dict, g_data: dict) -> dict:
            state = make_state(dynamic, f_data, g_data)
            out, self.static = _split(state[0])
            self.state_cls = type(state[0])
            if count:
                self.tally.counts.update(state[1].counts)
            return out
        return member

    def init(self) -> dict[str, Any]:
        def make(dynamic: dict, f_data: dict, g_data: dict):
            problem, oracle = self._view(dynamic["x"], dynamic["y"], f_data, g_data)
            return self.solver.init(problem, oracle, max_iter=self.max_iter, generator=self.generator), oracle
        start = {"x": torch.stack([p.x0 for p in self.problems]), "y": torch.stack([p.y0 for p in self.problems])}
        return vmap(self._traced(make, count=True), randomness="same")(start, self.f.data, self.g.data)

    def step(self, dynamic: dict[str, Any], count: bool = True) -> dict[str, Any]:
        static = dict(self.static, info={})
        cls = self.state_cls

        def make(dyn: dict, f_data: dict, g_data: dict):
            state = _merge(cls, static, {**dyn, "info": {}})
            problem, oracle = self._view(state.x, state.y, f_data, g_data)
            return self.solver.step(problem, oracle, state), oracle
        dynamic = {k: v for k, v in dynamic.items() if k != "info"}
        return vmap(self._traced(make, count), randomness="same")(dynamic, self.f.data, self.g.data)

    # ----- the loop ----------------------------------------------------------------------------
    def run(self, seeds: Sequence[int], max_iter: int, log_every: int, progress: bool) -> list[Result]:
        size, device = len(seeds), self.template.x0.device
        start = time.perf_counter()
        dynamic = self.init()
        elapsed = time.perf_counter() - start
        self._check_start(dynamic, seeds)
        histories = [History(p, "none") for p in self.problems]
        answers: list[tuple | None] = [None] * size          # (state, status, n_iter, message) once stopped
        previous = None                                      # (dynamic, static, counts, elapsed, info of it)
        counts = self.tally.snapshot()
        bar = tqdm(total=max_iter, disable=not progress, desc=f"{self.solver.name} x {size}", leave=False)
        k = 0
        for k in range(max_iter):
            t0 = time.perf_counter()
            static = self.static
            new = self.step(dynamic)
            point_ok = _finite([new["x"], new["y"]], size, device).tolist()   # one host sync per iteration
            info_ok = _finite(new["info"].values(), size, device).tolist()
            shared_ok = all(math.isfinite(v) for v in self.static["info"].values())
            step_time = time.perf_counter() - t0
            info = {**self.static["info"], **new["info"]}              # describes the iterate in `dynamic`
            for b in range(size) if k % log_every == 0 or not (all(point_ok) and all(info_ok) and shared_ok) else ():
                if answers[b] is not None:
                    continue
                if not (info_ok[b] and shared_ok):
                    answers[b] = self._diverged_at_info(b, k, dynamic, static, counts, elapsed, info, previous,
                                                        histories[b])
                elif not point_ok[b] or k % log_every == 0:
                    histories[b].log(k, elapsed, counts, _member(info, b), dynamic["x"][b], dynamic["y"][b], None)
                    if not point_ok[b]:
                        answers[b] = (_merge(self.state_cls, static, _member(dynamic, b)), Status.DIVERGED, k + 1,
                                      f"non-finite x or y at iteration {k + 1}: returning the finite iterate of "
                                      f"iteration {k}; try a smaller step_size")
            bar.update(1)
            if all(a is not None for a in answers):
                break
            previous = (dynamic, static, counts, elapsed, info)
            elapsed += step_time
            counts = self.tally.snapshot()
            dynamic = new
        else:
            k = max_iter
        bar.close()
        if any(a is None for a in answers):
            self._final_rows(dynamic, k, elapsed, counts, histories, answers)
        results = []
        for b, (state, status, n_iter, message) in enumerate(answers):
            results.append(Result(x=state.x, y=state.y, status=status, n_iter=n_iter,
                                  history=histories[b].as_dict(), message=message, solver=self.solver, state=state))
        return results

    def _check_start(self, dynamic: dict[str, Any], seeds: Sequence[int]) -> None:
        for name, value in dynamic.items():
            tensors = [value] if isinstance(value, Tensor) else list(value.values() if isinstance(value, dict) else value)
            ok = _finite(tensors, len(seeds), self.template.x0.device)
            if not bool(ok.all()):
                bad = seeds[int((~ok).nonzero()[0])]
                raise ValueError(f"Invalid problem for {self.solver.name} (seed {bad}): its set-up at (x0, y0) gave a "
                                 f"non-finite {name}; give the solver's constants or step sizes explicitly")

    def _diverged_at_info(self, b: int, k: int, dynamic, static, counts, elapsed, info, previous, history) -> tuple:
        """Member b's diagnostics at iterate k are not finite: its answer is iterate k - 1."""
        if previous is None:
            history.log(k, elapsed, counts, _member(info, b), dynamic["x"][b], dynamic["y"][b], None)
            return (_merge(self.state_cls, static, _member(dynamic, b)), Status.DIVERGED, k,
                    f"non-finite diagnostics at the iterate of iteration {k} (the start): the gradient of f or g is "
                    f"not finite there; returning it")
        p_dynamic, p_static, p_counts, p_elapsed, p_info = previous
        if not history.columns["iter"] or history.columns["iter"][-1] != k - 1:
            history.log(k - 1, p_elapsed, p_counts, _member(p_info, b), p_dynamic["x"][b], p_dynamic["y"][b], None)
        return (_merge(self.state_cls, p_static, _member(p_dynamic, b)), Status.DIVERGED, k,
                f"non-finite diagnostics at the iterate of iteration {k}: returning the finite iterate of "
                f"iteration {k - 1}")

    def _final_rows(self, dynamic, k: int, elapsed: float, counts, histories, answers) -> None:
        """The final iterate of the members still running, with the diagnostics of one more
        (uncounted, untimed) evaluation of the step there."""
        static = self.static
        diagnostics = self.step(dynamic, count=False)
        info = {**self.static["info"], **diagnostics["info"]}
        self.static = static
        for b, answer in enumerate(answers):
            if answer is None:
                histories[b].log(k, elapsed, counts, _member(info, b), dynamic["x"][b], dynamic["y"][b], None)
                answers[b] = (_merge(self.state_cls, static, _member(dynamic, b)), Status.COMPLETED, k,
                              str(Status.COMPLETED))
