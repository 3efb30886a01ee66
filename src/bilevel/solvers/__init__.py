"""SOLVERS: name -> solver class, one import line per solver."""
from __future__ import annotations

from ..registry import Registry
from .aid_bio import AIDBiO
from .base import Aux, Solver, State
from .bome import BOME
from .f2ba import F2BA
from .galet import GALET
from .hjfbio import HJFBiO
from .iaptt_gm import IAPTTGM
from .meha import MEHA
from .pgdqp import PGDQP
from .sgf import SGF
from .vpbgd import VPBGD

SOLVERS: dict[str, type[Solver]] = Registry("solver", {
    cls.name: cls for cls in (PGDQP, SGF, BOME, AIDBiO, VPBGD, GALET, IAPTTGM, MEHA, F2BA, HJFBiO)
})

__all__ = ["AIDBiO", "Aux", "BOME", "F2BA", "GALET", "HJFBiO", "IAPTTGM", "MEHA", "PGDQP", "SGF", "SOLVERS",
           "Solver", "State", "VPBGD"]
