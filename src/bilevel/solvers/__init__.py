"""SOLVERS: name -> solver class, one import line per solver."""
from __future__ import annotations

from .base import Solver, State
from .pgdqp import PGDQP
from .sgf import SGF

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (PGDQP, SGF)}

__all__ = ["PGDQP", "SGF", "SOLVERS", "Solver", "State"]
