"""Run one configuration (a `RunSpec`) and write it into the result layout (bilevel.cli.store):
what `bilevel run`, `compare` and every worker of `sweep` do."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import traceback
from pathlib import Path
from typing import Any

from ..core.problem import BilevelProblem
from ..problems import resolve
from ..run.monitor import Callbacks, JsonLines, TensorBoard, tensorboard_available
from ..run.solve import make_solver, solve
from . import store
from .config import RunSpec, build_problem


def hyperparameters(solver: Any) -> dict[str, Any]:
    """The solver's hyperparameters that are plain values (numbers, strings, None)."""
    return {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)
            if isinstance(getattr(solver, f.name), (int, float, str, bool, type(None)))}


def live_log(log_dir: str | Path, run_id: str) -> Callbacks:
    """The callback of a run's live log: its rows into LOG_DIR/<run_id>.jsonl and, where the
    tensorboard package is installed, TensorBoard events into LOG_DIR/<run_id>/."""
    callbacks = [JsonLines(Path(log_dir) / f"{run_id}.jsonl")]
    if tensorboard_available():
        callbacks.append(TensorBoard(Path(log_dir) / run_id))
    return Callbacks(*callbacks)


def live_log_note(log_dir: str | Path, run_id: str = "<run_id>") -> str:
    """What `live_log` writes, in words for the command line."""
    where = Path(log_dir)
    return (f"live log: {where / (run_id + '.jsonl')}"
            + (f" and TensorBoard events in {where / run_id}" if tensorboard_available()
               else " (no TensorBoard events: pip install tensorboard)"))


def score(name: str, problem: BilevelProblem, result: Any) -> dict[str, float]:
    """The scores of a finished run by its problem's `evaluate(problem, result)` hook (a
    registered `ProblemSpec`'s, or an `evaluate` attribute of a user's builder); {} where the
    problem has none."""
    evaluate = getattr(resolve(name), "evaluate", None)
    return {k: float(v) for k, v in evaluate(problem, result).items()} if evaluate is not None else {}


def run(spec: RunSpec, out: str | Path | None, *, device: str | None = None, progress: bool = False,
        distributed: bool = False, shard: dict[str, int] | None = None, checkpoint: str | None = None,
        checkpoint_every: int = 100, raise_errors: bool = False, log_dir: str | Path | None = None) -> dict[str, Any]:
    """Run `spec` and write `OUT/runs/<run_id>/` (history.parquet, answer.pt, then summary.json;
    nothing when OUT is None); return the run's manifest record ("status": "finished" or
    "failed" with the error).

    Args:
        shard: {"rank": r, "world_size": w} for a data-parallel run (`distributed=True`): the
            builder's arguments; only rank 0 writes.
        raise_errors: raise a failed run's exception (the CLI's `run`) instead of recording it
            (sweeps go on after a failed run).
        log_dir: write the rows live as they are logged (`live_log`; rank 0 only).
    """
    start = time.perf_counter()
    record = {**spec.describe(), "world_size": (shard or {}).get("world_size", 1)}
    is_main = (shard or {}).get("rank", 0) == 0
    try:
        problem = build_problem(spec.problem, spec.seed, {**dict(spec.problem_args), **(shard or {})}, device)
        solver = make_solver(spec.method, dict(spec.options))
        logger = live_log(log_dir, spec.run_id) if log_dir is not None and is_main else contextlib.nullcontext()
        with logger as callback:
            result = solve(problem, solver, policy=spec.policy(), seed=spec.seed, progress=progress,
                           distributed=distributed,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, callback=callback,
                           batch_size=spec.batch_size, oracle=spec.oracle)
        wall = time.perf_counter() - start
        scores = score(spec.problem, problem, result)
        final = {**{k: v[-1] for k, v in result.history.items()}, **store.verified_columns(result.verification),
                 **scores}
        record.update(status="finished", result_status=result.status.name, success=result.success, n_iter=result.n_iter,
                      message=result.message, wall_s=wall, final=final, scores=scores)
        if is_main and out is not None:
            _write(spec, out, problem, solver, result, record, device)
    except Exception as exc:  # a failed run is recorded, the sweep goes on
        if raise_errors:
            raise
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                      wall_s=time.perf_counter() - start)
    return record


def _write(spec: RunSpec, out: str | Path, problem: BilevelProblem, solver: Any, result: Any, record: dict[str, Any],
           device: str | None) -> None:
    directory = store.run_dir(out, spec.run_id)
    options = dict(spec.options)
    if spec.batch_size is not None:     # a configuration of its own in tables and plots
        options["batch_size"] = spec.batch_size
    if spec.oracle != "autograd":
        options["oracle"] = spec.oracle
    columns = {f"hp_{k}": v for k, v in options.items()}
    frame = store.tidy(result, record["scores"], run_id=spec.run_id, method=spec.method, problem=spec.problem,
                       title=problem.name, problem_args=dict(spec.problem_args), seed=spec.seed, hyperparameters=hyperparameters(solver),
                       config=json.dumps(options, sort_keys=True, default=str), **columns,
                       **store.provenance(device))
    store.write_parquet(frame, directory / "history.parquet")
    store.write_answer(result, directory / "answer.pt")
    references = store.reference_path(out, spec.problem, dict(spec.problem_args), spec.seed)
    lines = problem.info.get("reference_lines")
    if callable(lines) and not references.exists():
        store.write_json(lines(), references)
    store.write_json({**record, "title": problem.name, "hyperparameters": hyperparameters(solver),
                      "provenance": store.provenance(device)}, directory / "summary.json")
