"""The stochastic methods' defaults on problems nobody tuned them on: minibatch hyper-cleaning
on the embedded MNIST sample, and two per-feature ridge problems whose optimum F* is found
independently (scipy L-BFGS on the exact hyper-objective).

    python benchmarks/stochastic_untuned.py [--steps 3000] [--batch 64] [--methods soba saba stocbio f2sa]
        [--options '{"x_scale": 0.5}']

Hyper-cleaning (problem seeds 5 and 6, not those of configs/ or tests/; 25% wrong labels, linear,
minibatch=True): the test accuracy of a classifier retrained with the learned weights sigmoid(x)
(`retrained_accuracy`, the final metric) against the same retraining with uniform weights (x = 0).

Log-ridge (ours): per-feature ridge penalties exp(x_j) learned on validation data,

    g(x, y) = (1/2n) sum_i (a_i^T y - b_i)^2 + 1/2 sum_j exp(x_j) y_j^2,
    f(x, y) = (1/2m) sum_j (a'_j^T y - b'_j)^2,    y*(x) = (A^T A / n + diag(exp x))^-1 A^T b / n,

on scikit-learn's diabetes data (10 standardised features and 10 of pure noise; 300 training,
142 validation samples) and on make_regression (20 features, 6 informative, spread scales; 1000
and 500 samples). F(x) = f(x, y*(x)) is exact at every x; F* is the best of scipy L-BFGS-B runs
from x0 = 0 and four random starts with the gradient of the exact F (by autograd through the
linear solve). Reported: (F(x) - F*) / F* at the final x.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import scipy.optimize
import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section



def hyper_minimum(hyper_objective, dim: int, rng: np.random.Generator):
    """scipy's L-BFGS-B on x -> F(x) (gradients by autograd) from 0 and 4 random starts: the best result."""
    def value_and_grad(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = hyper_objective(t)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.numpy()

    starts = [np.zeros(dim)] + [rng.normal(0, 2, dim) for _ in range(4)]
    return min((scipy.optimize.minimize(value_and_grad, s, jac=True, method="L-BFGS-B",
                                        options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
                for s in starts), key=lambda r: r.fun)

def squared(x, y, batch):
    a, b = batch
    return 0.5 * ((a @ y - b) ** 2).mean()


def log_ridge_loss(x, y, batch):
    a, b = batch
    return 0.5 * ((a @ y - b) ** 2).mean() + 0.5 * (torch.exp(x) * y * y).sum()


def log_ridge(name: str) -> bilevel.BilevelProblem:
    """A per-feature ridge problem on scikit-learn data, with F* by an independent solve."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(11)
    if name == "diabetes":
        a, b = datasets.load_diabetes(return_X_y=True)
        a = np.hstack([a, rng.standard_normal((a.shape[0], 10))])
        n_train = 300
    else:
        a, b = datasets.make_regression(n_samples=1500, n_features=20, n_informative=6, noise=30.0,
                                        random_state=5)
        a = a * np.linspace(0.3, 3.0, 20)[rng.permutation(20)]
        n_train = 1000
    order = rng.permutation(len(b))
    a, b = a[order], b[order]
    a = StandardScaler().fit(a[:n_train]).transform(a)
    b = (b - b[:n_train].mean()) / b[:n_train].std()
    A, B, A_val, B_val = (torch.as_tensor(t, dtype=torch.float64) for t in
                          (a[:n_train], b[:n_train], a[n_train:], b[n_train:]))
    gram, moment = A.T @ A / len(B), A.T @ B / len(B)

    def hyper_objective(x):
        y = torch.linalg.solve(gram + torch.diag(torch.exp(x)), moment)
        return squared(x, y, (A_val, B_val))

    best = hyper_minimum(hyper_objective, A.shape[1], rng)
    star = float(best.fun)
    return bilevel.BilevelProblem(squared, log_ridge_loss, torch.zeros(A.shape[1], dtype=torch.float64),
                                  torch.zeros(A.shape[1], dtype=torch.float64), upper_data=(A_val, B_val),
                                  lower_data=(A, B), name=f"log-ridge ({name})",
                                  info={"value_star": star, "value_start": float(hyper_objective(torch.zeros(
                                      A.shape[1], dtype=torch.float64))), "hyper_objective": hyper_objective})


def hyper_cleaning(seed: int) -> bilevel.BilevelProblem:
    p = bilevel.PROBLEMS["hyper-cleaning"](minibatch=True, seed=seed)
    uniform = p.final_metrics(p.x0, p.y0)["retrained_accuracy"]
    p.info["uniform_accuracy"] = uniform
    return p


def run(problem, method: str, options: dict, steps: int, batch: int, seed: int):
    return bilevel.solve(problem, method, options=options, max_iter=steps, log_every=steps, batch_size=batch,
                         seed=seed, kkt="none", verify=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2, help="sampler seeds per problem")
    parser.add_argument("--methods", nargs="+", default=["soba", "saba", "stocbio", "f2sa"])
    parser.add_argument("--options", default="{}", help="JSON options for every method (variants)")
    parser.add_argument("--problems", nargs="+", default=["hc5", "hc6", "diabetes", "regression"])
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--section", default="stochastic-untuned", help="the RESULTS.md section to write")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = json.loads(args.options)
    problems = {name: hyper_cleaning(int(name[2:])) if name.startswith("hc") else log_ridge(name)
                for name in args.problems}
    rows = []
    for method in args.methods:
        for name, problem in problems.items():
            start, scores = time.perf_counter(), []
            for seed in range(args.seeds):
                r = run(problem, method, options, args.steps, args.batch, seed)
                if name.startswith("hc"):
                    scores.append(100 * (r.history["retrained_accuracy"][-1] - problem.info["uniform_accuracy"]))
                else:
                    star = problem.info["value_star"]
                    scores.append(100 * (float(problem.info["hyper_objective"](r.x)) - star) / star)
            cleaning = name.startswith("hc")
            start_gap = 0.0 if cleaning else 100 * (problem.info["value_start"] / problem.info["value_star"] - 1)
            what = "retrained accuracy - uniform (points)" if cleaning else f"gap to F* (%), start {start_gap:.3g}"
            row = {"method": method, "problem": problem.name + (f" seed {name[2:]}" if cleaning else ""),
                   "measure": what, "median": statistics.median(scores), "worst": (min if cleaning else max)(scores),
                   "status": str(r.status.name), "s / run": (time.perf_counter() - start) / args.seeds}
            rows.append(row)
            print(format_table([row], list(row)).splitlines()[-1], flush=True)
    table = format_table(rows, list(rows[0]))
    if args.no_write:
        return
    update_section(args.results, args.section, "\n".join([
        f"## Stochastic methods' defaults on untuned problems: {', '.join(args.methods)} (batch {args.batch}, "
        f"{args.steps} steps)", "",
        f"Command: `{command()}`  ", f"Machine: {machine()}, one thread; shared with other jobs while measuring  ",
        f"Default options{'' if not options else ' with ' + json.dumps(options)}; sampler seeds 0-{args.seeds - 1}; "
        "hyper-cleaning: retrained test accuracy minus that of uniform weights (x = 0), in points; log-ridge: "
        "(F(x) - F*) / F* in %, F exact, F* from scipy L-BFGS-B (see the script).", "", table]))


if __name__ == "__main__":
    main()
