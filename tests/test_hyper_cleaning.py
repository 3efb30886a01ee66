"""Data hyper-cleaning: datasets, corruption, the per-sample weighting, and honest metrics."""
import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bilevel import PROBLEMS, solve
from bilevel.core.flat_module import FlatModule
from bilevel.problems import datasets
from bilevel.problems.hyper_cleaning import hyper_cleaning, weighted_loss


def write_idx(path, array):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_reader(tmp_path, gz):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = (images, labels)
    x, y = datasets.load("mnist", data_dir=tmp_path)
    assert x.shape == (10, 784) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:7] * 255, arrays["train"][0].reshape(7, -1))
    np.testing.assert_array_equal(y[7:], arrays["t10k"][1])


def test_missing_idx_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Missing IDX file: train-images-idx3-ubyte"):
        datasets.load("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Invalid dataset: 'cifar'"):
        datasets.load("cifar")


def test_embedded_sample_is_real_mnist():
    x, y = datasets.load("mnist5k")
    assert x.shape == (5000, 784) and 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y).tolist() == [500] * 10


@pytest.mark.parametrize("model", ["uniform", "permutation"])
def test_corruption_never_keeps_the_true_label(model):
    labels = torch.arange(10).repeat(100)
    noisy, mask = datasets.corrupt_labels(labels, 0.3, 10, torch.Generator().manual_seed(0), model)
    assert int(mask.sum()) == 300
    assert bool((noisy[mask] != labels[mask]).all()) and bool((noisy[~mask] == labels[~mask]).all())
    if model == "permutation":      # whole classes move together
        for c in range(10):
            assert len(set(noisy[mask & (labels == c)].tolist())) <= 1


def small_problem(**kwargs):
    args = dict(n_train=300, n_val=200, n_test=300, seed=1, retrain_steps=30)
    args.update(kwargs)
    return hyper_cleaning(**args)


def test_lower_level_weights_each_sample_by_its_own_x():
    p = small_problem(pca=20)
    a_tr, b_noisy, _ = p.info["_data"]["train"]
    clf = p.info["_data"]["classifier"]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, generator=gen), torch.randn(20, 10, generator=gen)
    ce = F.cross_entropy(a_tr @ y, b_noisy, reduction="none")
    expected = sum(torch.sigmoid(x[i]) * ce[i] for i in range(300)) / 300 + 1e-3 * (y ** 2).sum()
    torch.testing.assert_close(p.g(x, y), expected, rtol=1e-5, atol=1e-6)
    # the broadcasting mistake (n,) * (n, 1) gives mean(sigmoid) * mean(CE): not what g computes
    wrong = (ce * torch.sigmoid(x)[:, None]).mean() + 1e-3 * (y ** 2).sum()
    assert abs(float(p.g(x, y) - wrong)) > 1e-4
    with pytest.raises(ValueError, match=r"Invalid weights: shape \(300, 1\)"):
        weighted_loss(clf, y, a_tr, b_noisy, torch.sigmoid(x)[:, None], 1e-3)


def test_split_sizes_mask_and_pca_fitted_on_train_only():
    p = small_problem(pca=15, corruption=0.2)
    info = p.info
    assert (info["n_train"], info["n_val"], info["n_test"], info["n_features"]) == (300, 200, 300, 15)
    assert int(info["corrupted_mask"].sum()) == 60
    a_tr = info["_data"]["train"][0]
    torch.testing.assert_close(a_tr.mean(0), torch.zeros(15), atol=1e-5, rtol=0)   # centred on train
    assert float(info["_data"]["test"][0].mean(0).abs().max()) > 1e-3              # not on test
    with pytest.raises(ValueError, match=r"Invalid n_train/n_val/n_test: \[4000, 1000, 2000\]"):
        hyper_cleaning(n_train=4000)
    with pytest.raises(ValueError, match="Invalid model: 'cnn'"):
        hyper_cleaning(model="cnn")


def test_pca_features_do_not_depend_on_the_number_of_blas_threads():
    """The same seed builds the same problem on every machine: the PCA fit is a full SVD in
    float64 (the randomized solver in float32 differed by 1e-4 between 1 and 2 threads)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        one = small_problem(pca=8, dtype=torch.float64).info["_data"]["train"][0]
    with threadpool_limits(limits=2):
        two = small_problem(pca=8, dtype=torch.float64).info["_data"]["train"][0]
    torch.testing.assert_close(one, two, rtol=0, atol=1e-12)


def test_metrics_match_independent_computations():
    p = small_problem(pca=20)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, generator=gen), 0.1 * torch.randn(20, 10, generator=gen)
    m = p.metrics(x, y)
    # declared for checks that do not build it: the metrics and the final metrics
    assert tuple(m) + tuple(p.final_metrics(x, y)) == PROBLEMS["hyper-cleaning"].metric_names
    a_te, b_te = p.info["_data"]["test"]
    assert m["test_accuracy"] == pytest.approx(float(((a_te @ y).argmax(1) == b_te).float().mean()))
    clean = (~p.info["corrupted_mask"]).numpy()
    assert m["corruption_auc"] == pytest.approx(roc_auc_score(clean, x.numpy()))
    assert m["val_loss"] == pytest.approx(float(p.f(x, y)))
    # retraining with weights that drop the corrupted samples beats keeping them
    mask = p.info["corrupted_mask"]
    x_oracle = torch.where(mask, -20.0, 20.0)
    retrained = p.final_metrics        # a final metric: at the final row and the verified answer only
    assert retrained(x_oracle, y)["retrained_accuracy"] > retrained(torch.zeros(300), y)["retrained_accuracy"]
    assert "retrained_accuracy" not in m
    every_row = small_problem(pca=20, retrain_every_row=True)
    assert every_row.final_metrics is None
    assert every_row.metrics(x_oracle, y)["retrained_accuracy"] == retrained(x_oracle, y)["retrained_accuracy"]


def test_mlp_parameters_travel_as_one_flat_vector():
    p = small_problem(model="mlp", hidden=8, pca=10)
    assert p.y0.shape == (10 * 8 + 8 + 8 * 10 + 10,)
    clf = p.info["_data"]["classifier"]
    assert isinstance(clf.net, FlatModule)
    a_val, b_val = p.info["_data"]["val"]
    W1, b1, W2, b2 = torch.split(p.y0, [80, 8, 80, 10])
    logits = torch.relu(a_val @ W1.view(8, 10).T + b1) @ W2.view(10, 8).T + b2
    torch.testing.assert_close(p.f(p.x0, p.y0), F.cross_entropy(logits, b_val))


def test_pgdqp_with_a_separate_x_step_cleans():
    """On the embedded sample (25% wrong labels, PCA 82), pgdqp's weights rank corrupted samples
    low and the retrained classifier beats training on the corrupted data."""
    p = PROBLEMS["hyper-cleaning"](pca=82, seed=2, retrain_steps=60)
    base = p.final_metrics(p.x0, p.y0)
    r = solve(p, "pgdqp", max_iter=300, log_every=300, kkt="none", options=dict(schedule="constant", step_size=1000.0, lower_step_size=1.0, alpha=1.0))
    assert r.final("corruption_auc") > 0.85
    assert r.final("retrained_accuracy") > base["retrained_accuracy"] + 0.02
