"""pgdqp on minibatches: x waiting its first 1/tracking steps (the default) against x moving from
the first step (x_wait=0), on problems of no config or test.

    python benchmarks/pgdqp_x_wait.py [--steps 3000] [--mnist-dir DIR] [--no-write]

- digits-mlp: per-sample weights sigmoid(x_i) of 1000 scikit-learn digits, 40% of them with a wrong
  label, a 64-32-10 tanh network (an nn.Module) trained on the weighted loss with weight decay 1e-3,
  f the cross-entropy on 400 validation digits; batch 32, 600 steps (19 draws of each weight);
  split, corruption and network from the problem seed (0-3). Corruption AUC of -x by scikit-learn
  (independent of the library's metric) and the test accuracy of the run's network on the other 397.
- hyper-cleaning (embedded MNIST sample, linear, corruption 0.5), problem seeds 8 and 9, batch 64:
  the library's corruption AUC and retrained accuracy.
- log-ridge on make_regression and diabetes (benchmarks/pgdqp_minibatch.py's finite sums, F exact,
  F* by L-BFGS-B), batch 64: the worst gap (F(x) - F*) / F* over sampler seeds 0-1.
- With --mnist-dir: full MNIST at benchmark_bilevel's sizes (20000 / 5000 / 10000, corruption 0.5),
  batch 64, problem seeds 0-4: corruption AUC and retrained accuracy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch.func import functional_call

import bilevel
from bilevel.cli.report import record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgdqp_minibatch import finite_sum  # noqa: E402

VARIANTS = {"x_wait default (1/tracking = 50)": {}, "x_wait=0": {"x_wait": 0}}


def digits_mlp(seed: int):
    """(problem, wrong-label flags, test inputs, test labels, network) of the digits problem."""
    inputs, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(100 + seed)
    order = rng.permutation(len(labels))
    inputs, labels = inputs[order] / 16.0, labels[order]
    n_train, n_val = 1000, 400
    noisy = labels[:n_train].copy()
    wrong = rng.random(n_train) < 0.4
    noisy[wrong] = (noisy[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    floats = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    longs = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    ce = torch.nn.functional.cross_entropy

    def lower(x, params, batch):
        idx, a, b = batch
        weighted = torch.sigmoid(x[idx]) * ce(functional_call(net, params, (a,)), b, reduction="none")
        return weighted.mean() + 1e-3 * sum((w ** 2).sum() for w in params.values())

    def upper(x, params, batch):
        a, b = batch
        return ce(functional_call(net, params, (a,)), b)

    val, test = slice(n_train, n_train + n_val), slice(n_train + n_val, None)
    problem = bilevel.BilevelProblem(upper, lower, x0=torch.zeros(n_train), y0=net,
                                     upper_data=(floats(inputs[val]), longs(labels[val])),
                                     lower_data=(torch.arange(n_train), floats(inputs[:n_train]), longs(noisy)))
    return problem, wrong, floats(inputs[test]), longs(labels[test]), net


def run_digits(options: dict) -> list[tuple[float, float]]:
    scores = []
    for seed in range(4):
        problem, wrong, test_in, test_out, net = digits_mlp(seed)
        r = bilevel.solve(problem, "pgdqp", options=options, max_iter=600, log_every=600, batch_size=32, seed=0,
                          kkt="none", verify=False)
        with torch.no_grad():
            logits = functional_call(net, dict(r.y.named_parameters()), (test_in,))
        scores.append((roc_auc_score(wrong, -r.x.numpy()), float((logits.argmax(1) == test_out).float().mean())))
    return scores


def run_cleaning(options: dict, steps: int, seeds, **problem_args) -> list[tuple[float, float]]:
    scores = []
    for seed in seeds:
        problem = bilevel.PROBLEMS["hyper-cleaning"](corruption=0.5, minibatch=True, seed=seed, **problem_args)
        r = bilevel.solve(problem, "pgdqp", options=options, max_iter=steps, log_every=steps, batch_size=64, seed=0,
                          kkt="none", verify=False)
        scores.append((r.history["corruption_auc"][-1], problem.final_metrics(r.x, r.y)["retrained_accuracy"]))
    return scores


def run_finite_sum(name: str, options: dict, steps: int) -> float:
    problem = finite_sum(name)
    star, gaps = problem.info["value_star"], []
    for seed in (0, 1):
        r = bilevel.solve(problem, "pgdqp", options=options, max_iter=steps, log_every=steps, batch_size=64,
                          seed=seed, kkt="none", verify=False)
        gaps.append(100 * (float(problem.info["hyper_objective"](r.x)) - star) / star)
    return max(gaps)


def pairs(scores: list[tuple[float, float]]) -> str:
    """'AUC a, b, ...; accuracy a, b, ...' with the medians."""
    aucs, accs = zip(*scores)
    return (f"AUC {', '.join(f'{a:.3f}' for a in aucs)} (median {statistics.median(aucs):.3f}); "
            f"accuracy {', '.join(f'{a:.3f}' for a in accs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps of the MNIST and log-ridge runs")
    parser.add_argument("--mnist-dir", help="a directory with full MNIST (`bilevel data mnist --data-dir DIR`)")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, options in VARIANTS.items():
        start = time.perf_counter()
        row = {"variant": label,
               "digits-mlp seeds 0-3 (600 steps, batch 32)": pairs(run_digits(options)),
               "hyper-cleaning mnist5k seeds 8, 9": pairs(run_cleaning(options, args.steps, (8, 9))),
               "log-ridge regression / diabetes: worst gap (%)": " / ".join(
                   f"{run_finite_sum(name, options, args.steps):.2f}" for name in ("regression", "diabetes"))}
        if args.mnist_dir:
            row["full MNIST seeds 0-4"] = pairs(run_cleaning(
                options, args.steps, range(5), dataset="mnist", data_dir=args.mnist_dir, n_train=20000, n_val=5000,
                n_test=10000))
        row["s"] = round(time.perf_counter() - start)
        rows.append(row)
        print(row, flush=True)
    if args.no_write:
        return
    record(args.results, "pgdqp-x-wait",
           f"pgdqp on minibatches: x waits 1/tracking steps, or moves from the first ({args.steps} steps)",
           "one thread",
           ["Defaults otherwise; see the script's docstring for the problems (none in configs/ or tests/). "
            "AUC: corruption AUC of x (higher: the wrong labels weigh less); accuracy: digits-mlp the run's network "
            "on held-out digits, hyper-cleaning a classifier retrained with weights sigmoid(x)."], rows)


if __name__ == "__main__":
    main()
