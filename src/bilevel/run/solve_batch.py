"""solve_batch: many seeds or starting points of one problem, solved together with torch.func.vmap.

    results = bilevel.solve_batch(lambda seed: bilevel.PROBLEMS["synthetic-sc"](seed=seed), "pgdqp",
                                  seeds=range(1000), max_iter=2000, log_every=100)

The problems of the seeds must share their structure: the same f and g (other starting
points of one problem), or f and g that are `functools.partial` of one function whose
tensor arguments have the same shapes (other data, as the built-in synthetic builders make
them). The solver's `init` and `step` then run once per iteration for the whole batch,
vectorised by `torch.func.vmap` over the torch.func back-end (`bilevel.core.oracles.Func`), and the
loop core of `solve` (bilevel.run.loop) drives them: every member gets its own `Result`, with
its own stop (tol, callback, divergence), as `solve` would give it (up to round-off: the
derivatives come from torch.func, not autograd).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from ..core import checks
from ..core.oracles import Func, Oracle
from ..core.problem import BilevelProblem
from ..core.result import Result
from ..core.state import Aux, State
from ..solvers.base import Solver
from .history import History
from .loop import Clock, iterate, nonfinite_names
from .policy import DEFAULT, RunPolicy, settings_as_overrides
from .solve import flushing_denormals, in_structure, make_solver, with_verification


@settings_as_overrides
def solve_batch(problem_factory: Callable[[int], BilevelProblem], solver: str | Solver, *, seeds: Iterable[int],
                options: Mapping[str, Any] | None = None, policy: RunPolicy | None = None,
                max_iter: int = DEFAULT.max_iter, tol: float | None = DEFAULT.tol,
                callback: Callable[[State, Aux], Any] | None = None, log_every: int = DEFAULT.log_every,
                progress: bool = False, seed: int | None = None, kkt: str | None = DEFAULT.kkt,
                flush_denormal: bool = True, verify: bool = DEFAULT.verify,
                verify_tol: float = DEFAULT.verify_tol) -> list[Result]:
    """Solve the problems `problem_factory(s)` for every s in `seeds` at once.

    The run's settings are a `bilevel.RunPolicy` with `solve`'s defaults: `policy`, with the
    keywords max_iter, tol, log_every, kkt, verify and verify_tol as overrides.

    Args:
        problem_factory: seed -> BilevelProblem; every seed's problem has the same shapes,
            bounds and structure (see the module docstring).
        solver: a registered name or a solver object whose `batch_support()` is '' (pgdqp
            with rho="grad", sgf, bome, vpbgd, meha, f2ba, hjfbio, and aid_bio and galet with
            a Neumann linear solver).
        seeds: the seeds, one member each.
        options: hyperparameters of the solver, as in `solve`.
        policy: the run's settings (`bilevel.RunPolicy`), as in `solve`. Default None.
        max_iter: iterations of every member at most. Default 1000.
        tol: each member stops with CONVERGED at its first logged row with
            max(kkt_stationarity, kkt_feasibility) <= tol, as in `solve`. Default None.
        callback: called as callback(state, aux) for every iterate of every running member;
            a true return stops that member (STOPPED).
        log_every: log every this many iterations (and the final iterate). Default 1.
        progress: show a progress bar. Default False.
        seed: seed of the generator handed to the solver (shared by all members, as
            `solve(..., seed=seed)` for each). Default None (torch's initial seed).
        kkt: KKT residuals at logged rows, as in `solve`, computed member by member (a
            loop in Python: about 100 products a member and row for "least_squares"; "none"
            for only what the step computes). Default None: "least_squares" with tol, else
            "method", as in `solve`.
        flush_denormal: flush subnormal floats to zero during the run, as in `solve`. Default True.
        verify: verify every member's answer, as in `solve` (member by member, outside
            vmap). Default True.
        verify_tol: as in `solve`. Default 1e-2.

    Returns:
        One `Result` per seed, in order. `time` is the batch's time. A member whose values
        turn non-finite stops with DIVERGED and its last finite iterate while the others go on.
    """
    solver = make_solver(solver, options)
    reason = solver.batch_support()
    if reason:
        raise ValueError(f"Invalid solver for solve_batch: {solver.name} ({reason}); run solve() for each seed")
    seed = checks.seed("seed", seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"Invalid callback: {callback!r} (expected a callable (state, aux) -> bool or None)")
    if not callable(problem_factory):
        raise TypeError(f"Invalid problem_factory: {problem_factory!r} (expected a callable seed -> BilevelProblem)")
    seeds = [checks.integer(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("Invalid seeds: [] (expected at least one seed)")
    problems = [problem_factory(s) for s in seeds]
    _check_alike(problems, seeds)
    if not isinstance(flush_denormal, bool):
        raise TypeError(f"Invalid flush_denormal: {flush_denormal!r} (expected True or False)")
    generator = torch.Generator(device=problems[0].x0.device)
    generator.manual_seed(seed if seed is not None else torch.initial_seed())
    batch = Batched(problems, solver, generator)
    histories = [History(p, policy.kkt_mode, Oracle(Func(p.f, p.g, p.y_bounds))) for p in problems]
    with flushing_denormals(flush_denormal):
        start = time.perf_counter()
        state = batch.init(max_iter)
        batch.check_start(state, seeds)
        clock = Clock(0, time.perf_counter() - start, batch.counts())
        outcomes = iterate(batch, solver, state, clock, max_iter=max_iter, log_every=log_every, tol=tol,
                           histories=histories, callback=callback, progress=progress)
        for o, h in zip(outcomes, histories):
            h.finish(o.state.x, o.state.y)
        results = [Result(x=o.state.x, y=o.state.y, status=o.status, n_iter=o.n_iter, history=h.as_dict(),
                          message=o.message, solver=solver, state=o.state) for o, h in zip(outcomes, histories)]
        if verify:
            results = [with_verification(r, p, h.oracle, policy, generator.initial_seed())
                       for r, p, h in zip(results, problems, histories)]
    return [in_structure(r, p) for r, p in zip(results, problems)]


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


# ----- batched states: tensors (batched by vmap) and Python values (shared) ------------------------
def _all_tensors(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, Tensor) for v in value)


def _split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the entries holding tensors, the other entries)."""
    dynamic = {k: v for k, v in values.items() if _all_tensors(v)}
    return dynamic, {k: v for k, v in values.items() if k not in dynamic}


def _member(value: Any, b: int) -> Any:
    """Member b of a batched value (tensors, tuples, named tuples and dicts of them)."""
    if isinstance(value, Tensor):
        return value[b]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_member(v, b) for v in value))
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


@dataclass(frozen=True)
class BatchState:
    """The members' states: the tensor fields batched along a first dimension, the other fields
    (shared by every member: k, step sizes given as numbers) as they are."""

    cls: type
    dynamic: dict[str, Any]
    static: dict[str, Any]

    def member(self, b: int) -> State:
        return self.cls(**self.static, **_member(self.dynamic, b))


@dataclass(frozen=True)
class BatchAux:
    """The members' Aux: batched diagnostics and multipliers, and diagnostics shared by all."""

    dynamic: dict[str, Any]
    static: dict[str, Any]

    def member(self, b: int) -> Aux:
        values = _member(self.dynamic, b)
        return Aux({**self.static, **values["diagnostics"]}, nu=values.get("nu"))


class Batched:
    """The `bilevel.run.loop.Stepper` of solve_batch: the solver's init and step under torch.func.vmap
    over the members' stacked data, with the call counts of one member."""

    def __init__(self, problems: Sequence[BilevelProblem], solver: Solver, generator: torch.Generator):
        self.problems, self.solver, self.template = problems, solver, problems[0]
        self.size, self.device = len(problems), problems[0].x0.device
        self.f, self.g = _Stacked("f", [p.f for p in problems]), _Stacked("g", [p.g for p in problems])
        self.generator = generator
        self.tally = Oracle(Func(self.template.f, self.template.g, self.template.y_bounds))   # one member's counts

    def _view(self, x: Tensor, y: Tensor, f_data: dict, g_data: dict) -> tuple[BilevelProblem, Oracle]:
        f, g = self.f.member(f_data), self.g.member(g_data)
        return self.template.with_objectives(f, g, x, y), Oracle(Func(f, g, self.template.y_bounds))

    def _vmap(self, member: Callable, traced: dict, args: dict, count: bool) -> dict:
        """vmap of member(args, f data, g data) -> (state, aux or None, oracle): the batched
        tensors come back, the other values of the last trace are kept in `traced`."""
        def run(dynamic: dict, f_data: dict, g_data: dict) -> dict:
            state, aux, oracle = member(dynamic, f_data, g_data)
            fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
            out, traced["static"] = _split(fields)
            traced["cls"] = type(state)
            if aux is not None:
                diagnostics, traced["aux_static"] = _split(aux.diagnostics)
                out["_aux"] = {"diagnostics": diagnostics, **({"nu": aux.nu} if aux.nu is not None else {})}
            if count:
                self.tally.counts.update(oracle.counts)
            return out
        return vmap(run, randomness="same")(args, self.f.data, self.g.data)

    def init(self, max_iter: int) -> BatchState:
        def member(dynamic: dict, f_data: dict, g_data: dict):
            problem, oracle = self._view(dynamic["x"], dynamic["y"], f_data, g_data)
            return self.solver.init(problem, oracle, max_iter=max_iter, generator=self.generator), None, oracle
        traced: dict = {}
        start = {"x": torch.stack([p.x0 for p in self.problems]), "y": torch.stack([p.y0 for p in self.problems])}
        out = self._vmap(member, traced, start, count=True)
        return BatchState(traced["cls"], out, traced["static"])

    def _step(self, state: BatchState, count: bool) -> tuple[BatchState, BatchAux]:
        def member(dynamic: dict, f_data: dict, g_data: dict):
            current = state.cls(**state.static, **dynamic)
            problem, oracle = self._view(current.x, current.y, f_data, g_data)
            return (*self.solver.step(problem, oracle, current), oracle)
        traced: dict = {}
        out = self._vmap(member, traced, state.dynamic, count)
        aux = out.pop("_aux")
        return BatchState(traced["cls"], out, traced["static"]), BatchAux(aux, traced["aux_static"])

    def step(self, state: BatchState, k: int) -> tuple[BatchState, BatchAux]:
        return self._step(state, count=True)

    def diagnose(self, state: BatchState) -> BatchAux:
        """The aux of one more step, uncounted (the solvers' `diagnose` is a step's aux or a
        part of it; under vmap the whole step is evaluated)."""
        return self._step(state, count=False)[1]

    def check(self, state: BatchState, aux: BatchAux) -> tuple[list[bool], list[bool]]:
        point = _finite([state.dynamic["x"], state.dynamic["y"]], self.size, self.device)
        values = _finite(aux.dynamic["diagnostics"].values(), self.size, self.device)
        shared = not nonfinite_names(list(aux.static.items()))
        point, values = point.tolist(), values.tolist()       # one host synchronisation
        return point, [v and shared for v in values]

    def member(self, state: BatchState, aux: BatchAux, b: int) -> tuple[State, Aux]:
        return state.member(b), aux.member(b)

    def counts(self) -> dict[str, int]:
        return self.tally.snapshot()

    def check_start(self, state: BatchState, seeds: Sequence[int]) -> None:
        """A set-up (step-size estimates, ...) that is not finite for some member is an error."""
        for name, value in state.dynamic.items():
            tensors = [value] if isinstance(value, Tensor) else list(value)
            ok = _finite(tensors, self.size, self.device)
            if not bool(ok.all()):
                bad = seeds[int((~ok).nonzero()[0])]
                raise ValueError(f"Invalid problem for {self.solver.name} (seed {bad}): its set-up at (x0, y0) gave a "
                                 f"non-finite {name}; give the solver's constants or step sizes explicitly")
