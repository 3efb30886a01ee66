"""RunPolicy: the settings of a run that are not the problem's or the solver's, in one frozen
object checked once: how long to run (max_iter, tol), what to log (log_every, kkt), and how the
answer is verified (verify and the verification's tolerances and budget, `bilevel.run.verify`).

    policy = bilevel.RunPolicy(max_iter=2000, log_every=100, upper_tol=1e-4)
    bilevel.solve(problem, "pgdqp", policy=policy)
    bilevel.solve(problem, "pgdqp", policy=policy, max_iter=500)      # a keyword overrides the policy

`solve`, `solve_batch`, the command line (`--max-iter`, `--verify-tol`, ...) and sweep configs
(the same names as top-level keys) build this object, so their defaults are these.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import checks
from .history import KKT_MODES


@dataclass(frozen=True)
class RunPolicy:
    """A run's settings (see `bilevel.solve` for the run's, `bilevel.run.verify` for the checks).

    Args:
        max_iter: outer iterations at most. Default 1000.
        tol: stop with CONVERGED once max(kkt_stationarity, kkt_feasibility) <= tol at a logged
            row. Default None (run max_iter iterations).
        log_every: log a row every this many iterations (and the first and final iterate).
            Default 1.
        kkt: the KKT residuals of logged rows: "method", "least_squares" or "none". Default
            None: "least_squares" when tol is given (it vanishes at every KKT point, whatever
            the method), else "method" (`kkt_mode`).
        verify: verify the answer after the run. Default True.
        verify_tol: the lower-level check: y_distance = ||y - y_resolved|| / max(1, ||y_resolved||)
            <= verify_tol. Default 1e-2.
        upper_tol: the upper-level check: the projected hypergradient of x -> f(x, y*(x)) at
            most upper_tol times its value at x0. Default 1e-3.
        curvature_tol: the second-order check: the lowest curvature of grad_yy g at y_resolved
            is not below -curvature_tol times the largest |eigenvalue|. Default 1e-3.
        resolve_fraction: the re-solve stops when its Newton step is at most
            resolve_fraction * verify_tol * max(1, ||y||) long (the distance to y* it
            certifies); in (0, 1]. Default 1e-3.
        verify_max_iter: iterations of the re-solve's first-order stage at most (Newton-CG
            follows). Default 100.

    A bad value is a ValueError (TypeError for verify) naming the setting and echoing it.
    """

    max_iter: int = 1000
    tol: float | None = None
    log_every: int = 1
    kkt: str | None = None
    verify: bool = True
    verify_tol: float = 1e-2
    upper_tol: float = 1e-3
    curvature_tol: float = 1e-3
    resolve_fraction: float = 1e-3
    verify_max_iter: int = 100

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
        put("max_iter", checks.integer("max_iter", self.max_iter, 0))
        put("tol", checks.number("tol", self.tol, minimum=0, allow_none=True))
        put("log_every", checks.integer("log_every", self.log_every, 1))
        if self.kkt is not None and self.kkt not in KKT_MODES:
            raise ValueError(f"Invalid kkt: {self.kkt!r} (expected one of {', '.join(map(repr, KKT_MODES))})"
                             f"{checks.suggest(self.kkt, KKT_MODES) if isinstance(self.kkt, str) else ''}")
        if self.tol is not None and self.kkt == "none":
            raise ValueError(f"Invalid tol: {self.tol!r} with kkt='none' (tol is checked against the KKT residuals; "
                             "use kkt='least_squares' or kkt='method')")
        if not isinstance(self.verify, bool):
            raise TypeError(f"Invalid verify: {self.verify!r} (expected True or False)")
        for name in ("verify_tol", "upper_tol"):
            put(name, checks.number(name, getattr(self, name), positive=True))
        put("curvature_tol", checks.number("curvature_tol", self.curvature_tol, minimum=0))
        put("resolve_fraction", checks.number("resolve_fraction", self.resolve_fraction, positive=True))
        if self.resolve_fraction > 1:
            raise ValueError(f"Invalid resolve_fraction: {self.resolve_fraction!r} (expected a number in (0, 1])")
        put("verify_max_iter", checks.integer("verify_max_iter", self.verify_max_iter, 1))

    @property
    def kkt_mode(self) -> str:
        """The KKT mode of logged rows: kkt, or where None "least_squares" with tol, else "method"."""
        if self.kkt is not None:
            return self.kkt
        return "least_squares" if self.tol is not None else "method"

    def replace(self, **changes: Any) -> RunPolicy:
        """A copy with some settings changed (checked again); an unknown name is a TypeError
        that lists the settings."""
        unknown = [name for name in changes if name not in FIELDS]
        if unknown:
            raise TypeError(f"Invalid setting: {unknown[0]!r} (the settings of a RunPolicy: {', '.join(FIELDS)})"
                            f"{checks.suggest(unknown[0], FIELDS)}")
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(RunPolicy))
DEFAULT = RunPolicy()


def settings_as_overrides(fn: Callable) -> Callable:
    """fn(..., policy=None, <settings>) with its keyword arguments named as RunPolicy fields
    (`FIELDS`) overriding `policy` (default `DEFAULT`): fn receives the merged, checked policy
    and those keywords set to its values. fn's defaults for them must be DEFAULT's."""
    signature = inspect.signature(fn)
    names = tuple(name for name in FIELDS if name in signature.parameters)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        policy = kwargs.pop("policy", None)
        if policy is not None and not isinstance(policy, RunPolicy):
            raise TypeError(f"Invalid policy: {policy!r} (expected a bilevel.RunPolicy or None)")
        given = {name: kwargs.pop(name) for name in names if name in kwargs}
        policy = (policy or DEFAULT).replace(**given) if given else (policy or DEFAULT)
        return fn(*args, policy=policy, **{name: getattr(policy, name) for name in names}, **kwargs)
    return wrapper
