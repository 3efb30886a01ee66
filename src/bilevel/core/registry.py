"""Registry: a dict of name -> solver class or problem builder whose missing name is a clear error."""
from __future__ import annotations

from typing import Any

from .checks import suggest


class Registry(dict):
    """A dict of name -> entry whose missing name is a KeyError that lists the valid names and
    suggests the nearest one: `PROBLEMS["synthetic_sc"]` raises
    `KeyError("Unknown problem: 'synthetic_sc' (expected one of ...); did you mean 'synthetic-sc'?")`.

    Args:
        what: what the entries are, for messages ("problem", "solver").
    """

    def __init__(self, what: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.what = what

    def __missing__(self, key: object):
        raise KeyError(f"Unknown {self.what}: {key!r} (expected one of {self.names()}){suggest(key, self)}")

    def names(self) -> str:
        """The names, sorted, with those of a family ("bolib/FalkLiu1995", ...) counted by
        family: 'coreset, quadratic, bolib/... (31 names), continuum/... (10 names)'."""
        families: dict[str, int] = {}
        for name in self:
            if "/" in name:
                family = name.split("/")[0]
                families[family] = families.get(family, 0) + 1
        plain = sorted(n for n in self if "/" not in n)
        return ", ".join(plain + [f"{family}/... ({count} names)" for family, count in sorted(families.items())])

    def __reduce__(self):  # pickles (worker processes) as a Registry with its entries
        return (type(self), (self.what, dict(self)))
