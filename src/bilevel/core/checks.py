"""Checks of arguments at the public boundary. Each error names the argument, echoes its
value and says what was expected: `Invalid step_size: -1.0 (expected a finite number > 0)`."""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Iterable

import torch


def closest(name: Any, valid: Iterable[str]) -> str | None:
    """The valid name that `name` most likely meant, or None.

    Case and '_' versus '-' do not count ('PGDQP' -> 'pgdqp', 'synthetic_sc' -> 'synthetic-sc');
    otherwise the nearest name by difflib.
    """
    def norm(text: Any) -> str:
        return str(text).lower().replace("_", "-")
    by_norm: dict[str, str] = {}
    for candidate in valid:
        by_norm.setdefault(norm(candidate), candidate)
    if norm(name) in by_norm:
        return by_norm[norm(name)]
    near = difflib.get_close_matches(norm(name), list(by_norm), n=1)
    return by_norm[near[0]] if near else None


def suggest(name: Any, valid: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the valid name `name` most likely meant (not itself), or ''."""
    near = closest(name, valid)
    return f"; did you mean {near!r}?" if near is not None and near != name else ""


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """An integer (Python or NumPy, not bool) >= minimum, returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")
    return int(value)


def number(name: str, value: Any, *, minimum: float | None = None, positive: bool = False,
           allow_none: bool = False) -> float | None:
    """A finite real number (not bool), > 0 if positive, >= minimum if given; None if allowed."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and not (positive and value <= 0) and not (minimum is not None and value < minimum)
    if not ok:
        bound = " > 0" if positive else (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number{bound}"
                         + (" or None)" if allow_none else ")"))
    return float(value)


def seed(name: str, value: Any) -> int | None:
    """A seed: an integer >= 0 or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"Invalid {name}: {value!r} (expected an integer >= 0 or None)")
    return int(value)


def device(name: str, value: Any) -> torch.device | None:
    """A torch device that exists here ('cpu', 'cuda', 'cuda:1', 'mps', a torch.device) or None."""
    if value is None:
        return None
    try:
        parsed = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"Invalid {name}: {value!r} (expected a torch device such as 'cpu' or 'cuda:0'; "
                         f"{str(exc).splitlines()[0]})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid {name}: {value!r} (CUDA is not available on this machine; use 'cpu')")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"Invalid {name}: {value!r} (this machine has {torch.cuda.device_count()} CUDA device(s))")
    return parsed


def floating_dtype(name: str, value: Any) -> torch.dtype | None:
    """A floating torch dtype (torch.float32, torch.float64, ...) or None."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"Invalid {name}: {value!r} (expected a floating torch dtype such as torch.float32 "
                        f"or torch.float64)")
    return value
