"""SOLVERS: name -> solver class, one import line per solver."""
from __future__ import annotations

from .aid_bio import AIDBiO
from .base import Solver, State
from .bome import BOME
from .galet import GALET
from .pgdqp import PGDQP
from .sgf import SGF
from .vpbgd import VPBGD

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (PGDQP, SGF, BOME, AIDBiO, VPBGD, GALET)}

__all__ = ["AIDBiO", "BOME", "GALET", "PGDQP", "SGF", "SOLVERS", "Solver", "State", "VPBGD"]
