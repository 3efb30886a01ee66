"""A minibatch step eager and as one compiled graph (oracle="compiled"): pgdqp's stochastic step
(`pgdqp.fused_stochastic_step`) and soba's (`Framework.fused_step`) on hyper-cleaning.

    python benchmarks/compiled_steps.py [--data-dir DIR] [--steps 1000] [--batch 64]

Problem: hyper-cleaning (linear, corruption 0.5, minibatch=True, seed 1) on full MNIST in
benchmark_bilevel's sizes (20000 / 5000 / 10000) where --data-dir holds it (`bilevel data mnist
--data-dir DIR`), else on the embedded 5000-image sample. One thread. "ms / step": the clock read
by a callback at iterations 100 and 100 + steps of one run (set-up, compilation and the first
steps excluded); "set-up s": the run's wall time minus steps x that cost (init, compilation of
each derivative and of the fused step, the first 100 steps at their own cost). The eager and
compiled runs draw the same batches: "max relative difference of x" compares their answers.
"""
from __future__ import annotations

import argparse
import time

import torch

import bilevel
from bilevel.cli.report import record, relative_difference


def problem_of(data_dir: str | None) -> tuple[bilevel.BilevelProblem, str]:
    build = bilevel.PROBLEMS["hyper-cleaning"]
    if data_dir:
        return (build(dataset="mnist", data_dir=data_dir, n_train=20000, n_val=5000, n_test=10000, corruption=0.5,
                      minibatch=True, seed=1), "full MNIST 20000 / 5000 / 10000")
    return build(corruption=0.5, minibatch=True, seed=1), "embedded MNIST sample"


def measure(problem: bilevel.BilevelProblem, method: str, oracle: str, steps: int, batch: int) -> tuple:
    stamps: list[float] = []

    def tick(state, aux) -> None:
        if state.k in (100, 100 + steps):
            stamps.append(time.perf_counter())
    began = time.perf_counter()
    result = bilevel.solve(problem, method, max_iter=101 + steps, batch_size=batch, seed=0, kkt="none", verify=False,
                           log_every=100 + steps, callback=tick, oracle=oracle)
    wall = time.perf_counter() - began
    per_step = (stamps[1] - stamps[0]) / steps
    return per_step, wall - steps * per_step, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["pgdqp", "soba"])
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem, data = problem_of(args.data_dir)
    rows = []
    for method in args.methods:
        eager = None
        for oracle in ("autograd", "compiled"):
            per_step, set_up, result = measure(problem, method, oracle, args.steps, args.batch)
            if eager is None:
                eager, eager_x = per_step, result.x
            rows.append({"method": method, "oracle": oracle, "ms / step": f"{1e3 * per_step:.3g}",
                         "x eager step": f"{per_step / eager:.2f}", "set-up s": f"{set_up:.1f}",
                         "max relative difference of x": relative_difference(result.x, eager_x),
                         "uncompiled": "yes" if "uncompiled" in result.message else ""})
            print(rows[-1], flush=True)
    record(args.results, "compiled-steps",
           "A minibatch step eager and as one compiled graph (hyper-cleaning, batch 64)", "one thread", [
        f"Data: {data}, linear, corruption 0.5, seed 1. ms per step between iterations 100 and {100 + args.steps} "
        "of one run (a callback reads the clock); set-up: the rest of the run's wall time (init, the compilation "
        "of each derivative used outside the fused step and of the fused step, the first 100 steps). Same "
        "batches eager and compiled."], rows)


if __name__ == "__main__":
    main()
