"""PROBLEMS: name -> builder. Each builder is seeded and returns a `BilevelProblem`."""
from __future__ import annotations

from typing import Callable

from ..problem import BilevelProblem
from .hyper_cleaning import hyper_cleaning
from .synthetic import coreset, quadratic, synthetic_nc, synthetic_sc

PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {
    "synthetic-sc": synthetic_sc,
    "synthetic-nc": synthetic_nc,
    "coreset": coreset,
    "quadratic": quadratic,
    "hyper-cleaning": hyper_cleaning,
}

__all__ = ["PROBLEMS", "coreset", "hyper_cleaning", "quadratic", "synthetic_nc", "synthetic_sc"]
