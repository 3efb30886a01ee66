"""The one result layout of `bilevel run`, `compare` and `sweep`, and reading it back.

    OUT/manifest.jsonl                      one JSON line per finished or failed run
    OUT/runs/<run_id>/history.parquet       the run's tidy rows: one per logged iteration,
                                            with method, problem, seed and configuration
    OUT/runs/<run_id>/answer.pt             the answer: x, y (in the problem's structure), status,
                                            verification (`read_answer`)
    OUT/runs/<run_id>/summary.json          configuration, status, final values, provenance
    OUT/references/<problem key>.json       a problem's reference lines (plots), stored once

Every file is written atomically (`bilevel.core.files.atomic_write`), so a killed run or sweep
leaves finished runs whole and resumes without losing or duplicating any.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core.files import atomic_write
from ..core.result import Result
from ..core.version import VERSION


class ResultsError(ValueError):
    """A results directory that cannot be read as one."""


def provenance(device: Any = None) -> dict[str, str]:
    """Package, torch and Python versions, and the device a run used."""
    return {"bilevel_version": VERSION, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "device": str(device or "cpu"),
            "machine": platform.machine()}


# the verification's numbers that become columns of a run's final row, by their keys in
# Result.verification (`verified` is 1 or 0)
VERIFIED_KEYS = {"verified_f": "upper_value", "lower_gap": "lower_gap", "y_distance": "y_distance",
                 "upper_relative": "upper_relative", "verified": "passed"}
VERIFIED_COLUMNS = tuple(VERIFIED_KEYS)


def verified_columns(verification: dict[str, Any] | None) -> dict[str, float]:
    """The verification's numbers as columns (`VERIFIED_KEYS`: verified_f is f at the re-solved
    y) and `verified_<metric>` for each of the problem's metrics."""
    if verification is None:
        return {}
    return {**{column: verification[key] for column, key in VERIFIED_KEYS.items()},
            "verified": float(verification["passed"]),
            **{f"verified_{name}": value for name, value in verification["metrics"].items()}}


def tidy(result: Result, scores: dict[str, float] | None = None, **columns: Any) -> pd.DataFrame:
    """The history of one run as a tidy frame, with constant columns (method, seed, ...), and
    the verification's numbers (`verified_columns`) and the problem's scores of the run (its
    evaluate hook) on the final row."""
    frame = pd.DataFrame(result.history)
    frame["iter"] = frame["iter"].astype("int64")
    for name, value in {**verified_columns(result.verification), **(scores or {})}.items():
        frame[name] = [float("nan")] * (len(frame) - 1) + [value]
    for name, value in columns.items():
        frame[name] = value if not isinstance(value, (dict, list, tuple)) else json.dumps(value, sort_keys=True)
    frame["status"] = result.status.name
    return frame


def run_dir(out: str | Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_json(obj: Any, path: str | Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    return atomic_write(path, write)


def write_answer(result: Result, path: str | Path) -> Path:
    """The answer of a run (x, y, status, message, n_iter, verification) with torch.save."""
    answer = {"x": result.x, "y": result.y, "status": result.status.name, "message": result.message,
              "n_iter": result.n_iter, "success": result.success, "verification": result.verification}
    return atomic_write(path, lambda tmp: torch.save(answer, tmp))


def read_answer(path: str | Path, run_id: str | None = None) -> dict[str, Any]:
    """The answer saved by a run: `read_answer(OUT/runs/<run_id>/answer.pt)` or
    `read_answer(OUT/runs/<run_id>)`, or `read_answer(OUT, run_id)`, or `read_answer(OUT)` when
    OUT holds one run. A dict with x, y
    (tensors, dicts of tensors or modules, as the problem was given), status, message,
    n_iter, success and verification."""
    path = Path(path)
    if path.is_dir() and run_id is None and (path / "answer.pt").exists():     # a run's own directory
        path = path / "answer.pt"
    elif path.is_dir():
        if run_id is None:
            finished = list(dict.fromkeys(r["run_id"] for r in read_manifest(path) if r.get("status") == "finished"))
            if len(finished) != 1:
                raise ResultsError(f"Invalid results directory: {str(path)!r} holds {len(finished)} finished runs "
                                   f"(give the run_id: one of {', '.join(finished[:5])}{'...' if len(finished) > 5 else ''})")
            run_id = finished[0]
        path = run_dir(path, run_id) / "answer.pt"
    if not path.exists():
        raise ResultsError(f"Invalid answer: {str(path)!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def reference_path(out: str | Path, problem: str, problem_args: dict[str, Any], seed: int) -> Path:
    """Where the reference lines of one problem instance are kept."""
    key = json.dumps({"problem": problem, "args": problem_args, "seed": seed}, sort_keys=True, default=str)
    return Path(out) / "references" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    """The manifest's records (a torn last line from a killed process is ignored)."""
    path = Path(out) / "manifest.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_manifest(out: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line, flushed and fsynced. A torn last line (a process killed while
    writing) is closed first, so that it cannot swallow the record appended after it."""
    path = Path(out) / "manifest.jsonl"
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a") as fh:
        fh.write(("\n" if torn else "") + json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def finished_ids(out: str | Path) -> set[str]:
    """Runs whose summary exists (written atomically after the history, so both are complete)."""
    return {p.parent.name for p in (Path(out) / "runs").glob("*/summary.json")}


def read_results(out: str | Path) -> pd.DataFrame:
    """The tidy table of a results directory: one row per (run, logged iteration), for the
    runs that the manifest records as finished (a stray run of another configuration is left out)."""
    finished = [r["run_id"] for r in read_manifest(out) if r.get("status") == "finished"]
    files = [run_dir(out, run_id) / "history.parquet" for run_id in dict.fromkeys(finished)]
    files = [f for f in files if f.exists()]
    if not files:
        raise ResultsError(f"Invalid results directory: {str(out)!r} (no finished runs in {Path(out) / 'runs'})")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_references(out: str | Path, frame: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """title -> the reference lines stored by the runs of that problem (metric -> {label: value});
    the first seed's lines stand for the problem."""
    lines: dict[str, dict[str, dict[str, float]]] = {}
    for (title, problem, args), sub in frame.groupby(["title", "problem", "problem_args"]):
        path = reference_path(out, problem, json.loads(args), int(sub["seed"].min()))
        if path.exists() and title not in lines:
            lines[title] = json.loads(path.read_text())
    return lines
