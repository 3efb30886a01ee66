"""Hyperparameter optimisation: one L2 weight per feature, learned on a validation split.

    min_x  f(x, y) = validation loss of the model y
    s.t.   y in argmin_y g(x, y) = training loss of y + 1/2 sum_j exp(x_j) ||W_j||^2

x in R^d is the log of one L2 weight per feature (W_j is the row of the model's weights that
multiplies feature j; the intercept is not penalised), y = [W; b] the model. The data come
from scikit-learn's bundled data sets (nothing is downloaded), split by a seeded shuffle and
standardised with the training split's mean and standard deviation.

`feature_weight_decay` is a logistic (binary) or multinomial regression, `ridge_weights` the
same with least squares (whose lower level is strongly convex with a closed-form solution).
`honest_upper_value(problem, x)` re-solves the lower level at x and returns f(x, y*(x)): the
value a method's x is worth, whatever its running y. `best_shared_weight(problem)` is the
reference a per-feature search should beat: the best honest value over one shared weight.
`evaluate(problem, result)` scores a run against both (`references`).
"""
from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import checks
from ..core.lower import minimize
from ..core.oracles import Autograd, Oracle
from ..core.problem import BilevelProblem
from .spec import solved_flag

CLASSIFICATION = ("breast_cancer", "digits", "wine", "iris")
REGRESSION = ("diabetes",)
# (n_train, n_val, n_test); other data sets: half, a quarter, the rest
DEFAULT_SPLITS = {"breast_cancer": (284, 142, 143)}


def _load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets) of a data set bundled with scikit-learn (no download)."""
    import sklearn.datasets as sk
    loaders = {"breast_cancer": sk.load_breast_cancer, "digits": sk.load_digits, "wine": sk.load_wine,
               "iris": sk.load_iris, "diabetes": sk.load_diabetes}
    data = loaders[dataset]()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target)


def _splits(dataset: str, n: int, sizes: tuple[Any, Any, Any], seed: int) -> list[np.ndarray]:
    default = DEFAULT_SPLITS.get(dataset, (n // 2, n // 4, n - n // 2 - n // 4))
    sizes = [default[i] if s is None else checks.integer(name, s, 1)
             for i, (name, s) in enumerate(zip(("n_train", "n_val", "n_test"), sizes))]
    if sum(sizes) > n:
        raise ValueError(f"Invalid n_train/n_val/n_test: {sizes} (they add up to {sum(sizes)}, but {dataset!r} "
                         f"has {n} samples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.split(order[: sum(sizes)], np.cumsum(sizes)[:-1])


def _standardised(features: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """Each split standardised with the training split's mean and standard deviation (a feature
    constant on the training split is only centred)."""
    train = features[parts[0]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(features[p] - mean) / std for p in parts]


# ----- the objectives (module-level functions of tensor data, as the synthetic builders) ------
def linear_model(y: Tensor, A: Tensor) -> Tensor:
    """A W + b with y = [W; b] (W of shape (d,) or (d, K), b the last row)."""
    return A @ y[:-1] + y[-1]


def feature_penalty(x: Tensor, y: Tensor) -> Tensor:
    """1/2 sum_j exp(x_j) ||W_j||^2 (the intercept y[-1] is not penalised)."""
    W = y[:-1]
    return 0.5 * (torch.exp(x) * (W ** 2).reshape(W.shape[0], -1).sum(dim=1)).sum()


def classification_loss(y: Tensor, A: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy: logistic for a vector y (labels 0/1), softmax for a matrix y."""
    z = linear_model(y, A)
    if y.dim() == 1:
        return F.binary_cross_entropy_with_logits(z, labels)
    return F.cross_entropy(z, labels)


def squared_loss(y: Tensor, A: Tensor, labels: Tensor) -> Tensor:
    """1/2 mean (A W + b - t)^2."""
    return 0.5 * ((linear_model(y, A) - labels) ** 2).mean()


def upper_loss(x: Tensor, y: Tensor, *, loss: Callable, A: Tensor, labels: Tensor) -> Tensor:
    """f(x, y): the loss on the validation split (x does not appear)."""
    return loss(y, A, labels)


def lower_loss(x: Tensor, y: Tensor, *, loss: Callable, A: Tensor, labels: Tensor) -> Tensor:
    """g(x, y): the loss on the training split + 1/2 sum_j exp(x_j) ||W_j||^2."""
    return loss(y, A, labels) + feature_penalty(x, y)


# ----- re-solving the lower level -----------------------------------------------------------
def lbfgs_lower(g: Callable[[Tensor, Tensor], Tensor], x: Tensor, y0: Tensor, *, max_iter: int = 2000,
                tol: float = 1e-10) -> Tensor:
    """argmin_y g(x, y) from y0 by `bilevel.core.lower.minimize` (L-BFGS, deterministic), in the dtype of
    x (float64 for a tight answer), stopping when ||grad_y g|| <= tol."""
    lower = Oracle(Autograd(g, g)).lower_objective(x.detach())
    return minimize(lower, y0.detach(), tol=tol, max_iter=max_iter).y.detach()


def ridge_lower(x: Tensor, *, A: Tensor, labels: Tensor) -> Tensor:
    """The closed-form argmin_y of 1/2 mean (A W + b - t)^2 + 1/2 sum_j exp(x_j) W_j^2:
    (Abar^T Abar / n + diag(exp(x), 0)) y = Abar^T t / n with Abar = [A, 1]."""
    n, d = A.shape
    Abar = torch.cat([A, torch.ones(n, 1, dtype=A.dtype, device=A.device)], dim=1)
    penalty = torch.cat([torch.exp(x.detach()), torch.zeros(1, dtype=A.dtype, device=A.device)])
    return torch.linalg.solve(Abar.T @ Abar / n + torch.diag(penalty), Abar.T @ labels / n)


def honest_upper_value(problem: BilevelProblem, x: Tensor) -> float:
    """f(x, y(x)) with y(x) the lower level re-solved at x: what x is worth, whatever y a method holds.

    The HPO builders of this module re-solve in float64 on float64 copies of their data (ridge:
    the closed form; classification: L-BFGS from y0 to max |grad_y g| <= 1e-10). For other
    problems, L-BFGS in float64 on the problem's own f and g (which must accept float64).
    """
    resolve = problem.info.get("resolve") if isinstance(problem.info, dict) else None
    if resolve is not None:
        return float(resolve(x))
    xd = x.detach().to(torch.float64)
    y = lbfgs_lower(problem.g, xd, problem.y0.to(torch.float64))
    with torch.no_grad():
        return float(problem.f(xd, y))


def best_shared_weight(problem: BilevelProblem, grid: Any = None) -> dict[str, Any]:
    """The best honest upper value over one shared weight, x = c * ones, c on a grid.

    Args:
        problem: an HPO problem (x = log weights).
        grid: the values of c (log weights). Default 49 points from -12 to 4 (weights from
            6e-6 to 55, a factor 2.1 apart).

    Returns:
        {"value": the best honest value, "log_weight": its c, "x": c * ones, "seconds": the time
        the search took, "grid": the c values, "values": the honest value at each}.
    """
    grid = np.linspace(-12.0, 4.0, 49) if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if grid.size == 0:
        raise ValueError("Invalid grid: empty (expected at least one log weight)")
    start = time.perf_counter()
    values = [honest_upper_value(problem, torch.full_like(problem.x0, float(c))) for c in grid]
    best = int(np.argmin(values))
    return {"value": values[best], "log_weight": float(grid[best]),
            "x": torch.full_like(problem.x0, float(grid[best])), "seconds": time.perf_counter() - start,
            "grid": grid.tolist(), "values": values}


_REFERENCES: dict[tuple, dict[str, float]] = {}


def references(problem: BilevelProblem) -> dict[str, float]:
    """The honest value at the start x0 ("start") and of the best shared weight ("best_shared",
    at log weight "best_log_weight"): computed once per problem (the data set, split seed, split
    sizes and x0 identify it) and kept, since the shared-weight search re-solves the lower level
    49 times."""
    info = problem.info
    key = (problem.name, info["dataset"], info["seed"], info["n_train"], info["n_val"], info["n_test"], info["x0"])
    if key not in _REFERENCES:
        best = best_shared_weight(problem)
        _REFERENCES[key] = {"start": honest_upper_value(problem, problem.x0), "best_shared": best["value"],
                            "best_log_weight": best["log_weight"]}
    return dict(_REFERENCES[key])


SCORES = {"solved": "max", "honest_value": "min", "gap_closed": "max", "ratio_to_best_shared": "min"}


def evaluate(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """The scores of a finished run at its x: honest_value (`honest_upper_value`), gap_closed (the
    fraction of the gap from the start's honest value to the best shared weight's that it closes),
    ratio_to_best_shared (honest value / the best shared weight's; <= 1.1 is a strict target) and
    solved (1 where it closes at least half the gap and the run did not diverge)."""
    ref = references(problem)
    honest = honest_upper_value(problem, result.x)
    gap = ref["start"] - ref["best_shared"]
    return {"solved": solved_flag(honest <= (ref["start"] + ref["best_shared"]) / 2, result),
            "honest_value": honest,
            "gap_closed": (ref["start"] - honest) / gap if gap != 0 else math.nan,
            "ratio_to_best_shared": honest / ref["best_shared"] if ref["best_shared"] != 0 else math.nan}


# ----- builders -----------------------------------------------------------------------------
def _build(kind: str, dataset: str, seed: int, sizes: tuple, x0: float, device: Any, dtype: Any,
           honest_metric: bool) -> BilevelProblem:
    seed = checks.integer("seed", seed, 0)
    x0 = checks.number("x0", x0)
    device, dtype = checks.device("device", device), checks.floating_dtype("dtype", dtype)
    features, targets = _load(dataset)
    parts = _splits(dataset, len(targets), sizes, seed)
    a_tr, a_val, a_te = _standardised(features, parts)
    d = features.shape[1]
    if kind == "regression":
        t_tr = targets[parts[0]].astype(np.float64)
        mean, std = t_tr.mean(), t_tr.std()
        labels = [(targets[p].astype(np.float64) - mean) / std for p in parts]
        loss, n_classes = squared_loss, 0
        y_shape: tuple[int, ...] = (d + 1,)
    else:
        n_classes = int(targets.max()) + 1
        if n_classes == 2:
            labels, loss, y_shape = [targets[p].astype(np.float64) for p in parts], classification_loss, (d + 1,)
        else:
            labels, loss, y_shape = [targets[p].astype(np.int64) for p in parts], classification_loss, (d + 1, n_classes)

    def tensors(dt: torch.dtype, dev: Any) -> tuple[Tensor, ...]:
        out = []
        for a, t in zip((a_tr, a_val, a_te), labels):
            out.append(torch.as_tensor(a, dtype=dt, device=dev))
            out.append(torch.as_tensor(t, dtype=dt if t.dtype == np.float64 else torch.int64, device=dev))
        return tuple(out)

    A_tr, t_tr, A_val, t_val, A_te, t_te = tensors(dtype, device)
    f = partial(upper_loss, loss=loss, A=A_val, labels=t_val)
    g = partial(lower_loss, loss=loss, A=A_tr, labels=t_tr)
    x0_t = torch.full((d,), x0, dtype=dtype, device=device)
    y0_t = torch.zeros(y_shape, dtype=dtype, device=device)

    # float64 copies on the CPU for the honest value (a float32 or GPU problem is re-solved exactly too)
    B_tr, s_tr, B_val, s_val, B_te, s_te = tensors(torch.float64, "cpu")
    f64 = partial(upper_loss, loss=loss, A=B_val, labels=s_val)
    g64 = partial(lower_loss, loss=loss, A=B_tr, labels=s_tr)
    y0_64 = torch.zeros(y_shape, dtype=torch.float64)

    def resolved(x: Tensor) -> Tensor:
        xd = x.detach().to("cpu", torch.float64)
        if kind == "regression":
            return ridge_lower(xd, A=B_tr, labels=s_tr)
        return lbfgs_lower(g64, xd, y0_64)

    def resolve(x: Tensor) -> float:
        with torch.no_grad():
            return float(f64(x.detach().to("cpu", torch.float64), resolved(x)))

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        out = {"val_loss": float(f(x, y)), "test_loss": float(loss(y, A_te, t_te))}
        if honest_metric:
            out["honest_val_loss"] = resolve(x)
        if kind != "regression":
            z = linear_model(y, A_te)
            pred = (z > 0).to(t_te.dtype) if y.dim() == 1 else z.argmax(dim=1)
            out["test_accuracy"] = float((pred == t_te).to(torch.float64).mean())
        return out

    name = f"{'ridge-weights' if kind == 'regression' else 'feature-weight-decay'} ({dataset})"
    info = {"dataset": dataset, "seed": seed, "n_train": len(parts[0]), "n_val": len(parts[1]),
            "n_test": len(parts[2]), "n_features": d, "n_classes": n_classes, "x0": x0,
            "resolve": resolve, "resolved_y": resolved,
            "sklearn_C": lambda c: 1.0 / (len(parts[0]) * math.exp(c)),
            "_data": {"train": (A_tr, t_tr), "val": (A_val, t_val), "test": (A_te, t_te)}}
    return BilevelProblem(f, g, x0_t, y0_t, metrics=metrics, name=name, info=info)


def feature_weight_decay(dataset: str = "breast_cancer", seed: int = 0, *, n_train: int | None = None,
                         n_val: int | None = None, n_test: int | None = None, x0: float = 0.0,
                         honest_metric: bool = True, device: Any = None,
                         dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Per-feature L2 weights of a logistic (or multinomial) regression, tuned on validation data.

        g(x, y) = (1/n_train) sum_train CE(A_i W + b, t_i) + 1/2 sum_j exp(x_j) ||W_j||^2
        f(x, y) = (1/n_val)   sum_val   CE(A_i W + b, t_i)

    y = [W; b]: W of shape (d,) and binary cross-entropy with logits for two classes
    (breast_cancer), W of shape (d, K) and softmax cross-entropy otherwise (y of shape
    (d + 1, K)); the intercept b is not penalised. A shared weight exp(c) is scikit-learn's
    LogisticRegression(C = 1 / (n_train exp(c))) (its objective C sum CE + 1/2 ||W||^2,
    divided by C n_train); `info["sklearn_C"](c)` gives it. The softmax's intercept is
    determined only up to a common shift (f and the predictions are not).

    Args:
        dataset: "breast_cancer" (default; 30 features), "digits" (64, 10 classes),
            "wine" (13, 3 classes) or "iris" (4, 3 classes): scikit-learn's bundled copies.
        seed: seeds the split. Default 0.
        n_train: the training split's size. Default 284 for breast_cancer, otherwise half the data.
        n_val: the validation split's size. Default 142 for breast_cancer, otherwise a quarter.
        n_test: the test split's size. Default 143 for breast_cancer, otherwise the rest.
        x0: the starting log weight of every feature. Default 0 (weight 1: a strong
            regularisation, far from the best).
        honest_metric: also log `honest_val_loss`, f at the lower level re-solved at x
            (`honest_upper_value`; tens of milliseconds a logged row). Default True.
        device: where the data live. Default CPU.
        dtype: the data's floating dtype. Default float64.

    Metrics: `val_loss` (f at the running y), `test_loss`, `test_accuracy` (of the running y),
    and `honest_val_loss` (see honest_metric).

    Example:
        >>> p = feature_weight_decay(seed=0)
        >>> p.x0.shape, p.y0.shape, (p.info["n_train"], p.info["n_val"], p.info["n_test"])
        (torch.Size([30]), torch.Size([31]), (284, 142, 143))
    """
    if dataset not in CLASSIFICATION:
        raise ValueError(f"Invalid dataset: {dataset!r} (expected one of {', '.join(map(repr, CLASSIFICATION))})")
    return _build("classification", dataset, seed, (n_train, n_val, n_test), x0, device, dtype, honest_metric)


def ridge_weights(dataset: str = "diabetes", seed: int = 0, *, n_train: int | None = None,
                  n_val: int | None = None, n_test: int | None = None, x0: float = 0.0,
                  honest_metric: bool = True, device: Any = None,
                  dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Per-feature L2 weights of a least-squares regression: a lower level in closed form.

        g(x, y) = 1/2 mean_train (A_i W + b - t_i)^2 + 1/2 sum_j exp(x_j) W_j^2
        f(x, y) = 1/2 mean_val   (A_i W + b - t_i)^2

    Features and target standardised with the training split's statistics; y = [W; b].
    g is strongly convex in y for every x, with y*(x) = (Abar^T Abar / n + diag(exp(x), 0))^-1
    Abar^T t / n, Abar = [A, 1] (`info["resolved_y"](x)`).

    Args:
        dataset: "diabetes" (scikit-learn's bundled copy, 442 samples, 10 features).
        seed: seeds the split. Default 0.
        n_train: as in `feature_weight_decay` (default 221).
        n_val: as in `feature_weight_decay` (default 110).
        n_test: as in `feature_weight_decay` (default 111).
        x0: the starting log weight of every feature. Default 0.
        honest_metric: as in `feature_weight_decay`.
        device: where the data live. Default CPU.
        dtype: the data's floating dtype. Default float64.

    Metrics: `val_loss`, `test_loss`, `honest_val_loss`.
    """
    if dataset not in REGRESSION:
        raise ValueError(f"Invalid dataset: {dataset!r} (expected one of {', '.join(map(repr, REGRESSION))})")
    return _build("regression", dataset, seed, (n_train, n_val, n_test), x0, device, dtype, honest_metric)
