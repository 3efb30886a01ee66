"""PROBLEMS: name -> builder. Each builder is seeded and returns a `BilevelProblem`."""
from __future__ import annotations

import difflib
from typing import Callable, Iterable

from ..problem import BilevelProblem
from .hyper_cleaning import hyper_cleaning
from .synthetic import coreset, quadratic, synthetic_nc, synthetic_sc
from .toy_cleaning import toy_cleaning


def closest_name(name: object, names: Iterable[str]) -> str | None:
    """The valid name that `name` most likely meant, or None.

    Case and '_' versus '-' do not count ('PGDQP' -> 'pgdqp', 'synthetic_sc' -> 'synthetic-sc');
    otherwise the nearest name by difflib.
    """
    def norm(text: object) -> str:
        return str(text).lower().replace("_", "-")
    by_norm: dict[str, str] = {}
    for valid in names:
        by_norm.setdefault(norm(valid), valid)
    if norm(name) in by_norm:
        return by_norm[norm(name)]
    near = difflib.get_close_matches(norm(name), list(by_norm), n=1)
    return by_norm[near[0]] if near else None


class Registry(dict):
    """A dict of name -> builder whose missing name is a KeyError that lists the valid names
    and suggests the nearest one: `PROBLEMS["synthetic_sc"]` raises
    `KeyError("Unknown problem: 'synthetic_sc' (expected one of ...); did you mean 'synthetic-sc'?")`.
    """

    def __init__(self, what: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.what = what

    def __missing__(self, key: object):
        near = closest_name(key, self)
        hint = f"; did you mean {near!r}?" if near is not None and near != key else ""
        raise KeyError(f"Unknown {self.what}: {key!r} (expected one of {', '.join(sorted(self))}){hint}")

    def __reduce__(self):  # pickles (worker processes) as a Registry with its entries
        return (type(self), (self.what, dict(self)))


PROBLEMS: dict[str, Callable[..., BilevelProblem]] = Registry("problem", {
    "synthetic-sc": synthetic_sc,
    "synthetic-nc": synthetic_nc,
    "coreset": coreset,
    "quadratic": quadratic,
    "hyper-cleaning": hyper_cleaning,
    "toy-cleaning": toy_cleaning,
})

__all__ = ["PROBLEMS", "coreset", "hyper_cleaning", "quadratic", "synthetic_nc", "synthetic_sc", "toy_cleaning"]
