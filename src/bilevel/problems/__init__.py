"""PROBLEMS: name -> `ProblemSpec` (called like its builder: seeded, returns a `BilevelProblem`),
the suite of problems with verified optima included under "bolib/<name>", "continuum/<i>",
"quadratic/cond<c>-scale<s>" and "nonconvex/<name>"; `resolve` also finds a user's builder by
module path ("package.module:function")."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from ..core.checks import suggest
from ..core.problem import BilevelProblem
from ..core.registry import Registry
from . import bolib, hpo, synthetic
from . import hyper_cleaning as cleaning
from .finite_sum import biased_ridge
from .hpo import feature_weight_decay, ridge_weights
from .hyper_cleaning import hyper_cleaning
from .spec import KNOWN_OPTIMUM_SCORES, ProblemSpec
from .synthetic import coreset, quadratic, ring, synthetic_nc, synthetic_sc
from .toy_cleaning import toy_cleaning

_SUITE_SUMMARIES = {
    "bolib": "a BOLIB test problem with a verified optimum",
    "continuum": "a lower level with a continuum of solutions (least squares or pseudo-Huber), known optimum",
    "quadratic": "a strongly convex quadratic of the given condition and scales, closed-form optimum",
    "nonconvex": "a nonconvex lower level (a ring or double wells) with a verified optimum",
}
_SOLVED = {"solved": "max"}
_SUITE_METRICS = {"F_error": "min", "global_lower_gap": "min"}


def _suite_spec(name: str, builder: Callable[[], BilevelProblem]) -> ProblemSpec:
    family = name.split("/")[0]
    return ProblemSpec(builder, _SUITE_SUMMARIES[family], _SUITE_METRICS, ("suite", family, "known-optimum"),
                       bolib.evaluate, bolib.SCORES)


PROBLEMS: dict[str, ProblemSpec] = Registry("problem", {
    "synthetic-sc": ProblemSpec(synthetic_sc, "the seed paper's strongly convex synthetic problem (appendix C)",
                                {"hypergradient_norm": "min", "distance_to_lower": "min"}, ("synthetic",)),
    "synthetic-nc": ProblemSpec(synthetic_nc, "the seed paper's nonconvex synthetic problem (appendix C)",
                                {"delta_norm": "min"}, ("synthetic",), synthetic.evaluate_synthetic_nc,
                                _SOLVED),
    "coreset": ProblemSpec(coreset, "coreset selection: weights on points whose hull holds the target",
                           {"upper_objective": "min", "distance_to_lower": "min"}, ("synthetic",),
                           synthetic.evaluate_coreset, _SOLVED),
    "quadratic": ProblemSpec(quadratic, "a strongly convex quadratic bilevel problem with a closed-form x*",
                             {"distance_to_solution": "min"}, ("synthetic", "known-optimum"),
                             synthetic.evaluate_quadratic, {**_SOLVED, **KNOWN_OPTIMUM_SCORES}),
    "ring": ProblemSpec(ring, "a nonconvex lower level whose solutions form a ring, closed-form x* (no seed)",
                        {"distance_to_solution": "min"}, ("synthetic", "known-optimum"), synthetic.evaluate_ring,
                        {**_SOLVED, **KNOWN_OPTIMUM_SCORES}),
    "hyper-cleaning": ProblemSpec(hyper_cleaning, "data hyper-cleaning: a weight per training sample (MNIST)",
                                  {"val_loss": "min", "test_accuracy": "max", "corruption_auc": "max",
                                   "retrained_accuracy": "max"}, ("data",), cleaning.evaluate, cleaning.SCORES),
    "toy-cleaning": ProblemSpec(toy_cleaning, "hyper-cleaning of generated linear data (small, shardable)",
                                {"test_accuracy": "max", "weight_gap": "min"}, ("data",)),
    "biased-ridge": ProblemSpec(biased_ridge, "a finite-sum ridge problem with a known optimum (minibatches)",
                                {"hyper_objective": "min", "relative_gap": "min", "distance_to_solution": "min"},
                                ("data", "known-optimum")),
    "feature-weight-decay": ProblemSpec(feature_weight_decay, "an L2 weight per feature of a logistic regression "
                                        "(scikit-learn data)", {"val_loss": "min", "test_loss": "min",
                                                                "honest_val_loss": "min", "test_accuracy": "max"},
                                        ("data", "hpo"), hpo.evaluate, hpo.SCORES),
    "ridge-weights": ProblemSpec(ridge_weights, "an L2 weight per feature of a ridge regression (scikit-learn data)",
                                 {"val_loss": "min", "test_loss": "min", "honest_val_loss": "min"}, ("data", "hpo"),
                                 hpo.evaluate, hpo.SCORES),
    **{name: _suite_spec(name, builder) for name, builder in bolib.SUITE.items()},
})


def metric_directions() -> dict[str, str]:
    """metric or score name -> "min" or "max", as the registered problems declare them."""
    return {m: d for spec in PROBLEMS.values() for m, d in (*spec.metrics.items(), *spec.scores.items())}


def resolve(name: str) -> Callable[..., BilevelProblem]:
    """The builder of a problem: PROBLEMS[name], or the function `function` of module
    `package.module` for "package.module:function" (imported as `python -m` would: from the
    installed packages and the current directory, in this process or in a sweep's worker).
    Errors name the problem and say what was missing."""
    if not isinstance(name, str):
        raise TypeError(f"Invalid problem: {name!r} (expected a name or 'package.module:function')")
    if ":" not in name:
        if name not in PROBLEMS:
            raise ValueError(f"Invalid problem: {name!r} (expected one of {PROBLEMS.names()}, or "
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


__all__ = ["PROBLEMS", "ProblemSpec", "metric_directions", "resolve", "biased_ridge", "coreset", "feature_weight_decay", "hyper_cleaning", "quadratic", "ridge_weights", "ring", "synthetic_nc", "synthetic_sc", "toy_cleaning"]
