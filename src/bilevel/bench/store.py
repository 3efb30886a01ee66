"""Tidy results: one row per (run, logged iteration), written atomically as Parquet."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

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
