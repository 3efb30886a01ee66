"""PROBLEMS: name -> builder. Each builder is seeded and returns a `BilevelProblem`."""
from __future__ import annotations

from typing import Callable

from ..problem import BilevelProblem
from .synthetic import coreset, quadratic, synthetic_nc, synthetic_sc

PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {
    "synthetic-sc": synthetic_sc,
    "synthetic-nc": synthetic_nc,
    "coreset": coreset,
    "quadratic": quadratic,
}

__all__ = ["PROBLEMS", "coreset", "quadratic", "synthetic_nc", "synthetic_sc"]
