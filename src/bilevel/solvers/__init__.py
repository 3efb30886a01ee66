"""SOLVERS: name -> solver class, one import line per solver."""
from __future__ import annotations

from .aid_bio import AIDBiO
from .base import Solver, State
from .bome import BOME
from .pgdqp import PGDQP
from .sgf import SGF

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (PGDQP, SGF, BOME, AIDBiO)}

__all__ = ["AIDBiO", "BOME", "PGDQP", "SGF", "SOLVERS", "Solver", "State"]
