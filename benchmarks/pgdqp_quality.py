"""pgdqp's default (schedule="projected") against schedule="diminishing" on
problems whose optima are verified independently: the README quickstart (x* = 1.5), tol stops
there, a box-constrained Stackelberg duopoly (x* = 5, by hand: y*(x) = (10 - x)/2), solve_batch
members against their lone runs.

    python benchmarks/pgdqp_quality.py [--weight-decay 200 | --theorem]

(the strongly convex quadratics of the robustness suite: configs/pgdqp_quadratics.yaml)

--weight-decay K: a flat lower level, weight decay exp(x) of a 30-16-1 tanh MLP (nn.Module) on
scikit-learn's breast cancer (300 train / 135 validation), K iterations of the default from
x0 = -4, -2, 0: the verified value (f at the lower level re-solved, Result.verification) at
pgdqp's answer against the one at the start (after one aid_bio step, x0 barely moved).

--theorem: schedule="theorem" (Algorithm 1 as written) with both rho rules at K = 500, 5000, 20000
on two of the quadratics: |x_K - x*|, h_K, and for Theorem 4.2 the mean ||grad h||^2 over the
iterates against its bound's term alpha^2 L_h^2 C_f^2 (L_h = 2 ||J||^2 exactly, C_f = max ||grad f||).
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
D = torch.float64
SCHEDULES = ("diminishing", "projected")


def quickstart() -> bilevel.BilevelProblem:
    return bilevel.BilevelProblem(f=lambda x, y: ((x - 1) ** 2).sum() + ((y - 2) ** 2).sum(),
                                  g=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
                                  x0=torch.zeros(5, dtype=D), y0=torch.zeros(5, dtype=D))


def duopoly(capacity: float = 100.0) -> bilevel.BilevelProblem:
    price = lambda x, y: 10.0 - (x.sum() + y.sum())  # noqa: E731  (a - c = 10, b = 1)
    return bilevel.BilevelProblem(f=lambda x, y: -price(x, y) * x.sum(), g=lambda x, y: -price(x, y) * y.sum(),
                                  x0=torch.zeros(1, dtype=D), y0=torch.zeros(1, dtype=D),
                                  x_bounds=(torch.zeros(1, dtype=D), torch.full((1,), 10.0, dtype=D)),
                                  y_bounds=(torch.zeros(1, dtype=D), torch.full((1,), capacity, dtype=D)))


def _upper(x, y, *, a, b):
    return 0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum()


def _lower(x, y, *, Q, A):
    return 0.5 * y @ Q @ y - y @ A @ x


def quadratic(seed: int) -> bilevel.BilevelProblem:
    """x in R^6, y in R^5, g = 1/2 y'Qy - y'Ax (cond 8), f = 1/2||x - a||^2 + 1/2||y - b||^2."""
    gen = torch.Generator().manual_seed(100 + seed)
    U, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=D))
    Q = U @ torch.diag(torch.logspace(0, 0.903, 5, dtype=D)) @ U.T
    A = torch.randn(5, 6, generator=gen, dtype=D)
    a, b = torch.randn(6, generator=gen, dtype=D), torch.randn(5, generator=gen, dtype=D)
    return bilevel.BilevelProblem(f=partial(_upper, a=a, b=b), g=partial(_lower, Q=Q, A=A),
                                  x0=torch.zeros(6, dtype=D), y0=torch.zeros(5, dtype=D))


def x_star(problem: bilevel.BilevelProblem) -> torch.Tensor:
    """x* = (I + M'M)^-1 (a + M'b) with y*(x) = M x, M = Q^-1 A."""
    Q, A = problem.g.keywords["Q"], problem.g.keywords["A"]
    a, b = problem.f.keywords["a"], problem.f.keywords["b"]
    M = torch.linalg.solve(Q, A)
    return torch.linalg.solve(torch.eye(A.shape[1], dtype=D) + M.T @ M, a + M.T @ b)


def theorem_rows() -> list[dict]:
    rows = []
    for seed in (0, 1):
        problem = quadratic(seed)
        Q, A = problem.g.keywords["Q"], problem.g.keywords["A"]
        a, b = problem.f.keywords["a"], problem.f.keywords["b"]
        lipschitz_h = 2 * float(torch.linalg.matrix_norm(torch.cat([-A, Q], 1), 2)) ** 2
        for K in (500, 5000, 20000):
            row = {"seed": seed, "K": K}
            for rho, name in (("warm", "Thm 4.5"), ("grad", "Thm 4.2")):
                points = []
                r = bilevel.solve(problem, "pgdqp", max_iter=K, log_every=K, kkt="none", verify=False,
                                  options={"schedule": "theorem", "rho": rho},
                                  callback=lambda state, aux: points.append((state.x, state.y)) and False)
                row[f"{name} dist to x*"] = float((r.x - x_star(problem)).norm())
                row[f"{name} h"] = r.final("h")
            c = [Q @ y - A @ x for x, y in points]   # Theorem 4.2's iterates (the last loop)
            row["Thm 4.2 mean sq grad h"] = sum(float(4 * (A.T @ ci).square().sum() + 4 * (Q @ ci).square().sum())
                                                   for ci in c) / K
            c_f = max(float(torch.cat([x - a, y - b]).norm()) for x, y in points)
            row["alpha^2 L_h^2 C_f^2"] = K ** (-2 / 3) * lipschitz_h ** 2 * c_f ** 2
            rows.append(row)
            print(row, flush=True)
    return rows


def weight_decay(x0: float, seed: int = 0) -> bilevel.BilevelProblem:
    import torch.nn.functional as F
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler
    from torch.func import functional_call
    X, t = load_breast_cancer(return_X_y=True)
    idx = torch.randperm(len(t), generator=torch.Generator().manual_seed(seed))
    X = StandardScaler().fit(X[idx[:300].numpy()]).transform(X)
    a, b = torch.tensor(X, dtype=D), torch.tensor(t, dtype=D)
    train, val = idx[:300], idx[300:435]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(D)

    def g(x, p):
        out = functional_call(net, p, (a[train],)).squeeze(-1)
        decay = 0.5 * torch.exp(x[0]) * sum((w ** 2).sum() for w in p.values())
        return F.binary_cross_entropy_with_logits(out, b[train]) + decay

    def f(x, p):
        return F.binary_cross_entropy_with_logits(functional_call(net, p, (a[val],)).squeeze(-1), b[val])

    return bilevel.BilevelProblem(f, g, x0=torch.full((1,), x0, dtype=D), y0=net, name="breast-cancer-mlp")


def weight_decay_rows(max_iter: int) -> list[dict]:
    rows = []
    for x0 in (-4.0, -2.0, 0.0):
        start = bilevel.solve(weight_decay(x0), "aid_bio", max_iter=1, log_every=1)
        r = bilevel.solve(weight_decay(x0), "pgdqp", max_iter=max_iter, log_every=max_iter)
        rows.append({"x0": x0, "x": float(r.state.x[0]), "f at y": r.final("f"),
                     "verified f": r.verification["upper_value"],
                     "verified f at start": start.verification["upper_value"], "h": r.final("h")})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight-decay", type=int, default=0, help="iterations of the MLP runs (0: none)")
    parser.add_argument("--theorem", action="store_true", help="schedule='theorem' against K (no other rows)")
    args = parser.parse_args()
    if args.theorem:
        rows = theorem_rows()
        print(f"Command: `{command()}`; machine: {machine()}.\n\n" + format_table(rows, list(rows[0])))
        return
    if args.weight_decay:
        text = format_table(weight_decay_rows(args.weight_decay), ["x0", "x", "f at y", "verified f",
                                                                   "verified f at start", "h"])
        print(text)
        return
    rows = []
    for schedule in SCHEDULES:
        opts = {"schedule": schedule}
        start = time.perf_counter()
        r = bilevel.solve(quickstart(), "pgdqp", max_iter=2000, log_every=250, options=opts)
        kkt = r.history["kkt_stationarity"]
        t = bilevel.solve(quickstart(), "pgdqp", max_iter=20000, tol=1e-4, options=opts)
        d = bilevel.solve(duopoly(), "pgdqp", max_iter=2000, log_every=2000, options=opts)
        seeds = [0, 1, 2]
        batch = bilevel.solve_batch(quadratic, "pgdqp", seeds=seeds, max_iter=3000, log_every=3000, seed=0,
                                    options=opts)
        apart = max(float((m.x - bilevel.solve(quadratic(s), "pgdqp", max_iter=3000, log_every=3000, seed=0,
                                                  kkt="none", options=opts).x).norm())
                    for s, m in zip(seeds, batch))
        row = {"schedule": schedule, "quickstart |x-x*| @2000": float((r.x - 1.5).abs().max()),
               "last kkt_stat": kkt[-1], "max kkt_stat rows 1000-2000": max(kkt[4:]),
               "tol=1e-4: iter": t.n_iter, "tol=1e-4: |x-x*|": float((t.x - 1.5).abs().max()),
               "duopoly |x-5|": abs(float(d.x[0]) - 5.0), "batch vs lone @3000": apart}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(row, flush=True)
    text = (f"Command: `{command()}`; machine: {machine()} (shared with other jobs while measured).\n\n"
            "\"projected\" is the default.\n\n"
            + format_table(rows, list(rows[0])))
    print(text)


if __name__ == "__main__":
    main()
