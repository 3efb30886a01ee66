"""PROBLEMS: name -> builder. Each builder is seeded and returns a `BilevelProblem`; `resolve`
also finds a user's builder by module path ("package.module:function")."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from ..core.checks import suggest
from ..core.problem import BilevelProblem
from ..core.registry import Registry
from .finite_sum import biased_ridge
from .hpo import feature_weight_decay, ridge_weights
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
    "biased-ridge": biased_ridge,
    "feature-weight-decay": feature_weight_decay,
    "ridge-weights": ridge_weights,
})



def resolve(name: str) -> Callable[..., BilevelProblem]:
    """The builder of a problem: PROBLEMS[name], or the function `function` of module
    `package.module` for "package.module:function" (imported as `python -m` would: from the
    installed packages and the current directory, in this process or in a sweep's worker).
    Errors name the problem and say what was missing."""
    if not isinstance(name, str):
        raise TypeError(f"Invalid problem: {name!r} (expected a name or 'package.module:function')")
    if ":" not in name:
        if name not in PROBLEMS:
            raise ValueError(f"Invalid problem: {name!r} (expected one of {', '.join(sorted(PROBLEMS))}, or "
                             f"'package.module:function'){suggest(name, PROBLEMS)}")
        return PROBLEMS[name]
    module_name, _, function = name.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Invalid problem: {name!r} (cannot import {module_name!r}: {exc}; the module must be "
                         f"importable from the current directory or an installed package)") from None
    builder = getattr(module, function, None)
    if not callable(builder):
        raise ValueError(f"Invalid problem: {name!r} (module {module_name!r} has no function {function!r})")
    return builder


__all__ = ["PROBLEMS", "resolve", "biased_ridge", "coreset", "feature_weight_decay", "hyper_cleaning", "quadratic", "ridge_weights", "synthetic_nc", "synthetic_sc", "toy_cleaning"]
