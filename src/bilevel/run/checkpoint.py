"""Checkpoints of a run: the solver's state, the history so far, the oracle counts, the
generator and the elapsed time, written atomically so that a killed process loses at most
the iterations since the last checkpoint. The same payload travels in `Result` so that
`solve(..., init=result)` continues a finished run.

A checkpoint carries a fingerprint of its run: the solver and its hyperparameters, log_every,
the seed, the problem's name, shapes and builder arguments (`info`), and its data, probed by
the values of f and g at (x0, y0) and at one fixed point near it (data that differ in any
way that f and g can see give other values). A mismatch is refused, naming what differs.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import torch

from ..core.files import atomic_write

FORMAT = 3


def _arguments(info: Any) -> dict[str, Any]:
    """The plain values of a problem's info (numbers, strings, None): its builder arguments."""
    return {k: v for k, v in dict(info).items()
            if v is None or isinstance(v, (str, bool)) or isinstance(v, numbers.Number)}


def probe(problem: Any, oracle: Any) -> list[float]:
    """f and g at (x0, y0) and at a fixed nearby point, through the run's oracle (uncounted; the
    full problem's values in a data-parallel run): a fingerprint of the problem's data."""
    generator = torch.Generator().manual_seed(0)

    def near(t: torch.Tensor) -> torch.Tensor:
        step = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
        return t + 0.1 * step * (1 + t.abs())
    points = [(problem.x0, problem.y0), (problem.project_x(near(problem.x0)), problem.project_y(near(problem.y0)))]
    with oracle.uncounted():
        return [float(value(x, y)) for x, y in points for value in (oracle.f, oracle.g)]


def fingerprint(solver: Any, problem: Any, oracle: Any, log_every: int, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to continue a run (max_iter may grow)."""
    return {"format": FORMAT, "solver": repr(solver), "log_every": log_every, "seed": seed, "problem": problem.name,
            "x_shape": tuple(problem.x0.shape), "y_shape": tuple(problem.y0.shape),
            "arguments": _arguments(problem.info), "data": probe(problem, oracle)}


def mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> str:
    """What differs between a saved fingerprint and this run's, in words ('' when nothing)."""
    for key, value in expected.items():
        there = saved.get(key)
        if key == "arguments":
            for name in sorted(set(value) | set(there or {})):
                if (there or {}).get(name) != value.get(name):
                    return (f"another problem: builder argument {name} is {(there or {}).get(name)!r} there, "
                            f"{value.get(name)!r} here")
        elif key == "data":
            labels = ("f(x0, y0)", "g(x0, y0)", "f near (x0, y0)", "g near (x0, y0)")
            for label, a, b in zip(labels, there or [math.nan] * 4, value):
                if not (a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))):
                    return f"another problem: its data differ ({label} is {a!r} there, {b!r} here)"
        elif there != value:
            return f"another run ({key}: {there!r} there, {value!r} here)"
    return ""


def _not_a_directory(path: str | Path) -> None:
    if Path(path).is_dir():
        raise ValueError(f"Invalid checkpoint: {str(path)!r} is a directory "
                         f"(expected a file such as {str(Path(path) / 'run.pt')!r})")


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically (`bilevel.core.files.atomic_write`)."""
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
    why = mismatch(payload.get("fingerprint", {}), expected)
    if why:
        raise ValueError(f"Invalid checkpoint: {str(path)!r} was written by {why}; use another path or delete it")
    return payload
