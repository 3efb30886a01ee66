"""Checkpoints of a run: the solver's state, the history so far, the oracle counts, the
generator and the elapsed time, written atomically so that a killed process loses at most
the iterations since the last checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import atomic_write

FORMAT = 2


def fingerprint(solver: Any, problem: Any, log_every: int, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to continue a run (max_iter may grow)."""
    return {"format": FORMAT, "solver": repr(solver), "problem": problem.name,
            "x_shape": tuple(problem.x0.shape), "y_shape": tuple(problem.y0.shape),
            "log_every": log_every, "seed": seed}


def _not_a_directory(path: str | Path) -> None:
    if Path(path).is_dir():
        raise ValueError(f"Invalid checkpoint: {str(path)!r} is a directory "
                         f"(expected a file such as {str(Path(path) / 'run.pt')!r})")


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically (`bilevel.files.atomic_write`)."""
    _not_a_directory(path)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint written by `save` and check that it belongs to this run."""
    _not_a_directory(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"Invalid checkpoint: {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
                         f"delete it to start afresh") from exc
    saved = payload.get("fingerprint", {})
    for key, value in expected.items():
        if saved.get(key) != value:
            raise ValueError(f"Invalid checkpoint: {str(path)!r} was written by another run ({key}: "
                             f"{saved.get(key)!r} there, {value!r} here); use another path or delete it")
    return payload
