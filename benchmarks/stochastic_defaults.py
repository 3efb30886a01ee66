"""The stochastic methods' defaults against variants on biased-ridge, at batch size 64: the final
relative gap (F(x) - F(x*)) / F(x*) of the full-batch hyper-objective, exact, over seeds.

    python benchmarks/stochastic_defaults.py [--seeds 5] [--steps 3000]

The measurements behind the defaults of soba (decreasing schedule, decay 100), saba (constant
steps, full initial memory) and pgdqp's stochastic path (tracked estimate of grad_y g, gamma_k ~ 1/k,
x still for its first 1/tracking steps and AdaGrad-norm from there, no momentum).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section

VARIANTS = [
    ("pgdqp", {}, "default: tracked grad_y g, 1/k steps on y, x waits 50 steps, then AdaGrad-norm"),
    ("pgdqp", {"x_wait": 0}, "x from the first step (x_wait 0)"),
    ("pgdqp", {"estimator": "independent"}, "two independent batches"),
    ("pgdqp", {"momentum": 0.9}, "heavy ball 0.9"),
    ("pgdqp", {"noise_decay": 30.0}, "noise_decay 30"),
    ("pgdqp", {"noise_decay": 1000.0}, "noise_decay 1000"),
    ("pgdqp", {"estimator": "plain"}, "one batch, deterministic diminishing schedule (secants)"),
    ("soba", {}, "default: decreasing, decay 100"),
    ("soba", {"decay": 10.0}, "decay 10"),
    ("soba", {"decay": 3.0}, "decay 3"),
    ("soba", {"schedule": "constant"}, "constant steps"),
    ("saba", {}, "default: constant steps, full initial memory"),
    ("saba", {"init_memory": "zero"}, "zero initial memory"),
    ("stocbio", {}, "default: T = Q = 10"),
    ("f2sa", {}, "default: T = 10, lam_0 = 10"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = bilevel.PROBLEMS["biased-ridge"](seed=0)
    star = problem.info["value_star"]
    rows = []
    for method, options, what in VARIANTS:
        start, gaps, calls = time.perf_counter(), [], 0.0
        for seed in range(args.seeds):
            r = bilevel.solve(problem, method, options=options, max_iter=args.steps, log_every=args.steps,
                              batch_size=args.batch, seed=seed, kkt="none", verify=False)
            gaps.append((float(problem.info["hyper_objective"](r.x)) - star) / star)
            calls = r.history["oracle_calls"][-1]
        row = {"method": method, "variant": what, "median gap": statistics.median(gaps), "max gap": max(gaps),
               "oracle calls": calls, "s / run": (time.perf_counter() - start) / args.seeds}
        rows.append(row)
        print(format_table([row], list(row)).splitlines()[-1], flush=True)
    table = format_table(rows, list(rows[0]))
    text = "\n".join([
        f"## Stochastic methods on biased-ridge: defaults against variants (batch {args.batch}, "
        f"{args.steps} steps)", "",
        f"Command: `{command()}`  ", f"Machine: {machine()}, one thread  ", "",
        f"biased-ridge (seed 0: 1000 training, 500 validation samples, F(x0) = 14 F(x*)); gap = (F(x) - F(x*)) / "
        f"F(x*) with F exact (closed-form y*(x)) at the final x, over seeds 0-{args.seeds - 1} of the sampler.",
        "", table])
    update_section(args.results, "stochastic-defaults", text)
    print(f"wrote a section of {args.results}")


if __name__ == "__main__":
    main()
