"""The seed paper's synthetic problems (appendix C) and a quadratic with a closed-form answer.

Every builder is seeded, builds its data with a private generator, and accepts
`device` and `dtype` (float64 by default: these problems are small). Their f and g are
`functools.partial` of module-level functions with the data as tensor keywords, which
lets `bilevel.solve_batch` stack the data of many seeds and solve them together.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..core import checks
from ..core.kkt import kkt_info
from ..core.oracles import Autograd, Oracle
from ..core.problem import BilevelProblem
from .spec import distance_to_known_optimum, final_value, solved_flag


def _generator(seed: Any) -> torch.Generator:
    return torch.Generator().manual_seed(checks.integer("seed", seed, 0))


def _placement(device: Any, dtype: Any) -> dict[str, Any]:
    """device and dtype checked, as keyword arguments of Tensor.to."""
    return {"device": checks.device("device", device), "dtype": checks.floating_dtype("dtype", dtype)}


def _check_cond(cond: Any) -> float:
    return checks.number("cond", cond, minimum=1)


def _matrix_with_condition(n: int, cond: float, gen: torch.Generator) -> Tensor:
    """A random n x n matrix whose singular values span [1, cond] (so cond(H) = cond)."""
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.cat([torch.tensor([1.0, float(cond)], dtype=torch.float64),
                   1.0 + (cond - 1.0) * torch.rand(max(n - 2, 0), generator=gen, dtype=torch.float64)])[:n]
    return u @ torch.diag(s) @ v.T


def _synthetic_data(dim: int, cond: float, seed: int, device: Any, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """H (cond(H) = cond), c, d, x0, y0 of appendix C, drawn from `seed`."""
    checks.integer("dim", dim, 1)
    cond = _check_cond(cond)
    placement = _placement(device, dtype)
    gen = _generator(seed)
    H = _matrix_with_condition(dim, cond, gen)
    c, d, x0, y0 = (torch.randn(dim, generator=gen, dtype=torch.float64) for _ in range(4))
    return tuple(t.to(**placement) for t in (H, c, d, x0, y0))


def sin_log_upper(x: Tensor, y: Tensor, *, c: Tensor, d: Tensor) -> Tensor:
    """f(x, y) = sin(c^T x + d^T y) + log(||x + y||^2 + 1)."""
    return torch.sin(c @ x + d @ y) + torch.log1p(((x + y) ** 2).sum())


def least_squares_lower(x: Tensor, y: Tensor, *, H: Tensor) -> Tensor:
    """g(x, y) = 1/2 ||H y - x||^2."""
    return 0.5 * ((H @ y - x) ** 2).sum()


def cosine_lower(x: Tensor, y: Tensor, *, H: Tensor) -> Tensor:
    """g(x, y) = cos(1/2 ||H y - x||^2)."""
    return torch.cos(0.5 * ((H @ y - x) ** 2).sum())


def synthetic_sc(dim: int = 20, cond: float = 10.0, seed: int = 0, *, device: Any = None,
                 dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Appendix C.1.1: a strongly convex lower level.

        min_x sin(c^T x + d^T y) + log(||x + y||^2 + 1)   s.t.  y in argmin_y 1/2 ||H y - x||^2

    x, y, c, d in R^dim, cond(H) = cond. y*(x) = H^{-1} x, and the exact hypergradient
    F(x, y) = grad_x f + H^{-T} grad_y f (eq. 1, here in closed form) is the metric
    `hypergradient_norm`; `distance_to_lower` is ||y - y*(x)||.
    """
    H, c, d, x0, y0 = _synthetic_data(dim, cond, seed, device, dtype)
    f, g = partial(sin_log_upper, c=c, d=d), partial(least_squares_lower, H=H)

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        _, gx, gy = Oracle(Autograd(f, g)).grad_f(x, y)
        hyper = gx + torch.linalg.solve(H.T, gy)
        y_star = torch.linalg.solve(H, x)
        return {"hypergradient_norm": float(hyper.norm()), "distance_to_lower": float((y - y_star).norm())}

    return BilevelProblem(f, g, x0, y0, metrics=metrics, name="synthetic-sc",
                          info={"dim": dim, "cond": cond, "seed": seed})


def synthetic_nc(dim: int = 20, cond: float = 10.0, seed: int = 0, *, device: Any = None,
                 dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Appendix C.1.3: a nonconvex lower level.

        min_x sin(c^T x + d^T y) + log(||x + y||^2 + 1)   s.t.  y in argmin_y cos(1/2 ||H y - x||^2)

    Data as in `synthetic_sc`. The lower level's stationary points are H y = x and the
    spheres 1/2 ||H y - x||^2 = k pi. Metric: `delta_norm`, the norm of the KKT
    stationarity residual at the least-squares multiplier (||Delta|| of the paper's
    Fig. 4); h is in every history.
    """
    H, c, d, x0, y0 = _synthetic_data(dim, cond, seed, device, dtype)
    f, g = partial(sin_log_upper, c=c, d=d), partial(cosine_lower, H=H)

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        info = kkt_info(Oracle(Autograd(f, g)), x, y)
        return {"delta_norm": math.sqrt(max(float(info["kkt_stationarity"]), 0.0))}

    return BilevelProblem(f, g, x0, y0, metrics=metrics, name="synthetic-nc",
                          info={"dim": dim, "cond": cond, "seed": seed})


def coreset(seed: int = 0, *, n_points: int = 4, device: Any = None,
            dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Appendix C.1.2 (after BOME): coreset selection.

        min_x ||y*(x) - target||^2   s.t.  y*(x) = argmin_y ||y - A softmax(x)||^2

    x in R^n_points, y in R^2, A in R^{2 x n_points}. y*(x) = A softmax(x), so the best
    value is the squared distance from `target` to the convex hull of A's columns; the
    target is drawn inside the hull, so the optimum value is 0. Metrics:
    `upper_objective` = ||A softmax(x) - target||^2 and `distance_to_lower`.
    """
    checks.integer("n_points", n_points, 2)
    placement = _placement(device, dtype)
    gen = _generator(seed)
    A = torch.randn(2, n_points, generator=gen, dtype=torch.float64)
    weights = torch.softmax(torch.randn(n_points, generator=gen, dtype=torch.float64), dim=0)
    target = A @ weights
    x0 = torch.zeros(n_points, dtype=torch.float64)
    y0 = torch.zeros(2, dtype=torch.float64)
    A, target, x0, y0 = (t.to(**placement) for t in (A, target, x0, y0))
    f, g = partial(distance_upper, target=target), partial(convex_hull_lower, A=A)

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        y_star = A @ torch.softmax(x, dim=0)
        return {"upper_objective": float(((y_star - target) ** 2).sum()),
                "distance_to_lower": float((y - y_star).norm())}

    return BilevelProblem(f, g, x0, y0, metrics=metrics, name="coreset",
                          info={"n_points": n_points, "seed": seed, "optimal_value": 0.0})


def quadratic(dim_x: int = 5, dim_y: int = 5, cond: float = 5.0, seed: int = 0, *, device: Any = None,
              dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """A strongly convex quadratic bilevel problem with a closed-form solution.

        min_x 1/2 ||x - a||^2 + 1/2 ||y - b||^2   s.t.  y in argmin_y 1/2 y^T Q y - y^T B x

    Q is symmetric positive definite with condition number `cond`. Then y*(x) = M x with
    M = Q^{-1} B, and x* = (I + M^T M)^{-1} (a + M^T b), recorded in `info["x_star"]`
    (with `info["y_star"]`). Metrics: `distance_to_solution` = ||x - x*||.
    """
    checks.integer("dim_x", dim_x, 1)
    checks.integer("dim_y", dim_y, 1)
    cond = _check_cond(cond)
    placement = _placement(device, dtype)
    gen = _generator(seed)
    U, _ = torch.linalg.qr(torch.randn(dim_y, dim_y, generator=gen, dtype=torch.float64))
    eig = torch.linspace(1.0, float(cond), dim_y, dtype=torch.float64) if dim_y > 1 else torch.ones(1, dtype=torch.float64)
    Q = U @ torch.diag(eig) @ U.T
    B = torch.randn(dim_y, dim_x, generator=gen, dtype=torch.float64)
    a, b = torch.randn(dim_x, generator=gen, dtype=torch.float64), torch.randn(dim_y, generator=gen, dtype=torch.float64)
    M = torch.linalg.solve(Q, B)
    x_star = torch.linalg.solve(torch.eye(dim_x, dtype=torch.float64) + M.T @ M, a + M.T @ b)
    y_star = M @ x_star
    x0, y0 = torch.zeros(dim_x, dtype=torch.float64), torch.zeros(dim_y, dtype=torch.float64)
    Q, B, a, b, x0, y0, x_star_d = (t.to(**placement) for t in (Q, B, a, b, x0, y0, x_star))
    f, g = partial(quadratic_upper, a=a, b=b), partial(quadratic_lower, Q=Q, B=B)

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        return {"distance_to_solution": float((x - x_star_d).norm())}

    return BilevelProblem(f, g, x0, y0, metrics=metrics, name="quadratic",
                          info={"x_star": x_star, "y_star": y_star, "seed": seed, "cond": cond})


def ring(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """A lower level whose curvature grows with x: a ring of solutions.

        min_x 1/2 (x - 2)^2 + 1/2 ||y - c||^2   s.t.  y in argmin_y 1/4 (||y||^2 - 1 - x^2)^2,   c = (3, 0)

    x in R, y in R^2. The lower level's solutions are the circle ||y|| = r(x) = sqrt(1 + x^2)
    (y = 0 is a stationary point that is no minimiser); its Lipschitz constant grows from about
    2.5 at the start to about 660 along the way. The optimistic y is r(x) c/||c||, so
    F(x) = 1/2 (x - 2)^2 + 1/2 (r(x) - 3)^2, least where (x - 2) - (3 - r) x / r = 0: x* by
    bisection on [0, 3] (`info["x_star"]`, with `y_star` and `F_star`). Start: x0 = 0,
    y0 = (1/2, 1/2). No seed: the problem has no random data. Metric: `distance_to_solution`.
    """
    placement = _placement(device, dtype)
    lo, hi = 0.0, 3.0
    for _ in range(100):
        mid = (lo + hi) / 2
        r = math.sqrt(1 + mid * mid)
        lo, hi = (mid, hi) if (mid - 2) - (3 - r) * mid / r < 0 else (lo, mid)
    s = (lo + hi) / 2
    radius = math.sqrt(1 + s * s)
    x_star = torch.tensor([s], dtype=torch.float64)
    y_star = torch.tensor([radius, 0.0], dtype=torch.float64)
    a, c = torch.tensor([2.0], **placement), torch.tensor([3.0, 0.0], **placement)
    x_star_d = x_star.to(**placement)

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        return {"distance_to_solution": float((x - x_star_d).norm())}

    return BilevelProblem(partial(quadratic_upper, a=a, b=c), ring_lower, torch.zeros(1, **placement),
                          torch.tensor([0.5, 0.5], **placement), metrics=metrics, name="ring",
                          info={"x_star": x_star, "y_star": y_star,
                                "F_star": 0.5 * (s - 2) ** 2 + 0.5 * (radius - 3) ** 2})


def ring_lower(x: Tensor, y: Tensor) -> Tensor:
    """g(x, y) = 1/4 (||y||^2 - 1 - ||x||^2)^2."""
    return 0.25 * ((y ** 2).sum(-1) - 1 - (x ** 2).sum(-1)) ** 2


# ----- scores of finished runs (the registered specs' evaluate hooks) ---------------------------
def _distance(problem: BilevelProblem, result: Any) -> float:
    x_star = problem.info["x_star"]
    distance = float((result.x.detach().reshape(-1).to(x_star) - x_star.reshape(-1)).norm())
    return distance if math.isfinite(distance) else math.inf


def evaluate_quadratic(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """solved: |x - x*| < 5e-2 (and not DIVERGED); x_error as `spec.distance_to_known_optimum`."""
    return {"solved": solved_flag(_distance(problem, result) < 5e-2, result),
            **distance_to_known_optimum(problem, result)}


def evaluate_ring(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """solved: |x - x*| < 1e-2 and the final h < 1e-3 (and not DIVERGED); x_error."""
    ok = _distance(problem, result) < 1e-2 and final_value(result, "h") < 1e-3
    return {"solved": solved_flag(ok, result), **distance_to_known_optimum(problem, result)}


def evaluate_synthetic_nc(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """solved: the final h <= 1e-6 and delta_norm^2 <= 1e-3 (and not DIVERGED)."""
    ok = final_value(result, "h") <= 1e-6 and final_value(result, "delta_norm") ** 2 <= 1e-3
    return {"solved": solved_flag(ok, result)}


def evaluate_coreset(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """solved: ||A softmax(x) - target||^2 < 1e-3 at the answer's x (and not DIVERGED); the optimum is 0."""
    with torch.no_grad():
        upper = problem.metrics(result.x, result.y)["upper_objective"]
    return {"solved": solved_flag(upper < 1e-3, result)}


def distance_upper(x: Tensor, y: Tensor, *, target: Tensor) -> Tensor:
    """f(x, y) = ||y - target||^2."""
    return ((y - target) ** 2).sum()


def convex_hull_lower(x: Tensor, y: Tensor, *, A: Tensor) -> Tensor:
    """g(x, y) = ||y - A softmax(x)||^2."""
    return ((y - A @ torch.softmax(x, dim=0)) ** 2).sum()


def quadratic_upper(x: Tensor, y: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    """f(x, y) = 1/2 ||x - a||^2 + 1/2 ||y - b||^2."""
    return 0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum()


def quadratic_lower(x: Tensor, y: Tensor, *, Q: Tensor, B: Tensor) -> Tensor:
    """g(x, y) = 1/2 y^T Q y - y^T B x."""
    return 0.5 * y @ (Q @ y) - y @ (B @ x)
