"""A small data hyper-cleaning problem on generated data, shardable over ranks.

Multinomial logistic regression on a Gaussian mixture whose training labels are
partly corrupted; the upper level learns one weight per training sample:

    min_x  (1/N_val) sum_j CE(W v_j + b, t_j)
    s.t.   (W, b) = y in argmin_y (1/N_tr) sum_i sigmoid(x_i) CE(W a_i + b, s_i) + c ||y||^2

Built from tensors only, so tests and benchmarks of data-parallel runs need no
dataset files; with rank/world_size each rank keeps its block of the training and
validation samples (f and g are then this rank's parts of sums over ranks, see
bilevel.distributed) and the regulariser lives on rank 0.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import checks
from ..core.data import check_shard, shard_range
from ..core.problem import BilevelProblem
from .synthetic import _generator, _placement


def toy_cleaning(seed: int = 0, *, n_train: int = 400, n_val: int = 200, n_test: int = 1000, dim: int = 10,
                 classes: int = 3, corruption: float = 0.3, reg: float = 0.001, rank: int = 0,
                 world_size: int = 1, device: Any = None, dtype: torch.dtype = torch.float64) -> BilevelProblem:
    """Hyper-cleaning of a linear classifier on a generated Gaussian mixture (shardable).

    x in R^n_train are the sample weights' logits (x0 = 0: every weight 1/2), y the
    classifier (W, b) flattened (y0 = 0). A fraction `corruption` of the training labels
    is replaced by a uniformly drawn other class; validation and test labels are clean.
    Metrics: `test_accuracy` on the (unsharded) test set and `weight_gap`, the mean
    weight of clean minus corrupted training samples.

    Args:
        seed: seed of the data. Default 0.
        n_train: training samples. Default 400.
        n_val: validation samples. Default 200.
        n_test: test samples. Default 1000.
        dim: features. Default 10.
        classes: classes. Default 3.
        corruption: fraction of corrupted training labels in [0, 1). Default 0.3.
        reg: c, the lower level's ridge coefficient. Default 0.001.
        rank: keep this rank's block of the training and validation data
            (`bilevel.core.data.shard_range`). Default 0 (with world_size 1: all of it).
        world_size: the number of ranks. Default 1.
        device: where the data live. Default CPU.
        dtype: the data's floating dtype. Default float64.

    References:
        Franceschi, Donini, Frasconi, Pontil. Forward and Reverse Gradient-Based
        Hyperparameter Optimization. ICML 2017 (data hyper-cleaning).
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("dim", dim)):
        checks.integer(name, value, 1)
    checks.integer("classes", classes, 2)
    if not (isinstance(corruption, (int, float)) and 0 <= corruption < 1):
        raise ValueError(f"Invalid corruption: {corruption!r} (expected a number in [0, 1))")
    if not (isinstance(reg, (int, float)) and reg >= 0):
        raise ValueError(f"Invalid reg: {reg!r} (expected a number >= 0)")
    check_shard(rank, world_size)
    as_data = _placement(device, dtype)

    gen = _generator(seed)
    means = 1.5 * torch.randn(classes, dim, generator=gen, dtype=torch.float64)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(classes, (n,), generator=gen)
        return means[labels] + torch.randn(n, dim, generator=gen, dtype=torch.float64), labels

    a_train, clean = sample(n_train)
    a_val, t_val = sample(n_val)
    a_test, t_test = sample(n_test)
    corrupted = torch.rand(n_train, generator=gen) < corruption
    shift = torch.randint(1, classes, (n_train,), generator=gen)
    s_train = torch.where(corrupted, (clean + shift) % classes, clean)

    tr, va = shard_range(n_train, rank, world_size), shard_range(n_val, rank, world_size)
    a_tr, a_va, a_te = a_train[tr].to(**as_data), a_val[va].to(**as_data), a_test.to(**as_data)
    device = as_data["device"]
    s_tr, t_va, t_te = s_train[tr].to(device), t_val[va].to(device), t_test.to(device)
    is_clean = (~corrupted).to(device)
    ridge = reg if rank == 0 else 0.0
    x0 = torch.zeros(n_train, **as_data)
    y0 = torch.zeros(classes * dim + classes, **as_data)

    def logits(y: Tensor, a: Tensor) -> Tensor:
        return a @ y[:classes * dim].reshape(dim, classes) + y[classes * dim:]

    def f(x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits(y, a_va), t_va, reduction="sum") / n_val

    def g(x: Tensor, y: Tensor) -> Tensor:
        losses = F.cross_entropy(logits(y, a_tr), s_tr, reduction="none")
        return (torch.sigmoid(x[tr]) * losses).sum() / n_train + ridge * (y * y).sum()

    def metrics(x: Tensor, y: Tensor) -> dict[str, float]:
        weights = torch.sigmoid(x)
        gap = weights[is_clean].mean() - weights[~is_clean].mean() if bool(corrupted.any()) else weights.mean()
        accuracy = (logits(y, a_te).argmax(dim=1) == t_te).to(dtype).mean()
        return {"test_accuracy": float(accuracy), "weight_gap": float(gap)}

    return BilevelProblem(f, g, x0, y0, metrics=metrics, name="toy-cleaning",
                          info={"seed": seed, "n_train": n_train, "n_val": n_val, "rank": rank,
                                "world_size": world_size, "corrupted": corrupted})
