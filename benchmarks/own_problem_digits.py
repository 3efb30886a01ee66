"""A problem of a user's own, not in configs/ or the test-suite: every method with its defaults.

Per-layer weight decay of a 64-16-10 tanh MLP on scikit-learn's digits (300 training and 300
validation samples; x = the two log-weights, y = the network's parameters as an nn.Module):

    min_x CE_val(y)   s.t.   y in argmin_y CE_train(y) + 1e-2 (e^x0 ||W1||^2 + e^x1 ||W2||^2).

Each run is `bilevel.solve(problem, method, max_iter=K, log_every=K // 10)`, nothing tuned. Its
verified values (the lower level re-solved by the library) are checked against a re-solve done
here independently: torch.optim.LBFGS (strong Wolfe) on g(x, .) from the method's y, and f there.

    OMP_NUM_THREADS=1 python benchmarks/own_problem_digits.py [--max-iter 1000] [--methods pgdqp,f2ba]
        [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.func import functional_call

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section


def build(seed: int = 0, hidden: int = 16, n_train: int = 300) -> bilevel.BilevelProblem:
    """The problem, with the metric val_acc (validation accuracy of the network y)."""
    X, t = load_digits(return_X_y=True)
    a_train, a_val, b_train, b_val = train_test_split(X / 16.0, t, train_size=n_train, test_size=300,
                                                      random_state=seed)
    a_train, a_val = (torch.tensor(a, dtype=torch.float32) for a in (a_train, a_val))
    b_train, b_val = torch.tensor(b_train), torch.tensor(b_val)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))

    def g(x, p):
        decay = torch.exp(x[0]) * (p["0.weight"] ** 2).sum() + torch.exp(x[1]) * (p["2.weight"] ** 2).sum()
        return F.cross_entropy(functional_call(net, p, (a_train,)), b_train) + 1e-2 * decay

    def f(x, p):
        return F.cross_entropy(functional_call(net, p, (a_val,)), b_val)

    def val_acc(x, p):
        return (functional_call(net, p, (a_val,)).argmax(1) == b_val).double().mean()

    return bilevel.BilevelProblem(f, g, x0=torch.zeros(2), y0=net, metrics={"val_acc": val_acc}, name="digits-mlp")


def independent_resolve(problem: bilevel.BilevelProblem, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(f, g) at argmin g(x, .) found by torch.optim.LBFGS from y (flat tensors of the problem)."""
    z = y.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], max_iter=5000, tolerance_grad=1e-7, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = problem.g(x, z)
        value.backward()
        return value
    opt.step(closure)
    with torch.no_grad():
        return float(problem.f(x, z)), float(problem.g(x, z))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--methods", default="pgdqp,sgf,bome,aid_bio,vpbgd,galet,iaptt_gm,meha,f2ba,hjfbio")
    parser.add_argument("--results", default=None, help="write the table as a section of this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for method in args.methods.split(","):
        problem = build()
        start = time.perf_counter()
        r = bilevel.solve(problem, method, max_iter=args.max_iter, log_every=max(1, args.max_iter // 10))
        seconds = time.perf_counter() - start
        v = r.verification
        f_here, g_here = independent_resolve(problem, r.state.x, r.state.y)
        g_method = float(problem.g(r.state.x, r.state.y))
        rows.append({"method": method, "status": r.status.name, "success": r.success,
                     "f": f"{r.final('f'):.4f}", "val_acc": f"{r.final('val_acc'):.3f}",
                     "verified_f": f"{v['upper_value']:.4f}", "verified_val_acc": f"{v['metrics']['val_acc']:.3f}",
                     "f at our re-solve": f"{f_here:.4f}", "lower gap (library)": f"{v['lower_gap']:.2e}",
                     "lower gap (ours)": f"{g_method - g_here:.2e}",
                     "y_distance": f"{v['y_distance']:.2f}", "seconds": f"{seconds:.0f}"})
        print(rows[-1], flush=True)
    table = format_table(rows, list(rows[0]))
    print(table)
    if args.results:
        text = "\n".join([
            "## A problem of our own (not in configs/ or tests/): per-layer weight decay of an MLP on digits", "",
            f"Command: `{command()}`  ", f"Machine: {machine()}, OMP_NUM_THREADS=1  ",
            f"Every method with its defaults, {args.max_iter} iterations. f and val_acc: at the method's y; "
            "verified_*: at y re-solved by the library (`Result.verification`); `f at our re-solve`: at y "
            "re-solved here by torch.optim.LBFGS from the method's y; lower gaps g(x, y) - g(x, y_resolved) "
            "of the library's re-solve and of ours. success is False where y is more than verify_tol = 1e-2 (relative) from the "
            "re-solved y.", "", table])
        update_section(args.results, "own-problem-digits", text)


if __name__ == "__main__":
    main()
