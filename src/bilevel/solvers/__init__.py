"""SOLVERS: name -> solver class, one import line per solver."""
from __future__ import annotations

from ..core.registry import Registry
from ..core.state import Aux, State
from .aid_bio import AIDBiO
from .base import Solver
from .bome import BOME
from .f2ba import F2BA
from .f2sa import F2SA
from .galet import GALET
from .hjfbio import HJFBiO
from .iaptt_gm import IAPTTGM
from .meha import MEHA
from .pgdqp import PGDQP
from .saba import SABA
from .sgf import SGF
from .soba import SOBA
from .stocbio import StocBiO
from .vpbgd import VPBGD

SOLVERS: dict[str, type[Solver]] = Registry("solver", {
    cls.name: cls for cls in (PGDQP, SGF, BOME, AIDBiO, VPBGD, GALET, IAPTTGM, MEHA, F2BA, HJFBiO, SOBA, SABA, StocBiO, F2SA)
})

__all__ = ["AIDBiO", "Aux", "BOME", "F2BA", "F2SA", "GALET", "HJFBiO", "IAPTTGM", "MEHA", "PGDQP", "SABA", "SGF", "SOBA", "SOLVERS",
           "Solver", "State", "StocBiO", "VPBGD"]
