"""Tidy results: one row per (run, logged iteration), written atomically as Parquet."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..result import Result


def provenance(device: Any = None) -> dict[str, str]:
    """Package, torch and Python versions, and the device a run used."""
    from .. import __version__
    return {"bilevel_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "device": str(device or "cpu"),
            "machine": platform.machine()}


def tidy(result: Result, **columns: Any) -> pd.DataFrame:
    """The history of one run as a tidy frame, with constant columns (method, seed, ...)."""
    frame = pd.DataFrame(result.history)
    for name, value in columns.items():
        frame[name] = value if not isinstance(value, (dict, list, tuple)) else json.dumps(value, sort_keys=True)
    frame["status"] = result.status.name
    return frame


def write_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a Parquet file so that a reader never sees half of it (rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def final_rows(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The last logged row of each run (grouped by `by`)."""
    return frame.sort_values("iter").groupby(by, as_index=False).tail(1)


def higher_is_better(metric: str) -> bool:
    """Accuracy- and AUC-like metrics are maximised; everything else is minimised."""
    return any(word in metric for word in ("accuracy", "auc"))


def select_best(frame: pd.DataFrame, metric: str, mode: str | None = None) -> pd.DataFrame:
    """Per (problem, method), keep the runs of the hyperparameter configuration whose final
    `metric`, as a median over seeds, is best (max for accuracy-like metrics unless mode says)."""
    if metric not in frame.columns:
        raise ValueError(f"Invalid metric: {metric!r} (columns present: {', '.join(sorted(frame.columns))})")
    mode = mode or ("max" if higher_is_better(metric) else "min")
    if mode not in ("min", "max"):
        raise ValueError(f"Invalid mode: {mode!r} (expected 'min' or 'max')")
    keys = ["problem", "problem_args", "method"]
    last = final_rows(frame, ["run_id"])
    scores = last.groupby(keys + ["config"], dropna=False)[metric].median().reset_index()
    chosen = []
    for _, group in scores.groupby(keys, dropna=False):
        valid = group.dropna(subset=[metric])
        if valid.empty:          # the metric is not defined for this problem: keep every configuration
            chosen.append(group)
        else:
            chosen.append(valid.loc[[valid[metric].idxmax() if mode == "max" else valid[metric].idxmin()]])
    best = pd.concat(chosen)
    return frame.merge(best[keys + ["config"]], on=keys + ["config"])


def _runs(last: pd.DataFrame) -> str:
    """'3', or '3 (1 diverged)' when some runs ended with a non-finite value."""
    diverged = int((last["status"] == "DIVERGED").sum()) if "status" in last else 0
    return f"{len(last)}" + (f" ({diverged} diverged)" if diverged else "")


def summary_table(frame: pd.DataFrame, metrics: list[str]) -> list[dict[str, Any]]:
    """One row per (problem, method, configuration): runs (and how many diverged), and
    mean ± std over seeds of each metric's final value."""
    last = final_rows(frame, ["run_id"])
    rows = []
    for (problem, args, method, config), sub in last.groupby(["problem", "problem_args", "method", "config"],
                                                            sort=True, dropna=False):
        row: dict[str, Any] = {"problem": problem + ("" if args in ("{}", None) else f" {args}"),
                               "method": method, "config": config, "runs": _runs(sub)}
        for m in metrics:
            if m in sub:
                values = sub[m].astype(float)
                with np.errstate(all="ignore"):    # inf from a diverged run: the table says so
                    row[m] = (f"{values.mean():.4g} ± {values.std(ddof=1):.2g}" if len(values) > 1
                              else f"{values.iloc[0]:.4g}")
        rows.append(row)
    return rows
