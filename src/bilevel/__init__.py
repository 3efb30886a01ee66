"""bilevel: gradient-based bilevel optimization with nonconvex lower levels.

    min_x f(x, y)  s.t.  y in argmin_y g(x, y)
"""
from . import solvers
from .core import distributed
from .core.linear import ConjugateGradient, Neumann
from .core.oracles import Autograd, Func, Oracle
from .core.problem import BilevelProblem
from .core.result import Result, Status
from .core.version import VERSION
from .problems import PROBLEMS
from .run.policy import RunPolicy
from .run.solve import make_solver, solve
from .run.solve_batch import solve_batch
from .run.verify import hypergradient
from .solvers import SOLVERS

__version__ = VERSION

__all__ = [
    "Autograd", "BilevelProblem", "ConjugateGradient", "Func", "Neumann", "Oracle", "PROBLEMS", "Result", "RunPolicy",
    "SOLVERS", "Status", "distributed", "hypergradient", "make_solver", "solve", "solve_batch", "solvers", "__version__",
]
