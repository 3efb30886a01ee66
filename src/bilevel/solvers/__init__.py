"""SOLVERS: name -> solver class, one import line per solver; and what is derived from the
solvers' declarations (their diagnostics, the table of methods in the docs)."""
from __future__ import annotations

from ..core.registry import Registry
from ..core.state import COMMON_DIAGNOSTICS, Aux, State
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



def diagnostic_columns() -> tuple[str, ...]:
    """The history columns a step can report: the common ones and every registered solver's
    declared `diagnostics`."""
    return (*COMMON_DIAGNOSTICS, *sorted({d for cls in SOLVERS.values() for d in cls.diagnostics}))


def table() -> str:
    """The registered solvers as a Markdown table: name, what it is, the cost of one step, and
    whether its paper draws minibatches."""
    rows = ["| name | method | cost of one step | minibatches |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {cls.summary} | {cls.cost} | {'yes' if cls.stochastic else ''} |"
             for name, cls in SOLVERS.items()]
    return "\n".join(rows)


__all__ = ["AIDBiO", "Aux", "BOME", "F2BA", "F2SA", "GALET", "HJFBiO", "IAPTTGM", "MEHA", "PGDQP", "SABA", "SGF", "SOBA", "SOLVERS",
           "Solver", "State", "StocBiO", "VPBGD", "diagnostic_columns", "table"]
