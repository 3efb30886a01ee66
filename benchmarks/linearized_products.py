"""Linear solves at one point with products from one graph of grad_y g (`Oracle.lower_jacobian`)
against products call by call (each a forward of g, its gradient with a graph and a backward).

    python benchmarks/linearized_products.py [--iters 200] [--repeats 3]

Settings: pgdqp with its default schedule "projected" (two conjugate-gradient solves a step) on
synthetic-sc (dim 20, float64) and on hyper-cleaning (embedded MNIST sample, 784 pixels, linear,
float32), and aid_bio (one solve a step) on synthetic-sc. "ms / iteration": the clock read by a
callback at iterations 20 and 20 + iters of one run (medians over repetitions); "verification s":
the answer's verification (`verification["cost"]["time"]`, a lower-level re-solve and the upper
level's linear solves).
Call by call is the same "autograd" back-end with `linearize_grad_y_g` hidden, so the two runs
differ only in how the products are taken: same counts, iterates equal up to round-off.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import bilevel
from bilevel.cli.report import record, relative_difference


class CallByCall(bilevel.Autograd):
    """The "autograd" back-end without its linearization: every product builds its own graph."""

    linearize_grad_y_g = None


SETTINGS = {   # label: (problem, methods); aid_bio's solves on hyper-cleaning take minutes a run call by call
    "synthetic-sc (n = 20)": (lambda: bilevel.PROBLEMS["synthetic-sc"](seed=0), ("pgdqp", "aid_bio")),
    "hyper-cleaning (784, linear)": (lambda: bilevel.PROBLEMS["hyper-cleaning"](), ("pgdqp",)),
}


def run(problem: bilevel.BilevelProblem, method: str, backend: type, iters: int) -> tuple[float, float, torch.Tensor]:
    stamps: list[float] = []

    def tick(state, aux) -> None:
        if state.k in (20, 20 + iters):
            stamps.append(time.perf_counter())
    result = bilevel.solve(problem, method, max_iter=21 + iters, log_every=21 + iters, kkt="none", callback=tick,
                           oracle=bilevel.Oracle(backend(problem.f, problem.g, problem.y_bounds)))
    return (stamps[1] - stamps[0]) / iters, result.verification["cost"]["time"], result.x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bilevel.solve(bilevel.PROBLEMS["synthetic-sc"](seed=0), "pgdqp", max_iter=5)   # the process's first-run costs
    rows = []
    for label, (build, methods) in SETTINGS.items():
        problem = build()
        for method in methods:
            times = {name: ([], []) for name in ("call by call", "one graph per point")}
            answers = {}
            for _ in range(args.repeats):
                for name, backend in (("call by call", CallByCall), ("one graph per point", bilevel.Autograd)):
                    per_iter, verification, answers[name] = run(problem, method, backend, args.iters)
                    times[name][0].append(per_iter)
                    times[name][1].append(verification)
            base = statistics.median(times["call by call"][0])
            reference = answers["call by call"]
            for name, (per_iter, verification) in times.items():
                rows.append({"setting": label, "method": method, "products": name,
                             "ms / iteration": f"{1e3 * statistics.median(per_iter):.3g}",
                             "x call by call": f"{statistics.median(per_iter) / base:.2f}",
                             "verification s": f"{statistics.median(verification):.3g}",
                             "max relative difference of x": relative_difference(answers[name], reference)})
                print(rows[-1], flush=True)
    record(args.results, "linearized-products",
           "Linear solves with products from one graph per point (`Oracle.lower_jacobian`)", "one thread", [
               f"ms per iteration between iterations 20 and {20 + args.iters} of one run ({args.repeats} "
               "repetitions, medians), defaults otherwise (pgdqp: schedule 'projected'); verification: its "
               "time at the end of the run. 'call by call': the 'autograd' back-end with `linearize_grad_y_g` "
               "hidden."], rows)


if __name__ == "__main__":
    main()
