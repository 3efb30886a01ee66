"""Data hyper-cleaning (the seed paper's section 5): learn per-sample weights of a corrupted
training set so that a classifier trained on the weighted set does well on clean validation data.

    min_x  (1/N_val) sum_{val} CE(model_y(a_i), b_i)
    s.t.   y in argmin_y (1/N_tr) sum_{train} sigmoid(x_i) CE(model_y(a_i), b~_i) + wd ||y||^2

x in R^{N_tr} (one weight per training sample, each sample weighted by its own x_i), y the
classifier: a linear map (d x 10, no bias) or a one-hidden-layer ReLU network whose
parameters travel as one flat vector.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import checks
from ..core.data import check_shard, shard_range
from ..core.flat_module import FlatModule
from ..core.lower import minimize
from ..core.oracles import Autograd, Oracle
from ..core.problem import BilevelProblem
from . import datasets
from .spec import solved_flag

NUM_CLASSES = 10
DEFAULT_SPLITS = {"mnist5k": (2000, 1000, 2000)}
FULL_SPLITS = (20000, 5000, 10000)


class Classifier:
    """logits(y, features) for the linear model (y of shape (d, 10)) or the MLP (flat y)."""

    def __init__(self, model: str, n_features: int, hidden: int, generator: torch.Generator):
        self.model = model
        if model == "linear":
            self.y0 = torch.zeros(n_features, NUM_CLASSES)
            self.net = None
        else:
            torch_state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
            module = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
            torch.random.set_rng_state(torch_state)
            self.net = FlatModule(module)
            self.y0 = self.net.flatten()

    def __call__(self, y: Tensor, features: Tensor) -> Tensor:
        return features @ y if self.net is None else self.net(y, features)

    def to(self, device: Any, dtype: torch.dtype) -> "Classifier":
        self.y0 = self.y0.to(device=device, dtype=dtype)
        if self.net is not None:
            self.net.module.to(device=device, dtype=dtype)
        return self


def weighted_loss(classifier: Classifier, y: Tensor, features: Tensor, labels: Tensor, weights: Tensor,
                  weight_decay: float, n_total: int | None = None) -> Tensor:
    """(1/N) sum_i weights_i CE_i(y) + weight_decay ||y||^2, each sample weighted by its own weight.

    N = n_total when the samples are one rank's shard of n_total (default: len(labels)).
    """
    per_sample = F.cross_entropy(classifier(y, features), labels, reduction="none")
    if per_sample.shape != weights.shape:
        raise ValueError(f"Invalid weights: shape {tuple(weights.shape)} (expected {tuple(per_sample.shape)}, "
                         f"one weight per sample)")
    return (weights * per_sample).sum() / (n_total or len(labels)) + weight_decay * (y ** 2).sum()


def train(classifier: Classifier, features: Tensor, labels: Tensor, weights: Tensor, weight_decay: float,
          steps: int) -> Tensor:
    """Minimise the weighted loss over y from the classifier's initial y0 by L-BFGS (deterministic;
    `bilevel.core.lower.minimize`, at most `steps` iterations)."""
    oracle = Oracle(Autograd(lambda x, y: (y ** 2).sum(),
                             lambda x, y: weighted_loss(classifier, y, features, labels, weights, weight_decay)))
    dummy = torch.zeros(1, dtype=features.dtype, device=features.device)
    return minimize(oracle.lower_objective(dummy), classifier.y0, max_iter=steps, tol=1e-7).y


def accuracy(classifier: Classifier, y: Tensor, features: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose arg-max logit is the label."""
    with torch.no_grad():
        return float((classifier(y, features).argmax(dim=1) == labels).to(torch.float64).mean())


def hyper_cleaning(dataset: str = "mnist5k", model: str = "linear", pca: int | None = None,
                   corruption: float = 0.25, n_train: int | None = None, n_val: int | None = None,
                   n_test: int | None = None, seed: int = 0, *, hidden: int = 50, weight_decay: float = 1e-3,
                   corruption_model: str = "uniform", data_dir: str | None = None, download: bool = False,
                   retrain_steps: int = 100, retrain_every_row: bool = False, rank: int = 0, world_size: int = 1,
                   minibatch: bool = False, device: Any = None, dtype: torch.dtype = torch.float32) -> BilevelProblem:
    """Data hyper-cleaning on MNIST-type data.

    Args:
        dataset: "mnist5k" (embedded 5000-image sample, default), "mnist" or "fashion-mnist".
        model: "linear" (y is d x 10, no bias) or "mlp" (one hidden ReLU layer, flat y).
        pca: number of principal components (fitted on the training split only), or None
            for the raw 784 pixels. The paper's low-dimensional setting uses 82.
        corruption: fraction of training labels corrupted. Default 0.25.
        n_train: training split size. Default 2000 on mnist5k, 20000 otherwise. The split
            is a seeded shuffle.
        n_val: validation split size. Default 1000 on mnist5k, 5000 otherwise.
        n_test: test split size. Default 2000 on mnist5k, 10000 otherwise.
        seed: seeds the split, the corruption and the MLP's initial parameters.
        hidden: hidden width of the MLP. Default 50.
        weight_decay: the lower level's ||y||^2 weight. Default 0.001.
        corruption_model: "uniform" (a random wrong label) or "permutation" (whole classes
            relabelled, as the seed's authors did).
        data_dir: where the IDX files are (see `bilevel.problems.datasets.load`).
        download: fetch them with torchvision when they are missing (see `bilevel.problems.datasets.load`).
        retrain_steps: L-BFGS iterations of the retraining behind `retrained_accuracy`.
        retrain_every_row: retrain at every logged row (a metric) instead of at the final row
            and the verified answer only (a final metric, the default: a retraining costs as
            much as dozens of iterations).
        rank: for data-parallel runs (`solve(..., distributed=True)`): f and g are this
            rank's parts, over its blocks `bilevel.core.data.shard_range` of the training and
            validation splits, of sums over ranks (scaled by the full split sizes; weight
            decay on rank 0). x, y and the metrics stay whole. Default 0.
        world_size: the number of ranks. Default 1.
        minibatch: build the problem with data (`bilevel.core.data`) so that `solve(..., batch_size=B)`
            runs on minibatches: `upper_data` the validation (features, labels), `lower_data` the
            training sample indices 0..n_train-1 (a batch of indices i reads a_i, b~_i and x_i, so
            g on a batch is (1/|B|) sum_{i in B} sigmoid(x_i) CE_i(y) + weight_decay ||y||^2); on all
            the data f and g are the default's. Not with world_size > 1. Default False.
        device: where the data live (placed once). Default CPU.
        dtype: the data's floating dtype. Default float32.

    The problem's `info` records the split sizes, the corruption rate and model, and the
    corrupted-sample mask (True where the label was changed). Its `metrics` report
    `val_loss`, `test_accuracy` (of the running y), `corruption_auc` (ROC AUC of x as a score
    of cleanliness) and `retrained_accuracy` (test accuracy of a classifier retrained from
    its initial parameters with the learned weights sigmoid(x) fixed: the value of the
    bilevel objective that the running y's accuracy does not show).

    Example:
        >>> problem = hyper_cleaning(pca=82, seed=1)
        >>> problem.info["n_train"], problem.info["corrupted_mask"].float().mean().item()
        (2000, 0.25)
    """
    if model not in ("linear", "mlp"):
        raise ValueError(f"Invalid model: {model!r} (expected 'linear' or 'mlp')")
    if pca is not None:
        checks.integer("pca", pca, 1)
    checks.integer("hidden", hidden, 1)
    checks.integer("retrain_steps", retrain_steps, 1)
    if not isinstance(retrain_every_row, bool):
        raise TypeError(f"Invalid retrain_every_row: {retrain_every_row!r} (expected True or False)")
    checks.integer("seed", seed, 0)
    check_shard(rank, world_size)
    checks.number("weight_decay", weight_decay, minimum=0)
    device, dtype = checks.device("device", device), checks.floating_dtype("dtype", dtype)
    images, labels = datasets.load(dataset, data_dir=data_dir, download=download)
    sizes = list(DEFAULT_SPLITS.get(dataset, FULL_SPLITS))
    for i, (name, value) in enumerate((("n_train", n_train), ("n_val", n_val), ("n_test", n_test))):
        if value is not None:
            checks.integer(name, value, 1)
            sizes[i] = value
    if sum(sizes) > len(labels):
        raise ValueError(f"Invalid n_train/n_val/n_test: {sizes} (they add up to {sum(sizes)}, but {dataset!r} "
                         f"has {len(labels)} samples)")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen).numpy()
    parts = np.split(order[: sum(sizes)], np.cumsum(sizes)[:-1])
    features = [images[idx] for idx in parts]
    if pca is not None:
        if pca > min(sizes[0], images.shape[1]):
            raise ValueError(f"Invalid pca: {pca} (expected at most min(n_train, {images.shape[1]}))")
        from sklearn.decomposition import PCA
        # fitted on the training split only, in float64 by a full (LAPACK) SVD: the randomized
        # solver, or float32, gives features that differ with the number of BLAS threads
        # (measured: 1e-4 and 2e-6), so the same seed would not give the same problem
        projection = PCA(n_components=pca, svd_solver="full").fit(features[0].astype(np.float64))
        features = [projection.transform(a.astype(np.float64)) for a in features]   # cast once below
    a_tr, a_val, a_te = (torch.as_tensor(a, dtype=dtype, device=device) for a in features)
    b_tr, b_val, b_te = (torch.as_tensor(labels[idx]) for idx in parts)
    b_noisy, corrupted = datasets.corrupt_labels(b_tr, corruption, NUM_CLASSES, gen, corruption_model)
    b_noisy, b_val, b_te, b_tr = (t.to(device) for t in (b_noisy, b_val, b_te, b_tr))
    classifier = Classifier(model, a_tr.shape[1], hidden, gen).to(device, dtype)

    tr, va = shard_range(sizes[0], rank, world_size), shard_range(sizes[1], rank, world_size)

    def f(x: Tensor, y: Tensor) -> Tensor:
        if world_size == 1:
            return F.cross_entropy(classifier(y, a_val), b_val)
        return F.cross_entropy(classifier(y, a_val[va]), b_val[va], reduction="sum") / sizes[1]

    def g(x: Tensor, y: Tensor) -> Tensor:
        return weighted_loss(classifier, y, a_tr[tr], b_noisy[tr], torch.sigmoid(x[tr]),
                             weight_decay if rank == 0 else 0.0, n_total=sizes[0])

    data: dict[str, Any] = {}
    if minibatch:
        if world_size > 1:
            raise ValueError(f"Invalid minibatch: True with world_size={world_size} (minibatches of a sharded "
                             f"problem are not supported)")
        every = torch.arange(sizes[0], device=device)

        def f_batch(x: Tensor, y: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
            return F.cross_entropy(classifier(y, batch[0]), batch[1])

        def g_batch(x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
            if idx is every:           # all the data: no copy of the training set
                return weighted_loss(classifier, y, a_tr, b_noisy, torch.sigmoid(x), weight_decay)
            return weighted_loss(classifier, y, a_tr[idx], b_noisy[idx], torch.sigmoid(x[idx]), weight_decay)
        f, g, data = f_batch, g_batch, {"upper_data": (a_val, b_val), "lower_data": every}

    clean = (~corrupted).numpy()
    from sklearn.metrics import roc_auc_score  # imported here, with the data, not in the first metric call

    last: dict[bytes, dict[str, float]] = {}

    def retrained(x: Tensor, y: Tensor) -> dict[str, float]:
        """Depends on x only: the final row's value serves the verified row at the same x."""
        key = x.detach().cpu().numpy().tobytes()
        if key not in last:
            weights = train(classifier, a_tr, b_noisy, torch.sigmoid(x), weight_decay, retrain_steps)
            last.clear()
            last[key] = {"retrained_accuracy": accuracy(classifier, weights, a_te, b_te)}
        return dict(last[key])

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        return {"val_loss": float(F.cross_entropy(classifier(y, a_val), b_val)),
                "test_accuracy": accuracy(classifier, y, a_te, b_te),
                "corruption_auc": float(roc_auc_score(clean, x.detach().cpu().numpy())) if 0 < clean.sum() < len(clean)
                else float("nan"),
                **(retrained(x, y) if retrain_every_row else {})}

    x0 = torch.zeros(sizes[0], dtype=dtype, device=device)
    info = {"dataset": dataset, "model": model, "pca": pca, "n_features": a_tr.shape[1], "n_train": sizes[0],
            "n_val": sizes[1], "n_test": sizes[2], "corruption": corruption, "corruption_model": corruption_model,
            "corrupted_mask": corrupted, "seed": seed, "weight_decay": weight_decay, "hidden": hidden,
            "rank": rank, "world_size": world_size, "minibatch": minibatch,
            "_data": {"classifier": classifier, "train": (a_tr, b_noisy, b_tr), "val": (a_val, b_val),
                      "test": (a_te, b_te), "retrain_steps": retrain_steps}}
    name = f"hyper-cleaning ({dataset}, {model}{', pca ' + str(pca) if pca else ''})"
    problem = BilevelProblem(f, g, x0, classifier.y0.clone(), metrics=metrics, name=name, info=info,
                             final_metrics=None if retrain_every_row else retrained, **data)
    info["reference_lines"] = lambda: reference_lines(problem)
    return problem


# the names its metrics return, for checks that should not build it (a sweep config's plot metrics)


SCORES = {"solved": "max", "retrained_gain": "max"}


def _at(problem: BilevelProblem, x: Tensor, y: Tensor) -> dict[str, float]:
    """The problem's metrics and final metrics (the retrained accuracy) at (x, y)."""
    with torch.no_grad():
        out = dict(problem.metrics(x, y))
        if problem.final_metrics is not None:
            out.update(problem.final_metrics(x, y))
    return out


def uniform_accuracy(problem: BilevelProblem) -> float:
    """The retrained accuracy at the start x0 = 0 (every weight 1/2, uniform weights): the
    reference of `evaluate`, computed once per problem and kept in its info."""
    if "uniform_retrained_accuracy" not in problem.info:
        problem.info["uniform_retrained_accuracy"] = _at(problem, problem.x0, problem.y0)["retrained_accuracy"]
    return problem.info["uniform_retrained_accuracy"]


def evaluate(problem: BilevelProblem, result: Any) -> dict[str, float]:
    """The scores of a finished run at its answer: retrained_gain, the retrained accuracy minus
    that of uniform weights (`uniform_accuracy`), and solved (1 where the gain is at least 0.03,
    3 points, the corruption AUC at least 0.9 and the run did not diverge)."""
    values = _at(problem, result.x, result.y)           # the run's retraining first: it is cached by x
    gain = values["retrained_accuracy"] - uniform_accuracy(problem)
    return {"solved": solved_flag(gain >= 0.03 and values["corruption_auc"] >= 0.9, result), "retrained_gain": gain}


def reference_lines(problem: BilevelProblem) -> dict[str, dict[str, float]]:
    """The reference accuracies as plot lines for the accuracy metrics."""
    refs = reference_accuracies(problem)
    return {"test_accuracy": refs, "retrained_accuracy": refs}


def reference_accuracies(problem: BilevelProblem) -> dict[str, float]:
    """Test accuracy of the classifier trained on the corrupted training set (every weight
    sigmoid(0) = 1/2, the start x0 = 0), on the validation set only, and on the clean training
    samples only (weight 1 on clean, 0 on corrupted: an oracle), for reference lines."""
    data = problem.info["_data"]
    classifier, steps, wd = data["classifier"], data["retrain_steps"], problem.info["weight_decay"]
    (a_tr, b_noisy, _), (a_val, b_val), (a_te, b_te) = data["train"], data["val"], data["test"]
    clean = (~problem.info["corrupted_mask"]).to(a_tr.device, a_tr.dtype)
    runs = {"train on corrupted set": (a_tr, b_noisy, torch.full_like(clean, 0.5)),
            "train on validation only": (a_val, b_val, torch.ones(len(b_val), dtype=a_tr.dtype, device=a_tr.device)),
            "train on clean samples (oracle)": (a_tr, b_noisy, clean)}
    return {label: accuracy(classifier, train(classifier, a, b, w, wd, steps), a_te, b_te)
            for label, (a, b, w) in runs.items()}
