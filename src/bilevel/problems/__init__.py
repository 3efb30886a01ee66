"""PROBLEMS: name -> builder. Each builder is seeded and returns a `BilevelProblem`."""
from __future__ import annotations

from typing import Callable

from ..problem import BilevelProblem
from ..registry import Registry
from .hyper_cleaning import hyper_cleaning
from .synthetic import coreset, quadratic, synthetic_nc, synthetic_sc
from .toy_cleaning import toy_cleaning


PROBLEMS: dict[str, Callable[..., BilevelProblem]] = Registry("problem", {
    "synthetic-sc": synthetic_sc,
    "synthetic-nc": synthetic_nc,
    "coreset": coreset,
    "quadratic": quadratic,
    "hyper-cleaning": hyper_cleaning,
    "toy-cleaning": toy_cleaning,
})

__all__ = ["PROBLEMS", "coreset", "hyper_cleaning", "quadratic", "synthetic_nc", "synthetic_sc", "toy_cleaning"]
