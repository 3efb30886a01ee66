"""Checks of arguments at the public boundary. Each error names the argument, echoes its
value and says what was expected: `Invalid step_size: -1.0 (expected a finite number > 0)`."""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch


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
