"""bilevel: gradient-based bilevel optimization with nonconvex lower levels.

    min_x f(x, y)  s.t.  y in argmin_y g(x, y)
"""
from importlib.metadata import PackageNotFoundError, version

from . import distributed, solvers
from .batch import solve_batch
from .linear import ConjugateGradient, Neumann
from .metrics import hypergradient
from .oracles import Autograd, Func, Oracle
from .problem import BilevelProblem
from .problems import PROBLEMS
from .result import Result, Status
from .solve import make_solver, solve
from .solvers import SOLVERS

try:
    __version__ = version("bilevel")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = [
    "Autograd", "BilevelProblem", "ConjugateGradient", "Func", "Neumann", "Oracle", "PROBLEMS", "Result", "SOLVERS",
    "Status", "distributed", "hypergradient", "make_solver", "solve", "solve_batch", "solvers", "__version__",
]
