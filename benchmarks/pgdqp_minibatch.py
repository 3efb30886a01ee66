"""pgdqp on minibatches (batch 64, defaults) on problems of no config or test, with F* computed
independently, and on minibatch hyper-cleaning (the embedded MNIST sample).

    python benchmarks/pgdqp_minibatch.py [--steps 3000] [--batch 64] [--seeds 2] [--json rows.json]
        [--before before.json] [--no-write]

Finite sums (x: per-feature log weights of an L2 penalty, learned on validation data):

    ridge:     g(x, y) = (1/2n) sum_i (a_i^T y - b_i)^2 + 1/2 sum_j exp(x_j) y_j^2,
               f = (1/2m) sum_j (a'_j^T y - b'_j)^2,
    logistic:  g(x, y) = (1/n) sum_i log(1 + exp(-b_i a_i^T y)) + 1/2 sum_j exp(x_j) y_j^2,
               f the same loss on validation,

on make_regression (20 features of spread scales, 6 informative; 2000 training / 1000 validation
rows), on diabetes (10 features and 10 of pure noise; 300 / 142) and on breast_cancer (logistic,
30 features; 300 / 269). F(x) = f(x, y*(x)) is exact at every x (ridge: a linear solve;
logistic: Newton's method to machine precision, its gradient by the implicit function theorem);
F* is the best of scipy L-BFGS-B runs (gtol 1e-12) from x0 = 0 and four random starts. Reported:
(F(x) - F*) / F* in % at the final x, the worst over sampler seeds.

Hyper-cleaning: `hyper-cleaning` (mnist5k: 2000 / 1000 / 2000, linear) with corruption 0.5,
minibatch=True, problem seeds 8 and 9 (not those of configs/ or tests/): corruption AUC of x and
the test accuracy of a classifier retrained with the weights sigmoid(x), against uniform weights.

`--json` writes the rows; `--before` reads such a file from a run of another commit (run with
PYTHONPATH pointing at its src) and puts its figures beside this one's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bilevel
from bilevel.cli.report import format_table, record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stochastic_untuned import hyper_minimum  # noqa: E402


def squared(x, y, batch):
    a, b = batch
    return 0.5 * ((a @ y - b) ** 2).mean()


def ridge_lower(x, y, batch):
    return squared(x, y, batch) + 0.5 * (torch.exp(x) * y * y).sum()


def logistic(x, y, batch):
    a, b = batch
    return torch.nn.functional.softplus(-b * (a @ y)).mean()


def logistic_lower(x, y, batch):
    return logistic(x, y, batch) + 0.5 * (torch.exp(x) * y * y).sum()


def data(name: str, rng: np.random.Generator):
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler
    if name == "regression":
        a, b = datasets.make_regression(n_samples=3000, n_features=20, n_informative=6, noise=20.0, random_state=23)
        a = a * np.geomspace(0.2, 5.0, 20)[rng.permutation(20)]
        n_train = 2000
    elif name == "diabetes":
        a, b = datasets.load_diabetes(return_X_y=True)
        a = np.hstack([a, rng.standard_normal((a.shape[0], 10))])
        n_train = 300
    else:
        a, b = datasets.load_breast_cancer(return_X_y=True)
        b = 2.0 * b - 1.0
        n_train = 300
    order = rng.permutation(len(b))
    a, b = a[order], b[order]
    a = StandardScaler().fit(a[:n_train]).transform(a)
    if name != "breast_cancer":
        b = (b - b[:n_train].mean()) / b[:n_train].std()
    return (torch.as_tensor(t, dtype=torch.float64) for t in (a[:n_train], b[:n_train], a[n_train:], b[n_train:]))


def finite_sum(name: str) -> bilevel.BilevelProblem:
    """A per-feature L2 problem with its exact hyper-objective F and F* by L-BFGS-B on F."""
    rng = np.random.default_rng(29)
    A, B, A_val, B_val = data(name, rng)
    if name == "breast_cancer":
        upper, lower = logistic, logistic_lower

        def solution(x):
            """y*(x): Newton's method to machine precision, then one Newton step with the
            gradient graph, whose derivative in x is that of the implicit function."""
            y = torch.zeros(A.shape[1], dtype=torch.float64)
            xd = x.detach()
            for _ in range(100):
                grad = torch.func.grad(lower, argnums=1)(xd, y, (A, B))
                step = torch.linalg.solve(torch.func.hessian(lower, argnums=1)(xd, y, (A, B)), grad)
                y = y - step
                if float(step.norm()) < 1e-15 * (1 + float(y.norm())):
                    break
            hess = torch.func.hessian(lower, argnums=1)(x, y, (A, B))
            return y - torch.linalg.solve(hess, torch.func.grad(lower, argnums=1)(x, y, (A, B)))
    else:
        upper, lower = squared, ridge_lower
        gram, moment = A.T @ A / len(B), A.T @ B / len(B)

        def solution(x):
            return torch.linalg.solve(gram + torch.diag(torch.exp(x)), moment)

    def hyper_objective(x):
        return upper(x, solution(x), (A_val, B_val))

    best = hyper_minimum(hyper_objective, A.shape[1], rng)
    zero = torch.zeros(A.shape[1], dtype=torch.float64)
    label = {"regression": "log-ridge (make_regression 2000/1000)", "diabetes": "log-ridge (diabetes 300/142)",
             "breast_cancer": "logistic L2 (breast_cancer 300/269)"}[name]
    return bilevel.BilevelProblem(upper, lower, zero, zero.clone(), upper_data=(A_val, B_val), lower_data=(A, B),
                                  name=label, info={"value_star": float(best.fun), "hyper_objective": hyper_objective,
                                                    "value_start": float(hyper_objective(zero))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2, help="sampler seeds per finite-sum problem")
    parser.add_argument("--problems", nargs="+", default=["regression", "diabetes", "breast_cancer", "hc8", "hc9"])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--before", help="rows of another commit (--json of a run there), shown beside these")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = {}
    if args.before:
        with open(args.before) as stream:
            before = {r["problem"]: r for r in json.load(stream)}
    rows = []
    for name in args.problems:
        cleaning = name.startswith("hc")
        if cleaning:
            problem = bilevel.PROBLEMS["hyper-cleaning"](corruption=0.5, minibatch=True, seed=int(name[2:]))
            uniform = problem.final_metrics(problem.x0, problem.y0)["retrained_accuracy"]
        else:
            problem = finite_sum(name)
            star = problem.info["value_star"]
        start, scores = time.perf_counter(), []
        for seed in range(1 if cleaning else args.seeds):
            r = bilevel.solve(problem, "pgdqp", max_iter=args.steps, log_every=args.steps, batch_size=args.batch,
                              seed=seed, kkt="none", verify=False)
            if cleaning:
                scores.append((r.history["corruption_auc"][-1], r.history["retrained_accuracy"][-1]))
            else:
                scores.append(100 * (float(problem.info["hyper_objective"](r.x)) - star) / star)
        label = problem.name + (f" seed {name[2:]}, corruption 0.5" if cleaning else "")
        if cleaning:
            measure = f"AUC; retrained accuracy (uniform {uniform:.4f})"
            value = f"{scores[0][0]:.3f}; {scores[0][1]:.4f}"
        else:
            measure = f"worst gap to F* (%), start {100 * (problem.info['value_start'] / star - 1):.3g}"
            value = f"{max(scores):.3g}"
        row = {"problem": label, "measure": measure, "before": before.get(label, {}).get("after", ""),
               "after": value, "s / run": round((time.perf_counter() - start) / len(scores), 1)}
        rows.append(row)
        print(format_table([row], list(row)).splitlines()[-1], flush=True)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(rows, stream, indent=1)
    if args.no_write:
        return
    record(args.results, "pgdqp-minibatch",
           f"pgdqp on minibatches with its defaults (batch {args.batch}, {args.steps} steps)",
           "one thread; shared with other jobs while measuring",
           ["`bilevel.solve(problem, 'pgdqp', batch_size=64)`, no options. Finite sums: (F(x) - F*) / F* in % "
            f"at the final x, the worst of sampler seeds 0-{args.seeds - 1}, F exact, F* from scipy L-BFGS-B (see "
            "the script); hyper-cleaning (embedded MNIST sample, 50% wrong labels; full MNIST is not available "
            "offline): corruption AUC of x and the test accuracy of a classifier retrained with weights sigmoid(x), "
            "sampler seed 0. before: the two-batch estimator, x and y on one step gamma_0 / (1 + k/100), "
            "gamma_k alpha_k L_h = feasibility / sqrt(1 + k/100); after: the tracked estimate of grad_y g, "
            "gamma_k = gamma_0 / (1 + k/10), gamma_k alpha_k L_h = feasibility, AdaGrad-norm on x."], rows)


if __name__ == "__main__":
    main()
