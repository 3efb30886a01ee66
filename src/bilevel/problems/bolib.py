"""A robustness suite: BOLIB test problems whose optima we verified, and three families with known answers.

Every problem is optimistic:

    min_x F(x, y)   s.t.   y in argmin_{y in Y} G(x, y),

x in a box X and Y a box (a side of a box may be infinite). `info` holds the answer:
`F_star`, `x_star`, `y_star` (tensors), `source`, `lower_level` ("convex", "linear",
"nonconvex", ...), `verified` (True for every problem here: we drop what we could not verify),
and for the BOLIB problems `literature_F_star` and `agrees_with_literature`.

BOLIB problems (Zhou, Zemkoho & Tin, "BOLIB: Bilevel Optimization LIBrary of test problems",
arXiv:1812.00230, and the papers it cites): the smooth, box-constrained ones with small x
and y. We wrote every F and G from the problem statements. None of the reported optima is
trusted: each builder's docstring derives the optimum by hand (the lower level's global
solution set in closed form or by cases, then a one-dimensional minimisation), and
tests/test_bolib.py checks it against a brute-force search of its own (a grid over x and,
for every x, a global lower-level solve over a dense y grid with local polish, taking the
optimistic choice). Two reported optima are wrong for the problems as stated: FalkLiu1995
(-2.1962 reported, -2.25 verified) and MitsosBarton2006Ex318 (-0.25 reported, -1 verified,
as BASBLib also finds). Left out: problems with other than box constraints (coupled or
general inequalities: most of BOLIB), MorganPatrone2006b/c (piecewise lower levels),
LuDebSinha2016a-c (a^0.4 of negative numbers), HenrionSurowiec2011 (F free of y) and
DempeDutta2012Ex24 (Y = {0}).

Families with the answer in closed form or from a verified one-dimensional search:
`continuum_problem` (lower levels with a continuum of solutions), `quadratic_problem`
(strongly convex quadratics, condition 1 to 1e3, scales of f and g from 1e-2 to 1e4) and
`nonconvex_problem` (a double well and a ring). `SUITE` maps stable names to zero-argument
builders; `success(problem, x, y)` says whether a point solves the problem.

Every builder accepts `device` and `dtype` (float64 by default); f and g take batched
inputs (leading dimensions broadcast), which the verification grids use.
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ..core import checks
from ..core.problem import BilevelProblem
from .spec import KNOWN_OPTIMUM_SCORES, distance_to_known_optimum
from .synthetic import _generator, _placement

_BOLIB = "BOLIB (Zhou, Zemkoho & Tin 2018, arXiv:1812.00230)"


# ----- the lower level solved globally, and success ------------------------------------------------
def _box_global_min(g: Callable[[Tensor, Tensor], Tensor], x: Tensor, low: Tensor, high: Tensor, *,
                    points: int | None = None, keep: int = 8, rounds: int = 48) -> tuple[float, Tensor]:
    """min of g(x, .) over the box [low, high] (one or two dimensions) and a minimiser: a dense
    grid, its discrete local minima (the `keep` lowest) polished by a zooming 7-point grid."""
    d = low.numel()
    n = points or (2001 if d == 1 else 201)
    axes = [torch.linspace(float(low[i]), float(high[i]), n, dtype=low.dtype, device=low.device) for i in range(d)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    vals = g(x, grid)
    pool = nnf.max_pool1d if d == 1 else nnf.max_pool2d
    local = vals <= -pool(-vals[None, None], 3, 1, 1)[0, 0]
    flat, pts = vals.reshape(-1), grid.reshape(-1, d)
    idx = torch.nonzero(local.reshape(-1)).squeeze(1)
    centers = pts[idx[flat[idx].argsort()[:keep]]]
    h = (high - low) / (n - 1)
    steps = torch.linspace(-1.0, 1.0, 7, dtype=low.dtype, device=low.device)
    offsets = torch.stack(torch.meshgrid(*([steps] * d), indexing="ij"), dim=-1).reshape(-1, d)
    rows = torch.arange(centers.shape[0], device=low.device)
    for _ in range(rounds):
        cand = torch.maximum(torch.minimum(centers[:, None, :] + offsets * h, high), low)
        centers = cand[rows, g(x, cand).argmin(dim=1)]
        h = h / 2
    v = g(x, centers)
    i = int(v.argmin())
    return float(v[i]), centers[i]


def lower_level_min(problem: BilevelProblem, x: Tensor) -> tuple[float, Tensor]:
    """min over the y box of g(x, .), computed globally, and a minimiser.

    The problem's closed form (`info["lower_solution"]`, a map x -> a global minimiser) where
    it has one; otherwise a dense grid over the (finite) y box of one or two dimensions whose
    local minima are polished by zooming grids (`_box_global_min`).
    """
    with torch.no_grad():
        solution = problem.info.get("lower_solution")
        if solution is not None:
            y = solution(x)
            return float(problem.g(x, y)), y
        low, high = _finite_box(problem.y_bounds, problem.y0, "y_bounds")
        if low.numel() > 2:
            raise ValueError(f"Invalid problem: y has {low.numel()} entries and no info['lower_solution'] "
                             f"(expected at most 2 for the grid search)")
        return _box_global_min(problem.g, x, low, high)


def _finite_box(bounds: Any, like: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if bounds is None or bounds[0] is None or bounds[1] is None:
        raise ValueError(f"Invalid problem: {name} = {bounds!r} (expected a finite box for the grid search)")
    low, high = (torch.broadcast_to(b, like.shape).reshape(-1) for b in bounds)
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"Invalid problem: {name} has infinite sides (expected a finite box for the grid search)")
    return low, high


def _inside(t: Tensor, bounds: Any) -> bool:
    if bounds is None:
        return True
    ok = True
    for side, sign in zip(bounds, (1.0, -1.0)):
        if side is not None:
            slack = 1e-9 * (1.0 + side.abs())
            ok = ok and bool((sign * (t - side) >= -slack).all())
    return ok


def success(problem: BilevelProblem, x: Tensor, y: Tensor, tol: float = 1e-2, *,
            lower_tol: float = 1e-3) -> dict[str, Any]:
    """Whether (x, y) solves a suite problem: the upper value, the lower level, the boxes.

        F_ok:     |F(x, y) - F*| <= tol * max(f_scale, |F*|)
        lower_ok: G(x, y) - min_{y' in Y} G(x, y') <= lower_tol * g_scale   (the min computed globally)
        inside:   x in X and y in Y (up to 1e-9 relative slack)

    f_scale and g_scale are 1 except in `quadratic_problem`, where they are the factors that
    scale f and g (so the test means the same at every scale).

    Args:
        problem: a problem of this module (its info holds F_star).
        x: the point's upper-level part.
        y: the point's lower-level part.
        tol: relative tolerance on the upper value (default 1e-2).
        lower_tol: tolerance on the lower-level gap (default 1e-3).

    Returns:
        dict with F, F_error, F_ok, lower_gap, lower_ok, inside and success (all three ok).

    Example:
        >>> p = SUITE["bolib/MitsosBarton2006Ex314"]()
        >>> success(p, p.info["x_star"], p.info["y_star"])["success"]
        True
    """
    info = problem.info
    if "F_star" not in info:
        raise ValueError(f"Invalid problem: {problem.name!r} has no info['F_star'] (expected a problem of "
                         f"bilevel.problems.bolib)")
    tol = checks.number("tol", tol, positive=True)
    lower_tol = checks.number("lower_tol", lower_tol, positive=True)
    with torch.no_grad():
        value, lower = float(problem.f(x, y)), float(problem.g(x, y))
        g_min, _ = lower_level_min(problem, x)
    F_star = float(info["F_star"])
    F_error = abs(value - F_star)
    F_ok = F_error <= tol * max(float(info.get("f_scale", 1.0)), abs(F_star))
    gap = lower - g_min
    lower_ok = gap <= lower_tol * float(info.get("g_scale", 1.0))
    inside = _inside(x, problem.x_bounds) and _inside(y, problem.y_bounds)
    return {"F": value, "F_error": F_error, "F_ok": bool(F_ok), "lower_gap": gap, "lower_ok": bool(lower_ok),
            "inside": inside, "success": bool(F_ok and lower_ok and inside)}


def _suite_metrics(x: Tensor, y: Tensor, *, problem: BilevelProblem) -> dict[str, float]:
    report = success(problem, x, y)
    return {"F_error": report["F_error"], "global_lower_gap": report["lower_gap"]}


SCORES = {"solved": "max", "F_error": "min", **KNOWN_OPTIMUM_SCORES}


def evaluate(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """The scores of a finished run on a suite problem: solved (1 where `success` holds at the
    answer, else 0), F_error and, where x* is known, x_error (`spec.distance_to_known_optimum`)."""
    report = success(problem, result.x, result.y)
    return {"solved": float(report["success"]), "F_error": report["F_error"],
            **distance_to_known_optimum(problem, result)}


def _with_metrics(problem: BilevelProblem) -> BilevelProblem:
    """The problem with metrics F_error = |F - F*| and global_lower_gap = G - min G (as in
    `success`: against the lower level solved globally)."""
    return replace(problem, metrics=partial(_suite_metrics, problem=problem))


# ----- BOLIB ----------------------------------------------------------------------------------------
def _box(bounds: Any, n: int, placement: dict[str, Any]) -> tuple[Tensor | None, Tensor | None] | None:
    """(low, high) from numbers, lists or None as tensors of n entries (inf where a side is open in
    one coordinate only); a side that is open everywhere is None."""
    if bounds is None:
        return None
    out = []
    for side, fill in zip(bounds, (-math.inf, math.inf)):
        if side is None:
            out.append(None)
            continue
        values = side if isinstance(side, (list, tuple)) else [side] * n
        t = torch.as_tensor([fill if v is None else v for v in values], dtype=torch.float64)
        out.append(None if bool(torch.isinf(t).all()) else t.to(**placement))
    return None if out == [None, None] else (out[0], out[1])


def _bolib(name: str, f: Callable, g: Callable, *, x0: list, y0: list, x_bounds: Any, y_bounds: Any,
           x_star: list, y_star: list, F_star: float, literature: float, lower_level: str, after: str,
           search: dict[str, tuple[float, float]] | None = None, lower_solution: Callable | None = None,
           device: Any, dtype: Any) -> BilevelProblem:
    placement = _placement(device, dtype)

    def vec(v: list) -> Tensor:
        return torch.as_tensor(v, dtype=torch.float64).to(**placement)

    info = {
        "F_star": float(F_star), "x_star": vec(x_star), "y_star": vec(y_star),
        "source": f"{_BOLIB}: {name}, after {after}", "lower_level": lower_level, "verified": True,
        "literature_F_star": float(literature),
        "agrees_with_literature": abs(F_star - literature) <= 1e-3 * max(1.0, abs(literature)),
        "search_box": dict(search or {}),
    }
    if lower_solution is not None:
        info["lower_solution"] = lower_solution
    problem = BilevelProblem(f, g, vec(x0), vec(y0), x_bounds=_box(x_bounds, len(x0), placement),
                             y_bounds=_box(y_bounds, len(y0), placement), name=f"bolib/{name}", info=info)
    return _with_metrics(problem)


def _x(t: Tensor, i: int = 0) -> Tensor:
    return t[..., i]


# AllendeStill2013 ----------------------------------------------------------------------------------
def _allende_still_2013_f(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x, 0) - 1) ** 2 + (_x(x, 1) - 1) ** 2 + (y ** 2).sum(-1)


def _allende_still_2013_g(x: Tensor, y: Tensor) -> Tensor:
    return (y ** 2).sum(-1) - 2 * (x * y).sum(-1)


def _clamp_lower(x: Tensor, *, low: float, high: float) -> Tensor:
    return x.clamp(low, high)


def allende_still_2013(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """AllendeStill2013 (convex lower level; x, y in R^2).

        min_x (x1 - 1)^2 + (x2 - 1)^2 + ||y||^2   s.t.  y in argmin_{y in [0.5, 1.5]^2} ||y||^2 - 2 x^T y,
        x1 in [0, 2], x2 >= 0.

    BOLIB's upper-level y >= 0 is implied by the lower-level box (written there as
    (y_i - 1)^2 <= 1/4). Start: x0 = (0, 0) (BOLIB's); y0 = (0.5, 0.5), BOLIB's (0, 0)
    projected onto Y.

    Verified optimum: F* = 1 at x* = y* = (0.5, 0.5) (BOLIB: 1, agrees). The lower level is
    strongly convex with y(x) = clamp(x, 0.5, 1.5), so F separates into two copies of
    h(t) = (t - 1)^2 + clamp(t, 0.5, 1.5)^2, minimised at t = 0.5 (h' > 0 on [0.5, 1.5],
    h decreasing below 0.5), h(0.5) = 1/2. Brute force: tests/test_bolib.py.
    """
    return _bolib("AllendeStill2013", _allende_still_2013_f, _allende_still_2013_g, x0=[0.0, 0.0], y0=[0.5, 0.5],
                  x_bounds=([0.0, 0.0], [2.0, None]), y_bounds=(0.5, 1.5), x_star=[0.5, 0.5], y_star=[0.5, 0.5],
                  F_star=1.0, literature=1.0, lower_level="convex", after="Allende & Still (2013)",
                  search={"x": (0.0, 2.0)}, lower_solution=partial(_clamp_lower, low=0.5, high=1.5),
                  device=device, dtype=dtype)


# DeSilva1978, FalkLiu1995 --------------------------------------------------------------------------
def _shifted_sum_f(x: Tensor, y: Tensor, *, c: float, offset: float) -> Tensor:
    return ((x - c) ** 2 + y ** 2).sum(-1) - offset


def _distance_g(x: Tensor, y: Tensor) -> Tensor:
    return ((y - x) ** 2).sum(-1)


def de_silva_1978(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """DeSilva1978 (convex lower level; x, y in R^2).

        min_x sum_i (x_i - 1)^2 + y_i^2 - 2   s.t.  y in argmin_{y in [0.5, 1.5]^2} ||y - x||^2,  x free.

    Start: x0 = (0, 0), y0 = (1, 1) (BOLIB's).

    Verified optimum: F* = -1 at x* = y* = (0.5, 0.5) (BOLIB: -1, agrees). y(x) = clamp(x, 0.5,
    1.5) and each coordinate contributes h(t) = (t - 1)^2 + clamp(t, 0.5, 1.5)^2, minimised at
    t = 0.5 with h = 1/2. Any optimal x has sum (x_i - 1)^2 <= F* + 2 - 0.5 = 1/2, so the
    brute force searches x in [0, 2]^2.
    """
    return _bolib("DeSilva1978", partial(_shifted_sum_f, c=1.0, offset=2.0), _distance_g, x0=[0.0, 0.0],
                  y0=[1.0, 1.0], x_bounds=None, y_bounds=(0.5, 1.5), x_star=[0.5, 0.5], y_star=[0.5, 0.5],
                  F_star=-1.0, literature=-1.0, lower_level="convex", after="De Silva (1978)",
                  search={"x": (0.0, 2.0)}, lower_solution=partial(_clamp_lower, low=0.5, high=1.5),
                  device=device, dtype=dtype)


def falk_liu_1995(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """FalkLiu1995 (convex lower level; x, y in R^2).

        min_x sum_i (x_i - 1.5)^2 + y_i^2 - 4.5   s.t.  y in argmin_{y in [0.5, 1.5]^2} ||y - x||^2,  x free.

    Start: x0 = (0, 0), y0 = (1, 1) (BOLIB's).

    Verified optimum: F* = -2.25 at x* = y* = (0.75, 0.75). DISAGREES with BOLIB's -2.1962
    (the point x = y = (sqrt(3)/2, sqrt(3)/2) of the literature, which is feasible but not
    optimal). y(x) = clamp(x, 0.5, 1.5); each coordinate contributes h(t) = (t - 1.5)^2 +
    clamp(t)^2: on [0.5, 1.5] h' = 4t - 3 vanishes at t = 0.75 (h = 1.125), below 0.5 h >= 1.25,
    above 1.5 h >= 2.25; so F* = 2 * 1.125 - 4.5. Optimal x have sum (x_i - 1.5)^2 <= 1.75:
    the brute force searches x in [0, 3]^2.
    """
    return _bolib("FalkLiu1995", partial(_shifted_sum_f, c=1.5, offset=4.5), _distance_g, x0=[0.0, 0.0],
                  y0=[1.0, 1.0], x_bounds=None, y_bounds=(0.5, 1.5), x_star=[0.75, 0.75], y_star=[0.75, 0.75],
                  F_star=-2.25, literature=-2.1962, lower_level="convex", after="Falk & Liu (1995)",
                  search={"x": (0.0, 3.0)}, lower_solution=partial(_clamp_lower, low=0.5, high=1.5),
                  device=device, dtype=dtype)


# HatzEtal2013 --------------------------------------------------------------------------------------
def _hatz_f(x: Tensor, y: Tensor) -> Tensor:
    return -_x(x) + 2 * _x(y, 0) + _x(y, 1)


def _hatz_g(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) - _x(y, 0)) ** 2 + _x(y, 1) ** 2


def _hatz_lower(x: Tensor) -> Tensor:
    return torch.stack([x[..., 0].clamp(min=0.0), torch.zeros_like(x[..., 0])], dim=-1)


def hatz_etal_2013(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """HatzEtal2013 (convex lower level; x in R, y in R^2).

        min_x -x + 2 y1 + y2   s.t.  y in argmin_{y >= 0} (x - y1)^2 + y2^2,  x free.

    Start: x0 = 1, y0 = (1, 1) (BOLIB's).

    Verified optimum: F* = 0 at x* = 0, y* = (0, 0) (BOLIB: 0, agrees). The lower level is
    strongly convex with y(x) = (max(x, 0), 0), so F(x, y(x)) = |x|. The brute force searches
    x in [-2, 2] and y in [0, 3]^2 (which holds y(x) there).
    """
    return _bolib("HatzEtal2013", _hatz_f, _hatz_g, x0=[1.0], y0=[1.0, 1.0], x_bounds=None, y_bounds=(0.0, None),
                  x_star=[0.0], y_star=[0.0, 0.0], F_star=0.0, literature=0.0, lower_level="convex",
                  after="Hatz et al. (2013)", search={"x": (-2.0, 2.0), "y": (0.0, 3.0)},
                  lower_solution=_hatz_lower, device=device, dtype=dtype)


# HendersonQuandt1958 -------------------------------------------------------------------------------
def _henderson_quandt_f(x: Tensor, y: Tensor) -> Tensor:
    return (0.5 * (_x(x) + _x(y)) - 95) * _x(x)


def _henderson_quandt_g(x: Tensor, y: Tensor) -> Tensor:
    return (_x(y) + 0.5 * _x(x) - 100) * _x(y)


def _henderson_quandt_lower(x: Tensor) -> Tensor:
    return (50 - x / 4).clamp(min=0.0)


def henderson_quandt_1958(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """HendersonQuandt1958 (convex lower level; a Stackelberg duopoly; x, y in R).

        min_{x in [0, 200]} (0.5 (x + y) - 95) x   s.t.  y in argmin_{y >= 0} (y + 0.5 x - 100) y.

    Start: x0 = 0, y0 = 0 (BOLIB's).

    Verified optimum: F* = -9800/3 (-3266.67) at x* = 280/3, y* = 80/3 (BOLIB: -3266.67, agrees).
    y(x) = max(0, 50 - x/4) = 50 - x/4 on [0, 200], so F = (3x/8 - 70) x, minimised at
    x = 280/3. The brute force searches y in [0, 60].
    """
    return _bolib("HendersonQuandt1958", _henderson_quandt_f, _henderson_quandt_g, x0=[0.0], y0=[0.0],
                  x_bounds=(0.0, 200.0), y_bounds=(0.0, None), x_star=[280 / 3], y_star=[80 / 3],
                  F_star=-9800 / 3, literature=-3266.67, lower_level="convex", after="Henderson & Quandt (1958)",
                  search={"y": (0.0, 60.0)}, lower_solution=_henderson_quandt_lower, device=device, dtype=dtype)


# LamparielloSagratella2017Ex32 ---------------------------------------------------------------------
def _squares_f(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) ** 2 + _x(y) ** 2


def _lampariello_sagratella_g(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) + _x(y) - 1) ** 2


def _one_minus(x: Tensor) -> Tensor:
    return 1 - x


def lampariello_sagratella_2017_ex32(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """LamparielloSagratella2017Ex32 (convex lower level, unconstrained; x, y in R).

        min_x x^2 + y^2   s.t.  y in argmin_y (x + y - 1)^2.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 1/2 at x* = y* = 1/2 (BOLIB: 0.5, agrees): y(x) = 1 - x and
    x^2 + (1 - x)^2 is least at x = 1/2. Optimal x have x^2 <= 1/2; the brute force searches
    x in [-1, 1], y in [-1, 3].
    """
    return _bolib("LamparielloSagratella2017Ex32", _squares_f, _lampariello_sagratella_g, x0=[1.0], y0=[1.0],
                  x_bounds=None, y_bounds=None, x_star=[0.5], y_star=[0.5], F_star=0.5, literature=0.5,
                  lower_level="convex", after="Lampariello & Sagratella (2017), Example 3.2",
                  search={"x": (-1.0, 1.0), "y": (-1.0, 3.0)}, lower_solution=_one_minus, device=device, dtype=dtype)


# MacalHurter1997 -----------------------------------------------------------------------------------
def _macal_hurter_f(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) - 1) ** 2 + (_x(y) - 1) ** 2


def _macal_hurter_g(x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * _x(y) ** 2 + 500 * _x(y) - 50 * _x(x) * _x(y)


def _macal_hurter_lower(x: Tensor) -> Tensor:
    return 50 * x - 500


def macal_hurter_1997(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MacalHurter1997 (convex lower level, unconstrained; x, y in R).

        min_x (x - 1)^2 + (y - 1)^2   s.t.  y in argmin_y y^2/2 + 500 y - 50 x y.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 302621/3721 (81.3279) at x* = 611/61 (10.0164), y* = 50/61 (0.8197)
    (BOLIB: 81.327, agrees). y(x) = 50 x - 500 and (x - 1)^2 + (50 x - 501)^2 is least where
    5002 x = 50102. Optimal x have (50 x - 501)^2 <= 81.33, i.e. x in [9.84, 10.2]: the brute
    force searches x in [9.5, 10.5], y in [-30, 30].
    """
    return _bolib("MacalHurter1997", _macal_hurter_f, _macal_hurter_g, x0=[1.0], y0=[1.0], x_bounds=None,
                  y_bounds=None, x_star=[611 / 61], y_star=[50 / 61], F_star=302621 / 3721, literature=81.327,
                  lower_level="convex", after="Macal & Hurter (1997)", search={"x": (9.5, 10.5), "y": (-30.0, 30.0)},
                  lower_solution=_macal_hurter_lower, device=device, dtype=dtype)


# linear lower levels -------------------------------------------------------------------------------
# `+ 0 * y` (or `+ 0 * x`): f truly ignores y (or x), but keeps the broadcast shape of both
# inputs on the verification grids and tells BilevelProblem that the lower level is wired in.
def _first_x(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) + 0 * _x(y)


def _product_g(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) * _x(y)


def dempe_etal_2012(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """DempeEtal2012 (linear lower level; x, y in R).

        min_{x in [-1, 1]} x   s.t.  y in argmin_{y in [0, 1]} x y.

    f does not depend on y (the lower level matters only through feasibility). Start:
    x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -1 at x* = -1, y* = 1 (BOLIB: -1, agrees): F = x >= -1, and at
    x = -1 the lower level -y has the unique solution y = 1.
    """
    return _bolib("DempeEtal2012", _first_x, _product_g, x0=[1.0], y0=[1.0], x_bounds=(-1.0, 1.0),
                  y_bounds=(0.0, 1.0), x_star=[-1.0], y_star=[1.0], F_star=-1.0, literature=-1.0,
                  lower_level="linear", after="Dempe et al. (2012)", device=device, dtype=dtype)


def _lucchetti_f(x: Tensor, y: Tensor) -> Tensor:
    return (1 - _x(x)) / 2 + _x(x) * _x(y)


def _lucchetti_g(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) - 1) * _x(y)


def lucchetti_etal_1987(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """LucchettiEtal1987 (linear lower level; x, y in R).

        min_{x in [0, 1]} (1 - x)/2 + x y   s.t.  y in argmin_{y in [0, 1]} (x - 1) y.

    Start: x0 = 0.5, y0 = 1 (BOLIB starts at x = 1, where G = 0 for every y).

    Verified optimum: F* = 0 at x* = 1, y* = 0 (BOLIB: 0, agrees). For x < 1 the lower level
    gives y = 1 and F = (1 + x)/2 >= 1/2; at x = 1 every y in [0, 1] solves it and the
    optimistic choice y = 0 gives F = 0: the value function jumps at the optimum.
    """
    return _bolib("LucchettiEtal1987", _lucchetti_f, _lucchetti_g, x0=[0.5], y0=[1.0], x_bounds=(0.0, 1.0),
                  y_bounds=(0.0, 1.0), x_star=[1.0], y_star=[0.0], F_star=0.0, literature=0.0,
                  lower_level="linear", after="Lucchetti, Mignanego & Pieri (1987)", device=device, dtype=dtype)


def _square_y(x: Tensor, y: Tensor) -> Tensor:
    return _x(y) ** 2 + 0 * _x(x)


def _mitsos_barton_ex38_g(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) + torch.exp(_x(x))) * _x(y)


def mitsos_barton_2006_ex38(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex38 (linear lower level; x, y in R).

        min_{x in [-1, 1]} y^2   s.t.  y in argmin_{y in [-1, 1]} (x + e^x) y.

    BOLIB also asks y in [-0.1, 0.1] at the upper level; we drop that constraint (Y holds
    one box only), which leaves the optimum unchanged: F >= 0 and the point below has F = 0.
    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 0 at x* = -W(1) = -0.567143 (W: Lambert's), y* = 0 (BOLIB: 0,
    agrees). Where x + e^x != 0 the lower level gives y = -sign(x + e^x) and F = 1; only at
    x + e^x = 0 is every y optimal, and the optimistic y = 0 gives F = 0: an isolated optimum.
    """
    x_star = -0.5671432904097838
    return _bolib("MitsosBarton2006Ex38", _square_y, _mitsos_barton_ex38_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[x_star], y_star=[0.0], F_star=0.0,
                  literature=0.0, lower_level="linear", after="Mitsos & Barton (2006), Example 3.8",
                  device=device, dtype=dtype)


def _minus_sum_f(x: Tensor, y: Tensor) -> Tensor:
    return -(_x(x) + _x(y))


def morgan_patrone_2006a(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MorganPatrone2006a (linear lower level; x, y in R).

        min_{x in [-0.5, 0.5]} -(x + y)   s.t.  y in argmin_{y in [-1, 1]} x y.

    Start: x0 = 0.5 (BOLIB's 1 projected onto X), y0 = 1.

    Verified optimum: F* = -1 at x* = 0, y* = 1 (BOLIB: -1, agrees). For x > 0, y = -1 and
    F = 1 - x >= 1/2; for x < 0, y = 1 and F = -1 - x > -1/2 on X; at x = 0 every y is optimal
    and the optimistic y = 1 gives -1: an isolated optimum.
    """
    return _bolib("MorganPatrone2006a", _minus_sum_f, _product_g, x0=[0.5], y0=[1.0], x_bounds=(-0.5, 0.5),
                  y_bounds=(-1.0, 1.0), x_star=[0.0], y_star=[1.0], F_star=-1.0, literature=-1.0,
                  lower_level="linear", after="Morgan & Patrone (2006)", device=device, dtype=dtype)


def _yezza_f(x: Tensor, y: Tensor) -> Tensor:
    return -(4 * _x(x) - 3) * _x(y) + 2 * _x(x) + 1


def _yezza_g(x: Tensor, y: Tensor) -> Tensor:
    return -(1 - 4 * _x(x)) * _x(y) - 2 * _x(x) - 2


def yezza_1996_ex31(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Yezza1996Ex31 (linear lower level; x, y in R).

        min_{x in [0, 1]} -(4x - 3) y + 2x + 1   s.t.  y in argmin_{y in [0, 1]} -(1 - 4x) y - 2x - 2.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 1.5 at x* = 1/4, y* = 0 (BOLIB: 1.5, agrees). For x < 1/4, y = 1
    and F = 4 - 2x > 3.5; for x > 1/4, y = 0 and F = 2x + 1 > 1.5; at x = 1/4 every y is
    optimal and F = 2y + 1.5 is least at y = 0.
    """
    return _bolib("Yezza1996Ex31", _yezza_f, _yezza_g, x0=[1.0], y0=[1.0], x_bounds=(0.0, 1.0),
                  y_bounds=(0.0, 1.0), x_star=[0.25], y_star=[0.0], F_star=1.5, literature=1.5,
                  lower_level="linear", after="Yezza (1996), Example 3.1", device=device, dtype=dtype)


# nonconvex lower levels: one dimension each ----------------------------------------------------------
def _difference_f(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) - _x(y)


def _kleniati_adjiman_g(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) * _x(y) ** 2 / 2 - _x(x) * _x(y) ** 3


def kleniati_adjiman_2014_ex3(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """KleniatiAdjiman2014Ex3 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} x - y   s.t.  y in argmin_{y in [-1, 1]} x y^2/2 - x y^3.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -1 at x* = 0, y* = 1 (BOLIB: -1, agrees). G = x q(y) with
    q = y^2 (1/2 - y): min q on [-1, 1] is q(1) = -1/2, max is q(-1) = 3/2. So y = 1 for
    x > 0 (F = x - 1 > -1), y = -1 for x < 0 (F = x + 1 >= 0), and at x = 0 every y is optimal
    (optimistic y = 1, F = -1).
    """
    return _bolib("KleniatiAdjiman2014Ex3", _difference_f, _kleniati_adjiman_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.0], y_star=[1.0], F_star=-1.0,
                  literature=-1.0, lower_level="nonconvex", after="Kleniati & Adjiman (2014), Example 3",
                  device=device, dtype=dtype)


def _mirrlees_f(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) - 2) ** 2 + (_x(y) - 1) ** 2


def _mirrlees_g(x: Tensor, y: Tensor) -> Tensor:
    return -_x(x) * torch.exp(-(_x(y) + 1) ** 2) - torch.exp(-(_x(y) - 1) ** 2)


def mirrlees_1999(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Mirrlees1999 (nonconvex lower level, two wells; x, y in R).

        min_x (x - 2)^2 + (y - 1)^2   s.t.  y in argmin_{y in [-2, 2]} -x e^{-(y+1)^2} - e^{-(y-1)^2},  x free.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 1 + (1 - y*)^2 = 1.0018059 at x* = 1, y* = 0.9575040 (the positive
    root of (y+1) e^{-(y+1)^2} + (y-1) e^{-(y-1)^2} = 0) (BOLIB: 1.002, agrees). G has a well
    near -1 weighted by x and one near +1: for x < 1 the right well is the global one, for
    x > 1 the left (y near -0.96, F > 3.8), at x = 1 they tie by symmetry and the optimistic
    choice is the right well. Approaching x = 1 from below F decreases to this value, so the
    optimum is the tie point. Optimal x have (x - 2)^2 <= 1.0019: the brute force searches
    x in [0, 4].
    """
    return _bolib("Mirrlees1999", _mirrlees_f, _mirrlees_g, x0=[1.0], y0=[1.0], x_bounds=None,
                  y_bounds=(-2.0, 2.0), x_star=[1.0], y_star=[0.9575040240772687], F_star=1.0018059079696254,
                  literature=1.002, lower_level="nonconvex", after="Mirrlees (1999)", search={"x": (0.0, 4.0)},
                  device=device, dtype=dtype)


def _identity_y(x: Tensor, y: Tensor) -> Tensor:
    return _x(y) + 0 * _x(x)


def _mitsos_barton_quartic_g(x: Tensor, y: Tensor) -> Tensor:
    v = _x(y)
    return _x(x) * (16 * v ** 4 + 2 * v ** 3 - 8 * v ** 2 - 1.5 * v + 0.5)


def mitsos_barton_2006_ex310(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex310 (nonconvex lower level; x, y in R).

        min_{x in [0.1, 1]} y   s.t.  y in argmin_{y in [-1, 1]} x p(y),
        p(y) = 16 y^4 + 2 y^3 - 8 y^2 - 1.5 y + 0.5.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 0.5 at y* = 0.5 and EVERY x in [0.1, 1] (we record x* = 0.1)
    (BOLIB: 0.5, agrees). p' = (y - 1/2)(64 y^2 + 38 y + 3) has roots 1/2, -1/2, -3/32;
    p(1/2) = -1 is the global minimum on [-1, 1] (p(-1/2) = 0, p(-1) = 8, p(1) = 9), and x > 0.
    """
    return _bolib("MitsosBarton2006Ex310", _identity_y, _mitsos_barton_quartic_g, x0=[1.0], y0=[1.0],
                  x_bounds=(0.1, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.1], y_star=[0.5], F_star=0.5,
                  literature=0.5, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.10",
                  device=device, dtype=dtype)


def mitsos_barton_2006_ex311(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex311 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} y   s.t.  y in argmin_{y in [-0.8, 1]} x p(y),  p as in Ex310.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -0.8 at x* = 0, y* = -0.8 (BOLIB: -0.8, agrees). For x > 0,
    y = 1/2 (F = 0.5); for x < 0 the lower level maximises p: y = 1 (p(1) = 9 > p(-0.8) = 2.11);
    at x = 0 every y is optimal and the optimistic y = -0.8 gives F = -0.8.
    """
    return _bolib("MitsosBarton2006Ex311", _identity_y, _mitsos_barton_quartic_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-0.8, 1.0), x_star=[0.0], y_star=[-0.8], F_star=-0.8,
                  literature=-0.8, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.11",
                  device=device, dtype=dtype)


def _mitsos_barton_ex312_f(x: Tensor, y: Tensor) -> Tensor:
    return -_x(x) + _x(x) * _x(y) + 10 * _x(y) ** 2


def _tilted_quartic_g(x: Tensor, y: Tensor) -> Tensor:
    return -_x(x) * _x(y) ** 2 + 0.5 * _x(y) ** 4


def mitsos_barton_2006_ex312(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex312 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} -x + x y + 10 y^2   s.t.  y in argmin_{y in [-1, 1]} -x y^2 + y^4/2.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 0 at x* = 0, y* = 0 (BOLIB: 0, agrees). For x <= 0 the lower
    level has the unique solution y = 0 (F = -x >= 0); for x > 0 its solutions are
    y = +-sqrt(x) (G = -x^2/2 <= G(+-1) = 1/2 - x), and the better F = 9x - x^{3/2} > 0.
    """
    return _bolib("MitsosBarton2006Ex312", _mitsos_barton_ex312_f, _tilted_quartic_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.0], y_star=[0.0], F_star=0.0,
                  literature=0.0, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.12",
                  device=device, dtype=dtype)


def _mitsos_barton_ex313_g(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) * _x(y) * (_x(y) / 2 - _x(x) ** 2)


def mitsos_barton_2006_ex313(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex313 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} x - y   s.t.  y in argmin_{y in [-1, 1]} x y (y/2 - x^2).

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -1 at x* = 0, y* = 1 (BOLIB: -1, agrees). For x > 0, G is convex
    with minimiser y = x^2 (F = x - x^2 >= 0); for x < 0 it is concave and y = -1 beats y = 1
    by 2|x|^3 (F = x + 1 >= 0); at x = 0, G = 0 and the optimistic y = 1 gives -1.
    """
    return _bolib("MitsosBarton2006Ex313", _difference_f, _mitsos_barton_ex313_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.0], y_star=[1.0], F_star=-1.0,
                  literature=-1.0, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.13",
                  device=device, dtype=dtype)


def _shifted_squares_f(x: Tensor, y: Tensor, *, c: float, w: float) -> Tensor:
    return (_x(x) - c) ** 2 + w * _x(y) ** 2


def _cubic_g(x: Tensor, y: Tensor, *, power: int) -> Tensor:
    return _x(y) ** 3 / 3 - _x(x) ** power * _x(y)


def mitsos_barton_2006_ex314(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex314 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} (x - 1/4)^2 + y^2   s.t.  y in argmin_{y in [-1, 1]} y^3/3 - x y.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 1/4 at x* = 1/4, y* = 1/2 (BOLIB: 0.25, agrees). For x <= 0 the
    solution is y = -1; for x > 0 the candidates are y = sqrt(x) (G = -2/3 x^{3/2}) and y = -1
    (G = x - 1/3), which tie at x = 1/4. So y = -1 (F >= 1) for x < 1/4, y = sqrt(x)
    (F = (x - 1/4)^2 + x > 1/4) for x > 1/4, and at the tie the optimistic y = 1/2 gives 1/4.
    """
    return _bolib("MitsosBarton2006Ex314", partial(_shifted_squares_f, c=0.25, w=1.0), partial(_cubic_g, power=1),
                  x0=[1.0], y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.25], y_star=[0.5],
                  F_star=0.25, literature=0.25, lower_level="nonconvex",
                  after="Mitsos & Barton (2006), Example 3.14", device=device, dtype=dtype)


def _sum_f(x: Tensor, y: Tensor, *, wx: float) -> Tensor:
    return wx * _x(x) + _x(y)


def _mitsos_barton_ex315_g(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) * _x(y) ** 2 / 2 - _x(y) ** 3 / 3


def mitsos_barton_2006_ex315(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex315 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} x + y   s.t.  y in argmin_{y in [-1, 1]} x y^2/2 - y^3/3.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 0 at x* = -1, y* = 1 (BOLIB: 0, agrees). The candidates are
    y in {-1, 0, x, 1}; G(1) = x/2 - 1/3 <= G(x) = x^3/6 on [-1, 1] and G(1) < G(0) = 0 iff
    x < 2/3 (G(-1) is never least). So y = 1 and F = x + 1 for x < 2/3, y = 0 and F = x >= 2/3
    beyond: F is least at x = -1.
    """
    return _bolib("MitsosBarton2006Ex315", partial(_sum_f, wx=1.0), _mitsos_barton_ex315_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[-1.0], y_star=[1.0], F_star=0.0,
                  literature=0.0, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.15",
                  device=device, dtype=dtype)


def _quartic_g(x: Tensor, y: Tensor, *, sign: float) -> Tensor:
    return sign * (_x(x) * _x(y) ** 2 / 2 + _x(y) ** 4 / 4)


def mitsos_barton_2006_ex316(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex316 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} 2x + y   s.t.  y in argmin_{y in [-1, 1]} -x y^2/2 - y^4/4.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -2 at x* = -1, y* = 0 (BOLIB: -2, agrees), and also at x = -1/2,
    y = -1. G is least at y = 0 (G = 0) or y = +-1 (G = -x/2 - 1/4); y = 0 wins for x < -1/2
    (F = 2x >= -2), y = +-1 for x > -1/2 (optimistic y = -1, F = 2x - 1 > -2), and at x = -1/2
    they tie (optimistic y = -1, F = -2).
    """
    return _bolib("MitsosBarton2006Ex316", partial(_sum_f, wx=2.0), partial(_quartic_g, sign=-1.0), x0=[1.0],
                  y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[-1.0], y_star=[0.0], F_star=-2.0,
                  literature=-2.0, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.16",
                  device=device, dtype=dtype)


def mitsos_barton_2006_ex317(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex317 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} (x + 1/2)^2 + y^2/2   s.t.  y in argmin_{y in [-1, 1]} x y^2/2 + y^4/4.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 3/16 at x* = -1/4, y* = 1/2 (and y = -1/2) (BOLIB: 0.1875, agrees).
    For x >= 0, y = 0 (F >= 1/4); for x < 0, y = +-sqrt(-x) (G = -x^2/4 <= G(+-1) =
    x/2 + 1/4) and F = (x + 1/2)^2 - x/2 is least at x = -1/4.
    """
    return _bolib("MitsosBarton2006Ex317", partial(_shifted_squares_f, c=-0.5, w=0.5), partial(_quartic_g, sign=1.0),
                  x0=[1.0], y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[-0.25], y_star=[0.5],
                  F_star=0.1875, literature=0.1875, lower_level="nonconvex",
                  after="Mitsos & Barton (2006), Example 3.17", device=device, dtype=dtype)


def _mitsos_barton_ex318_f(x: Tensor, y: Tensor) -> Tensor:
    return -_x(x) ** 2 + _x(y) ** 2


def _concave_quartic_g(x: Tensor, y: Tensor, *, a: float) -> Tensor:
    return a * _x(x) * _x(y) ** 2 - _x(y) ** 4 / 2


def mitsos_barton_2006_ex318(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex318 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} -x^2 + y^2   s.t.  y in argmin_{y in [-1, 1]} x y^2 - y^4/2.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -1 at x* = 1, y* = 0. DISAGREES with BOLIB's -0.25 (BASBLib's
    mb_2007_18 also gives -1 at (1, 0)). With s = y^2 in [0, 1], G = x s - s^2/2 is concave
    in s, so y = 0 (G = 0) or y = +-1 (G = x - 1/2): y = 0 for x > 1/2 (F = -x^2, least at
    x = 1), y = +-1 for x < 1/2 (F = 1 - x^2 >= 3/4).
    """
    return _bolib("MitsosBarton2006Ex318", _mitsos_barton_ex318_f, partial(_concave_quartic_g, a=1.0), x0=[1.0],
                  y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[1.0], y_star=[0.0], F_star=-1.0,
                  literature=-0.25, lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.18",
                  device=device, dtype=dtype)


def _mitsos_barton_ex319_f(x: Tensor, y: Tensor) -> Tensor:
    return (_x(x) - 1 + _x(y) / 2) * _x(y)


def mitsos_barton_2006_ex319(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex319 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} (x - 1 + y/2) y   s.t.  y in argmin_{y in [-1, 1]} (-x + y^2/2) y^2.

    Start: x0 = -1, y0 = 1 (BOLIB's).

    Verified optimum: F* = t^3 + t^2/2 - t = -0.2580756 at x* = t^2 = 0.1885805, y* = t =
    0.4342585, t = (sqrt(13) - 1)/6 (BOLIB: -0.258, agrees). The lower level is Ex312's:
    y = 0 for x <= 0 (F = 0), y = +-sqrt(x) for x > 0, where the optimistic y = +sqrt(x) gives
    t^3 + t^2/2 - t (t = sqrt(x)), least where 3t^2 + t - 1 = 0.
    """
    t = (math.sqrt(13.0) - 1.0) / 6.0
    return _bolib("MitsosBarton2006Ex319", _mitsos_barton_ex319_f, _tilted_quartic_g, x0=[-1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[t * t], y_star=[t],
                  F_star=t ** 3 + t ** 2 / 2 - t, literature=-0.258, lower_level="nonconvex",
                  after="Mitsos & Barton (2006), Example 3.19", device=device, dtype=dtype)


def mitsos_barton_2006_ex320(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex320 (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} (x - 1/4)^2 + y^2   s.t.  y in argmin_{y in [-1, 1]} y^3/3 - x^2 y.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 5/16 at x* = 1/2, y* = 1/2 (BOLIB: 0.3125, agrees). The candidates
    are y = |x| (G = -2|x|^3/3) and y = -1 (G = x^2 - 1/3); |x| wins iff (s + 1)^2 (2s - 1) > 0,
    s = |x|, i.e. |x| > 1/2. For |x| < 1/2, F >= 1; for |x| >= 1/2 (optimistic at the tie),
    F = (x - 1/4)^2 + x^2 is least at x = 1/2.
    """
    return _bolib("MitsosBarton2006Ex320", partial(_shifted_squares_f, c=0.25, w=1.0), partial(_cubic_g, power=2),
                  x0=[1.0], y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.5], y_star=[0.5],
                  F_star=0.3125, literature=0.3125, lower_level="nonconvex",
                  after="Mitsos & Barton (2006), Example 3.20", device=device, dtype=dtype)


def _mitsos_barton_ex321_g(x: Tensor, y: Tensor) -> Tensor:
    u, v = _x(x), _x(y)
    return (v ** 4 + (4 / 30) * (1 - u) * v ** 3 + (-0.02 * u ** 2 + 0.16 * u - 0.4) * v ** 2
            + (0.004 * u ** 3 - 0.036 * u ** 2 + 0.08 * u) * v)


def mitsos_barton_2006_ex321(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex321 (nonconvex lower level, two wells; x, y in R).

        min_{x in [-1, 1]} (x + 0.6)^2 + y^2   s.t.  y in argmin_{y in [-1, 1]} G(x, y),
        G = y^4 + (4/30)(1 - x) y^3 + (-0.02 x^2 + 0.16 x - 0.4) y^2 + (0.004 x^3 - 0.036 x^2 + 0.08 x) y.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = 2137.16/10201 = 0.2095050 at x* = -56/101, y* = 46/101 (BOLIB:
    0.2095, agrees). G' = 4 (y - (x/10 - 1/2)) (y - x/10) (y - (2/5 - x/10)): wells at
    x/10 - 1/2 and 2/5 - x/10 and a local maximum between. The two wells tie at x = -1/2;
    the right one is global for x < -1/2, where F = (x + 0.6)^2 + (0.4 - x/10)^2 is least at
    x = -1.12/2.02 = -56/101; for x > -1/2 the left well gives F >= 0.3125.
    """
    return _bolib("MitsosBarton2006Ex321", partial(_shifted_squares_f, c=-0.6, w=1.0), _mitsos_barton_ex321_g,
                  x0=[1.0], y0=[1.0], x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[-56 / 101],
                  y_star=[46 / 101], F_star=2137.16 / 10201, literature=0.2095, lower_level="nonconvex",
                  after="Mitsos & Barton (2006), Example 3.21", device=device, dtype=dtype)


def _mitsos_barton_ex324_f(x: Tensor, y: Tensor) -> Tensor:
    return _x(x) ** 2 - _x(y)


def _mitsos_barton_ex324_g(x: Tensor, y: Tensor) -> Tensor:
    return ((_x(y) - 1 - 0.1 * _x(x)) ** 2 - 0.5 - 0.5 * _x(x)) ** 2


def mitsos_barton_2006_ex324(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """MitsosBarton2006Ex324 (nonconvex lower level, two global minimisers; x, y in R).

        min_{x in [0, 1]} x^2 - y   s.t.  y in argmin_{y in [0, 3]} ((y - 1 - x/10)^2 - (1 + x)/2)^2.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -1.7547179 at x* = 0.2106621, y* = 1 + x*/10 + sqrt((1 + x*)/2) =
    1.7990965 (BOLIB: -1.755, agrees). G >= 0 vanishes at y = 1 + x/10 +- sqrt((1 + x)/2), both
    inside [0, 3]; the optimistic choice is the larger, so F = x^2 - 1 - x/10 - sqrt((1 + x)/2),
    convex, least where 2x - 0.1 = 1/(4 sqrt((1 + x)/2)).
    """
    return _bolib("MitsosBarton2006Ex324", _mitsos_barton_ex324_f, _mitsos_barton_ex324_g, x0=[1.0], y0=[1.0],
                  x_bounds=(0.0, 1.0), y_bounds=(0.0, 3.0), x_star=[0.21066213402341289],
                  y_star=[1.7990964615365038], F_star=-1.7547179268252054, literature=-1.755,
                  lower_level="nonconvex", after="Mitsos & Barton (2006), Example 3.24", device=device, dtype=dtype)


def paulavicius_adjiman_2017a(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """PaulaviciusAdjiman2017a (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} x^2 + y^2   s.t.  y in argmin_{y in [-1, 1]} x y^2 - y^4/2.

    BOLIB's upper-level y in [-1, 1] repeats the lower-level box. Start: x0 = 1, y0 = 1
    (BOLIB's).

    Verified optimum: F* = 1/4 at x* = 1/2, y* = 0 (BOLIB: 0.25, agrees). The lower level is
    Ex318's: y = 0 for x > 1/2 (F = x^2), y = +-1 for x < 1/2 (F >= 1), a tie at x = 1/2
    (optimistic y = 0).
    """
    return _bolib("PaulaviciusAdjiman2017a", _squares_f, partial(_concave_quartic_g, a=1.0), x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[0.5], y_star=[0.0], F_star=0.25,
                  literature=0.25, lower_level="nonconvex", after="Paulavicius & Adjiman (2017)",
                  device=device, dtype=dtype)


def _paulavicius_adjiman_b_g(x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * _x(x) * _x(y) ** 2 - _x(x) ** 3 * _x(y)


def paulavicius_adjiman_2017b(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """PaulaviciusAdjiman2017b (nonconvex lower level; x, y in R).

        min_{x in [-1, 1]} x + y   s.t.  y in argmin_{y in [-1, 1]} x y^2/2 - x^3 y.

    Start: x0 = 1, y0 = 1 (BOLIB's).

    Verified optimum: F* = -2 at x* = -1, y* = -1 (BOLIB: -2, agrees). For x > 0, G is convex
    with minimiser y = x^2 (F > 0); for x < 0 it is concave and y = -1 beats y = 1 (by 2|x|^3),
    F = x - 1 >= -2; at x = 0, F = y >= -1.
    """
    return _bolib("PaulaviciusAdjiman2017b", partial(_sum_f, wx=1.0), _paulavicius_adjiman_b_g, x0=[1.0], y0=[1.0],
                  x_bounds=(-1.0, 1.0), y_bounds=(-1.0, 1.0), x_star=[-1.0], y_star=[-1.0], F_star=-2.0,
                  literature=-2.0, lower_level="nonconvex", after="Paulavicius & Adjiman (2017)",
                  device=device, dtype=dtype)


# SinhaMaloDeb2014 TP9, TP10: ten dimensions, Griewank-type lower levels -------------------------------
def _griewank(z: Tensor) -> Tensor:
    """1 + ||z||^2/4000 - prod_i cos(z_i / sqrt(i)) >= 0, zero only at z = 0."""
    t = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device).sqrt()
    return 1 + (z ** 2).sum(-1) / 4000 - torch.cos(z / t).prod(-1)


def _sinha_f(x: Tensor, y: Tensor) -> Tensor:
    return ((x - 1) ** 2).sum(-1) + (y ** 2).sum(-1)


def _sinha_tp9_g(x: Tensor, y: Tensor) -> Tensor:
    return torch.exp(_griewank(y) * (x ** 2).sum(-1))


def _sinha_tp10_g(x: Tensor, y: Tensor) -> Tensor:
    return torch.exp(_griewank(x * y))


def _zeros_like(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def sinha_malo_deb_2014_tp9(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """SinhaMaloDeb2014TP9 (nonconvex lower level; x, y in R^10).

        min_x ||x - 1||^2 + ||y||^2   s.t.  y in argmin_{y in [-pi, pi]^10} exp(W(y) ||x||^2),
        W(y) = 1 + ||y||^2/4000 - prod_i cos(y_i / sqrt(i))   (Griewank's function).

    Start: x0 = (0.5, ..., 0.5), y0 = (1, ..., 1). BOLIB starts at x = 0, where G = 1 for
    every y (flat lower level); we move x0 off it.

    Verified optimum: F* = 0 at x* = (1, ..., 1), y* = 0 (BOLIB: 0, agrees). W >= 0 with
    equality only at y = 0, so y = 0 minimises G(x, .) for every x (uniquely when x != 0);
    F >= 0 with equality only at (1, 0).
    """
    n = 10
    return _bolib("SinhaMaloDeb2014TP9", _sinha_f, _sinha_tp9_g, x0=[0.5] * n, y0=[1.0] * n, x_bounds=None,
                  y_bounds=(-math.pi, math.pi), x_star=[1.0] * n, y_star=[0.0] * n, F_star=0.0, literature=0.0,
                  lower_level="nonconvex", after="Sinha, Malo & Deb (2014), TP9", lower_solution=_zeros_like,
                  device=device, dtype=dtype)


def sinha_malo_deb_2014_tp10(*, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """SinhaMaloDeb2014TP10 (nonconvex lower level; x, y in R^10).

        min_x ||x - 1||^2 + ||y||^2   s.t.  y in argmin_{y in [-pi, pi]^10} exp(W(x * y)),
        W as in TP9, x * y entrywise.

    Start: x0 = (0.5, ..., 0.5), y0 = (1, ..., 1) (BOLIB's (0, 0) makes G flat in y).

    Verified optimum: F* = 0 at x* = (1, ..., 1), y* = 0 (BOLIB: 0, agrees). W(x * y) >= 0 =
    W(0), so y = 0 minimises G(x, .) for every x; F >= 0 with equality only at (1, 0).
    """
    n = 10
    return _bolib("SinhaMaloDeb2014TP10", _sinha_f, _sinha_tp10_g, x0=[0.5] * n, y0=[1.0] * n, x_bounds=None,
                  y_bounds=(-math.pi, math.pi), x_star=[1.0] * n, y_star=[0.0] * n, F_star=0.0, literature=0.0,
                  lower_level="nonconvex", after="Sinha, Malo & Deb (2014), TP10", lower_solution=_zeros_like,
                  device=device, dtype=dtype)


BOLIB_PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {
    "AllendeStill2013": allende_still_2013,
    "DeSilva1978": de_silva_1978,
    "FalkLiu1995": falk_liu_1995,
    "HatzEtal2013": hatz_etal_2013,
    "HendersonQuandt1958": henderson_quandt_1958,
    "LamparielloSagratella2017Ex32": lampariello_sagratella_2017_ex32,
    "MacalHurter1997": macal_hurter_1997,
    "DempeEtal2012": dempe_etal_2012,
    "LucchettiEtal1987": lucchetti_etal_1987,
    "MitsosBarton2006Ex38": mitsos_barton_2006_ex38,
    "MorganPatrone2006a": morgan_patrone_2006a,
    "Yezza1996Ex31": yezza_1996_ex31,
    "KleniatiAdjiman2014Ex3": kleniati_adjiman_2014_ex3,
    "Mirrlees1999": mirrlees_1999,
    "MitsosBarton2006Ex310": mitsos_barton_2006_ex310,
    "MitsosBarton2006Ex311": mitsos_barton_2006_ex311,
    "MitsosBarton2006Ex312": mitsos_barton_2006_ex312,
    "MitsosBarton2006Ex313": mitsos_barton_2006_ex313,
    "MitsosBarton2006Ex314": mitsos_barton_2006_ex314,
    "MitsosBarton2006Ex315": mitsos_barton_2006_ex315,
    "MitsosBarton2006Ex316": mitsos_barton_2006_ex316,
    "MitsosBarton2006Ex317": mitsos_barton_2006_ex317,
    "MitsosBarton2006Ex318": mitsos_barton_2006_ex318,
    "MitsosBarton2006Ex319": mitsos_barton_2006_ex319,
    "MitsosBarton2006Ex320": mitsos_barton_2006_ex320,
    "MitsosBarton2006Ex321": mitsos_barton_2006_ex321,
    "MitsosBarton2006Ex324": mitsos_barton_2006_ex324,
    "PaulaviciusAdjiman2017a": paulavicius_adjiman_2017a,
    "PaulaviciusAdjiman2017b": paulavicius_adjiman_2017b,
    "SinhaMaloDeb2014TP9": sinha_malo_deb_2014_tp9,
    "SinhaMaloDeb2014TP10": sinha_malo_deb_2014_tp10,
}


# ----- families ---------------------------------------------------------------------------------------
def _quadratic_upper(x: Tensor, y: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    """f(x, y) = 1/2 ||x - a||^2 + 1/2 ||y - b||^2."""
    return 0.5 * ((x - a) ** 2).sum(-1) + 0.5 * ((y - b) ** 2).sum(-1)


def _least_squares_lower(x: Tensor, y: Tensor, *, P: Tensor) -> Tensor:
    """g(x, y) = 1/2 ||P y - x||^2."""
    return 0.5 * ((y @ P.T - x) ** 2).sum(-1)


def _pseudo_huber_lower(x: Tensor, y: Tensor, *, A: Tensor, B: Tensor) -> Tensor:
    """g(x, y) = sum_i sqrt(1 + r_i^2) - 1, r = A y - B x."""
    r = y @ A.T - x @ B.T
    return (torch.sqrt(1 + r ** 2) - 1).sum(-1)


def _linear_solution(x: Tensor, *, M: Tensor) -> Tensor:
    return x @ M.T


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


def continuum_problem(seed: int = 0, dim_x: int = 3, dim_y: int = 5, rank: int = 2, *, kind: str = "least_squares",
                      device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """A convex lower level whose solutions form an affine set, with the optimistic answer in closed form.

        min_x 1/2 ||x - a||^2 + 1/2 ||y - b||^2   s.t.  y in argmin_y g(x, y),
        kind="least_squares":  g = 1/2 ||P y - x||^2,                 P in R^{dim_x x dim_y} of rank `rank`;
        kind="pseudo_huber":   g = sum_i sqrt(1 + (A y - B x)_i^2) - 1,  A in R^{rank x dim_y} of full rank.

    With M = P^+ (least squares) or M = A^+ B (pseudo-Huber, where A y = B x is solvable) the
    solution set is S(x) = M x + N, N the null space of P or A (dimension dim_y - rank). The
    optimistic choice in S(x) is the projection of b: y(x) = M x + Pi_N b; as the range of M
    is orthogonal to N,

        x* = (I + M^T M)^{-1} (a + M^T b),   y* = M x* + Pi_N b,   F* = f(x*, y*).

    A solver that only drives g down lands anywhere in S(x), usually not at y*. Start: x0 = 0,
    y0 = 0. Data from `seed`: singular values in [1, 3], a and b standard normal.

    Args:
        seed: seed of the data (default 0).
        dim_x: size of x (default 3).
        dim_y: size of y (default 5).
        rank: rank of P or A, between 1 and dim_y - 1 (default 2; for least squares also <= dim_x).
        kind: "least_squares" (default) or "pseudo_huber".
        device: placement (default CPU).
        dtype: placement (float64 by default).

    Example:
        >>> p = continuum_problem(seed=1)
        >>> success(p, p.info["x_star"], p.info["y_star"])["success"]
        True
    """
    checks.integer("dim_x", dim_x, 1)
    checks.integer("dim_y", dim_y, 2)
    if kind not in ("least_squares", "pseudo_huber"):
        raise ValueError(f"Invalid kind: {kind!r} (expected 'least_squares' or 'pseudo_huber')")
    top = dim_y - 1 if kind == "pseudo_huber" else min(dim_x, dim_y - 1)
    checks.integer("rank", rank, 1)
    if rank > top:
        raise ValueError(f"Invalid rank: {rank} (expected <= {top} for kind={kind!r}, dim_x={dim_x}, dim_y={dim_y}: "
                         f"the lower level must have a continuum of solutions)")
    placement = _placement(device, dtype)
    gen = _generator(seed)
    V = _orthonormal(dim_y, rank, gen)
    s = 1 + 2 * torch.rand(rank, generator=gen, dtype=torch.float64)
    a = torch.randn(dim_x, generator=gen, dtype=torch.float64)
    b = torch.randn(dim_y, generator=gen, dtype=torch.float64)
    if kind == "least_squares":
        U = _orthonormal(dim_x, rank, gen)
        P = U @ torch.diag(s) @ V.T
        M = V @ torch.diag(1 / s) @ U.T
        data = {"P": P}
    else:
        U = _orthonormal(rank, rank, gen)
        A = U @ torch.diag(s) @ V.T
        B = torch.randn(rank, dim_x, generator=gen, dtype=torch.float64)
        M = V @ torch.diag(1 / s) @ U.T @ B
        data = {"A": A, "B": B}
    null = torch.eye(dim_y, dtype=torch.float64) - V @ V.T
    x_star = torch.linalg.solve(torch.eye(dim_x, dtype=torch.float64) + M.T @ M, a + M.T @ b)
    y_star = M @ x_star + null @ b
    F_star = float(_quadratic_upper(x_star, y_star, a=a, b=b))
    move = {k: v.to(**placement) for k, v in data.items()}
    lower = partial(_least_squares_lower, **move) if kind == "least_squares" else partial(_pseudo_huber_lower, **move)
    info = {"F_star": F_star, "x_star": x_star.to(**placement), "y_star": y_star.to(**placement),
            "source": "constructed: a continuum of lower-level solutions (bilevel.problems.bolib)",
            "lower_level": "convex, continuum of solutions", "verified": True, "seed": seed, "kind": kind,
            "rank": rank, "null_dim": dim_y - rank, "lower_solution": partial(_linear_solution, M=M.to(**placement))}
    problem = BilevelProblem(partial(_quadratic_upper, a=a.to(**placement), b=b.to(**placement)), lower,
                             torch.zeros(dim_x, **placement), torch.zeros(dim_y, **placement),
                             name=f"continuum-{kind.replace('_', '-')}", info=info)
    return _with_metrics(problem)


def _scaled_quadratic_upper(x: Tensor, y: Tensor, *, H: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """f(x, y) = scale (1/2 (x - a)^T H (x - a) + 1/2 ||y - b||^2)."""
    d = x - a
    return scale * (0.5 * ((d @ H) * d).sum(-1) + 0.5 * ((y - b) ** 2).sum(-1))


def _scaled_quadratic_lower(x: Tensor, y: Tensor, *, Q: Tensor, B: Tensor, scale: float) -> Tensor:
    """g(x, y) = scale (1/2 y^T Q y - y^T B x)."""
    return scale * (0.5 * ((y @ Q) * y).sum(-1) - (y * (x @ B.T)).sum(-1))


def _spd(n: int, cond: float, gen: torch.Generator) -> Tensor:
    """A symmetric positive definite n x n matrix with eigenvalues spread evenly over [1, cond]."""
    U = _orthonormal(n, n, gen)
    eig = torch.linspace(1.0, cond, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return U @ torch.diag(eig) @ U.T


def quadratic_problem(seed: int = 0, dim_x: int = 3, dim_y: int = 4, cond: float = 10.0, scale_f: float = 1.0,
                      scale_g: float = 1.0, *, device: Any = None,
                      dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """A strongly convex quadratic bilevel problem with a closed-form answer, at any condition and scale.

        min_x s_f (1/2 (x - a)^T H (x - a) + 1/2 ||y - b||^2)   s.t.  y in argmin_y s_g (1/2 y^T Q y - y^T B x),

    H (dim_x x dim_x) and Q (dim_y x dim_y) symmetric with eigenvalues spread over [1, cond];
    s_f = scale_f, s_g = scale_g. y(x) = M x with M = Q^{-1} B, and

        x* = (H + M^T M)^{-1} (H a + M^T b),   y* = M x*,   F* = f(x*, y*),

    whatever the scales: a method whose defaults are scale-free finds the same x* at
    s_f, s_g in [1e-2, 1e4]. `success` measures the upper error relative to max(s_f, |F*|) and
    the lower gap in units of s_g (info f_scale, g_scale). Start: x0 = 0, y0 = 0.

    Args:
        seed: seed of H's and Q's eigenvectors, B, a, b (default 0).
        dim_x: size of x (default 3).
        dim_y: size of y (default 4).
        cond: condition number of H and Q, >= 1 (default 10).
        scale_f: positive factor of f (default 1).
        scale_g: positive factor of g (default 1).
        device: placement (default CPU).
        dtype: placement (float64 by default).

    Example:
        >>> p = quadratic_problem(cond=1000.0, scale_f=1e4, scale_g=1e-2)
        >>> success(p, p.info["x_star"], p.info["y_star"])["success"]
        True
    """
    checks.integer("dim_x", dim_x, 1)
    checks.integer("dim_y", dim_y, 1)
    cond = checks.number("cond", cond, minimum=1)
    scale_f = checks.number("scale_f", scale_f, positive=True)
    scale_g = checks.number("scale_g", scale_g, positive=True)
    placement = _placement(device, dtype)
    gen = _generator(seed)
    H, Q = _spd(dim_x, cond, gen), _spd(dim_y, cond, gen)
    B = torch.randn(dim_y, dim_x, generator=gen, dtype=torch.float64)
    a = torch.randn(dim_x, generator=gen, dtype=torch.float64)
    b = torch.randn(dim_y, generator=gen, dtype=torch.float64)
    M = torch.linalg.solve(Q, B)
    x_star = torch.linalg.solve(H + M.T @ M, H @ a + M.T @ b)
    y_star = M @ x_star
    F_star = float(_scaled_quadratic_upper(x_star, y_star, H=H, a=a, b=b, scale=scale_f))
    H, Q, B, a, b = (t.to(**placement) for t in (H, Q, B, a, b))
    info = {"F_star": F_star, "x_star": x_star.to(**placement), "y_star": y_star.to(**placement),
            "source": "constructed: strongly convex quadratic (bilevel.problems.bolib)",
            "lower_level": "strongly convex quadratic", "verified": True, "seed": seed, "cond": cond,
            "f_scale": scale_f, "g_scale": scale_g, "lower_solution": partial(_linear_solution, M=M.to(**placement))}
    problem = BilevelProblem(partial(_scaled_quadratic_upper, H=H, a=a, b=b, scale=scale_f),
                             partial(_scaled_quadratic_lower, Q=Q, B=B, scale=scale_g),
                             torch.zeros(dim_x, **placement), torch.zeros(dim_y, **placement),
                             name="quadratic-scaled", info=info)
    return _with_metrics(problem)


def _ring_lower(x: Tensor, y: Tensor) -> Tensor:
    """g(x, y) = 1/4 (||y||^2 - 1 - ||x||^2)^2."""
    return 0.25 * ((y ** 2).sum(-1) - 1 - (x ** 2).sum(-1)) ** 2


def _ring_solution(x: Tensor, *, direction: Tensor) -> Tensor:
    return torch.sqrt(1 + (x ** 2).sum(-1, keepdim=True)) * direction


def _double_well_lower(x: Tensor, y: Tensor) -> Tensor:
    """g(x, y) = sum_i 1/4 (y_i^2 - 1)^2 - x_i y_i."""
    return (0.25 * (y ** 2 - 1) ** 2 - x * y).sum(-1)


_WELL = 3 * math.sqrt(3) / 2  # y^3 - y = u has three real roots iff _WELL |u| <= 1


def _outer_root(u: Tensor) -> Tensor:
    """The largest root of y^3 - y = u for u >= 0 (trigonometric / hyperbolic form of Cardano's)."""
    w = _WELL * u
    trig = torch.cos(torch.acos(w.clamp(max=1.0)) / 3)
    hyper = torch.cosh(torch.acosh(w.clamp(min=1.0)) / 3)
    return (2 / math.sqrt(3)) * torch.where(w <= 1, trig, hyper)


def _double_well_solution(x: Tensor) -> Tensor:
    """The global minimiser of g(x, .): the outer root on the side of x (+1 at the tie x_i = 0)."""
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return sign * _outer_root(x.abs())


def _double_well_well(x: Tensor, side: Tensor) -> Tensor:
    """The minimiser of g(x, .) in the well on `side` (+1 or -1): side times the positive well at
    tilt t = side x, which is the outer root for t >= 0 and the inner well's root for
    -2/(3 sqrt 3) < t < 0 (g(y; x) = g(-y; -x)); where that well has vanished, the other one."""
    t = side * x
    w = (_WELL * t.abs()).clamp(max=1.0)
    against = -(2 / math.sqrt(3)) * torch.cos(torch.acos(w) / 3 - 4 * math.pi / 3)
    positive = torch.where(t >= 0, _outer_root(t.clamp(min=0.0)), against)
    return torch.where((t >= 0) | (_WELL * t.abs() < 1), side * positive, _double_well_solution(x))


def _double_well_coordinate(a: float, b: float) -> tuple[float, float, float]:
    """min over x of 1/2 (x - a)^2 + 1/2 (y(x) - b)^2 with y(x) the global lower-level minimiser:
    on each branch (x >= 0 with the right well, x <= 0 with the left; the closures, since at
    x = 0 both wells are optimal) a grid of 20001 points and golden-section polish."""
    best = None
    for sign in (1.0, -1.0):
        def phi(x: Tensor) -> Tensor:
            return 0.5 * (x - a) ** 2 + 0.5 * (sign * _outer_root(x.abs()) - b) ** 2
        reach = abs(a) + math.sqrt(2 * float(phi(torch.zeros((), dtype=torch.float64)))) + 0.1
        xs = sign * torch.linspace(0.0, reach, 20001, dtype=torch.float64)
        j = int(phi(xs).argmin())
        lo, hi = sorted((float(xs[max(j - 1, 0)]), float(xs[min(j + 1, len(xs) - 1)])))
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(100):
            c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
            if float(phi(torch.tensor(c, dtype=torch.float64))) <= float(phi(torch.tensor(d, dtype=torch.float64))):
                hi = d
            else:
                lo = c
        x = (lo + hi) / 2
        if abs(x) < 1e-12:  # the closure's end: the tie x = 0, where the optimistic choice is this branch's well
            x = 0.0
        at = torch.tensor(x, dtype=torch.float64)
        candidate = (float(phi(at)), x, sign * float(_outer_root(at.abs())))
        if best is None or candidate[0] < best[0]:
            best = candidate
    return best


def _ring_radius(alpha: float, beta: float) -> float:
    """The root s >= 0 of 2 s - alpha - beta s / sqrt(1 + s^2) (unique when beta < 2), by bisection."""
    lo, hi = 0.0, alpha + beta
    for _ in range(200):
        mid = (lo + hi) / 2
        if 2 * mid - alpha - beta * mid / math.sqrt(1 + mid * mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def nonconvex_problem(seed: int = 0, kind: str = "ring", dim_x: int = 1, dim_y: int = 2, *, device: Any = None,
                      dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Nonconvex lower levels with the global optimistic answer known.

    Both kinds have f = 1/2 ||x - a||^2 + 1/2 ||y - b||^2, x and y free.

    kind="ring" (dim_y >= 2): g = 1/4 (||y||^2 - 1 - ||x||^2)^2. Its solution set is the sphere
    ||y|| = r(x) = sqrt(1 + ||x||^2) (a nonconvex continuum); y = 0 is a stationary point that
    is no minimiser (`info["lower_stationary_point"]`). The optimistic y is r(x) b/||b||, so
    F = 1/2 ||x - a||^2 + 1/2 (r(x) - ||b||)^2, least along a: x* = s a/||a|| with s the root
    of 2s - ||a|| - ||b|| s / sqrt(1 + s^2) = 0, unique because ||b|| < 2 (the left side then
    increases), found by bisection. ||a|| is drawn in [0.3, 0.8], ||b|| in [1.6, 1.9]. Start:
    x0 = 0, y0 = -b/(2||b||) (inside the sphere, on the far side).

    kind="double-well" (dim_y = dim_x): g = sum_i 1/4 (y_i^2 - 1)^2 - x_i y_i, a tilted
    double well per coordinate. For x_i > 0 the right well (the largest root of
    y^3 - y = x_i) is the global minimiser, for x_i < 0 the left one, and at x_i = 0 both
    (y_i = +-1); where |x_i| < 2/(3 sqrt 3) the other well is a non-global local minimiser
    (`info["lower_local_minimiser"]`: the other well's minimiser at `x*`; at a tie `x*_i = 0` it
    is as good for g, worse for f). The problem separates by coordinate; each is a
    one-dimensional minimisation of 1/2 (x - a_i)^2 + 1/2 (y(x) - b_i)^2 on both branches,
    done here by a 20001-point grid and golden-section polish (and checked by a brute force
    in tests/test_bolib.py). a_i in [-0.3, 0.3], |b_i| in [0.8, 1.5] with a random sign.
    When a_i and b_i pull to opposite sides the optimum often sits at the tie x*_i = 0, where
    only the optimistic choice y*_i = sign(b_i) attains F* (SUITE's "nonconvex/double-well-tie").
    Start: x0 = a, y0 = -sign(b) (the well b does not favour).

    Args:
        seed: seed of a and b (default 0).
        kind: "ring" (default) or "double-well".
        dim_x: size of x (default 1).
        dim_y: size of y (default 2).
        device: placement (default CPU).
        dtype: placement (float64 by default).

    Example:
        >>> p = nonconvex_problem(kind="double-well", dim_x=2, dim_y=2)
        >>> success(p, p.info["x_star"], p.info["lower_local_minimiser"])["success"]
        False
    """
    if kind not in ("ring", "double-well"):
        raise ValueError(f"Invalid kind: {kind!r} (expected 'ring' or 'double-well')")
    checks.integer("dim_x", dim_x, 1)
    checks.integer("dim_y", dim_y, 2 if kind == "ring" else 1)
    if kind == "double-well" and dim_y != dim_x:
        raise ValueError(f"Invalid dim_y: {dim_y} (expected dim_y == dim_x = {dim_x} for kind='double-well')")
    placement = _placement(device, dtype)
    gen = _generator(seed)
    if kind == "ring":
        a = torch.randn(dim_x, generator=gen, dtype=torch.float64)
        b = torch.randn(dim_y, generator=gen, dtype=torch.float64)
        alpha, beta = (float(lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64))
                       for lo, hi in ((0.3, 0.8), (1.6, 1.9)))
        a, b = alpha * a / a.norm(), beta * b / b.norm()
        s = _ring_radius(alpha, beta)
        radius = math.sqrt(1 + s * s)
        x_star, y_star = s * a / alpha, radius * b / beta
        F_star = 0.5 * (s - alpha) ** 2 + 0.5 * (radius - beta) ** 2
        lower, solution = _ring_lower, partial(_ring_solution, direction=(b / beta).to(**placement))
        x0, y0 = torch.zeros(dim_x, dtype=torch.float64), -0.5 * b / beta
        extra = {"lower_stationary_point": torch.zeros(dim_y, **placement)}
        lower_level = "nonconvex, continuum of solutions (a sphere)"
    else:
        a = -0.3 + 0.6 * torch.rand(dim_x, generator=gen, dtype=torch.float64)
        b = (0.8 + 0.7 * torch.rand(dim_x, generator=gen, dtype=torch.float64)) * torch.where(
            torch.rand(dim_x, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
        parts = [_double_well_coordinate(float(a[i]), float(b[i])) for i in range(dim_x)]
        F_star = sum(p[0] for p in parts)
        x_star = torch.tensor([p[1] for p in parts], dtype=torch.float64)
        y_star = torch.tensor([p[2] for p in parts], dtype=torch.float64)
        lower, solution = _double_well_lower, _double_well_solution
        x0, y0 = a.clone(), -torch.sign(b)
        extra = {"lower_local_minimiser": _double_well_well(x_star, -torch.sign(y_star)).to(**placement)}
        lower_level = "nonconvex, two wells"
    info = {"F_star": float(F_star), "x_star": x_star.to(**placement), "y_star": y_star.to(**placement),
            "source": f"constructed: {kind} lower level (bilevel.problems.bolib)", "lower_level": lower_level,
            "verified": True, "seed": seed, "kind": kind, "lower_solution": solution, **extra}
    problem = BilevelProblem(partial(_quadratic_upper, a=a.to(**placement), b=b.to(**placement)), lower,
                             x0.to(**placement), y0.to(**placement), name=f"nonconvex-{kind}", info=info)
    return _with_metrics(problem)


# ----- the registry -------------------------------------------------------------------------------------
def _named(name: str, builder: Callable[..., BilevelProblem], *args: Any, **kwargs: Any) -> BilevelProblem:
    return replace(builder(*args, **kwargs), name=name)


def _scale_name(v: float) -> str:
    return {1e-2: "1e-2", 1.0: "1", 1e4: "1e4"}[v]


_CONTINUUM = [("least_squares", 0, (2, 3, 1)), ("least_squares", 1, (3, 5, 2)), ("least_squares", 2, (4, 4, 2)),
              ("least_squares", 3, (1, 3, 1)), ("least_squares", 4, (5, 8, 3)), ("pseudo_huber", 0, (2, 3, 1)),
              ("pseudo_huber", 1, (3, 5, 2)), ("pseudo_huber", 2, (1, 2, 1)), ("pseudo_huber", 3, (4, 6, 3)),
              ("pseudo_huber", 4, (2, 5, 2))]


def _build_suite() -> dict[str, Callable[[], BilevelProblem]]:
    suite: dict[str, Callable[[], BilevelProblem]] = {f"bolib/{n}": b for n, b in BOLIB_PROBLEMS.items()}
    for i, (kind, seed, (dx, dy, rank)) in enumerate(_CONTINUUM):
        suite[f"continuum/{i}"] = partial(_named, f"continuum/{i}", continuum_problem, seed, dx, dy, rank, kind=kind)
    pairs = [(c, s, s) for c in (1, 10, 100, 1000) for s in (1e-2, 1.0, 1e4)] + [(100, 1e-2, 1e4), (100, 1e4, 1e-2)]
    for cond, sf, sg in pairs:
        tail = f"scale{_scale_name(sf)}" if sf == sg else f"f{_scale_name(sf)}-g{_scale_name(sg)}"
        name = f"quadratic/cond{cond}-{tail}"
        suite[name] = partial(_named, name, quadratic_problem, 0, cond=float(cond), scale_f=sf, scale_g=sg)
    for name, seed, kind, dx, dy in (("nonconvex/ring", 0, "ring", 1, 2), ("nonconvex/ring-5d", 1, "ring", 3, 5),
                                     ("nonconvex/double-well", 1, "double-well", 1, 1),
                                     ("nonconvex/double-well-4d", 5, "double-well", 4, 4),
                                     ("nonconvex/double-well-tie", 0, "double-well", 1, 1)):
        suite[name] = partial(_named, name, nonconvex_problem, seed, kind, dx, dy)
    return suite


SUITE: dict[str, Callable[[], BilevelProblem]] = _build_suite()
"""Stable name -> zero-argument builder: "bolib/<BOLIB name>" (31), "continuum/0".."continuum/9",
"quadratic/cond{1,10,100,1000}-scale{1e-2,1,1e4}" and two mixed scales, "nonconvex/ring",
"nonconvex/ring-5d", "nonconvex/double-well", "nonconvex/double-well-4d" (two wells at x*, the
other one a trap), "nonconvex/double-well-tie" (x* at the tie of the wells)."""

__all__ = ["BOLIB_PROBLEMS", "SUITE", "continuum_problem", "lower_level_min", "nonconvex_problem",
           "quadratic_problem", "success"] + [b.__name__ for b in BOLIB_PROBLEMS.values()]
