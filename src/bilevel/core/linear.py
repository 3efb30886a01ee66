"""Linear solvers for A v = b with A given only as a matrix-vector product.

They are objects, passed to the methods that need one (aid_bio, galet, the metrics):
`ConjugateGradient(iters=20)` or `Neumann(iters=20, step_size=0.1)`; from YAML or the command
line, a mapping `{method: cg, iters: 10}` or `{method: neumann, iters: 20, step_size: 0.1}`
(`from_spec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import checks
from .oracles import inner

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ConjugateGradient:
    """Conjugate gradient for a symmetric positive (semi-)definite A.

    Args:
        iters: maximum number of iterations (each one matrix-vector product). Default 20.
        tol: stop when ||r|| <= tol * ||b||. Default 1e-10.
    """

    iters: int = 20
    tol: float = 1e-10

    def __post_init__(self) -> None:
        checks.integer("iters", self.iters, 1)
        checks.number("tol", self.tol, minimum=0)

    def __call__(self, matvec: MatVec, b: Tensor, v0: Tensor | None = None) -> Tensor:
        v = torch.zeros_like(b) if v0 is None else v0.clone()
        r = b - matvec(v) if v0 is not None else b.clone()
        p = r.clone()
        rr = inner(r, r)
        stop = (self.tol * torch.linalg.vector_norm(b)) ** 2
        for _ in range(self.iters):
            if bool(rr <= stop):
                break
            ap = matvec(p)
            pap = inner(p, ap)
            if not bool(pap > 0):  # A is not positive along p: stop with what we have
                break
            a = rr / pap
            v = v + a * p
            r = r - a * ap
            rr_new = inner(r, r)
            p = r + (rr_new / rr) * p
            rr = rr_new
        return v


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series v = step_size sum_{i<iters} (I - step_size A)^i b.

    Args:
        iters: number of terms (each one matrix-vector product). Default 20.
        step_size: scaling, below 2 / lambda_max(A) for convergence. Default 0.1.
    """

    iters: int = 20
    step_size: float = 0.1

    def __post_init__(self) -> None:
        checks.integer("iters", self.iters, 1)
        checks.number("step_size", self.step_size, positive=True)

    def __call__(self, matvec: MatVec, b: Tensor, v0: Tensor | None = None) -> Tensor:
        term = b.clone()
        total = b.clone()
        for _ in range(self.iters - 1):
            term = term - self.step_size * matvec(term)
            total = total + term
        return self.step_size * total


LINEAR_SOLVERS = {"cg": ConjugateGradient, "neumann": Neumann}


def from_spec(spec):
    """A linear solver from `spec`: a solver object or any callable (returned as is), or a
    mapping {"method": "cg" | "neumann", **fields}, as YAML and `--set` give one."""
    if isinstance(spec, (ConjugateGradient, Neumann)) or callable(spec):
        return spec
    expected = ("(expected bilevel.ConjugateGradient(...), bilevel.Neumann(...) or a mapping such as "
                "{'method': 'cg', 'iters': 10})")
    if not isinstance(spec, dict) or spec.get("method") not in LINEAR_SOLVERS:
        raise TypeError(f"Invalid linear_solver: {spec!r} {expected}")
    fields = {k: v for k, v in spec.items() if k != "method"}
    kind = LINEAR_SOLVERS[spec["method"]]
    try:
        return kind(**fields)
    except TypeError as error:
        raise TypeError(f"Invalid linear_solver: {spec!r} ({error})") from None


def power_iteration(matvec, like: tuple[Tensor, Tensor], iters: int, generator: torch.Generator) -> Tensor:
    """The largest |eigenvalue| of a symmetric operator on (x, y) pairs, by `iters` steps of power
    iteration from a random start, as a 0-d tensor (tensor operations only, so that it runs
    under torch.func.vmap)."""
    v = tuple(torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(t.device) for t in like)
    estimate = torch.zeros((), dtype=like[0].dtype, device=like[0].device)
    for _ in range(iters):
        norm = torch.sqrt(sum(inner(p, p) for p in v))
        v = tuple(p / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny) for p in v)
        w = matvec(v)
        # ||A v_k|| grows with k for symmetric A: the running maximum keeps an overflow (inf) once seen
        estimate = torch.maximum(estimate, torch.sqrt(sum(inner(p, p) for p in w)))
        v = w
    return torch.clamp(estimate, min=1e-12)
