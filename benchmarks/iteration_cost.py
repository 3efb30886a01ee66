"""The cost of one iteration of every solver, in units of one lower-level gradient evaluation.

For each problem and solver: the wall time per iteration of `bilevel.solve` (kkt="none", the
problem's metrics dropped, the first 10 iterations left out as warm-up), divided by the time
of one grad_y g(x, y) by autograd at the start. pgdqp also runs with oracle="compiled" (the
compilation falls in the warm-up).

    python benchmarks/iteration_cost.py [--problems hc-linear,hc-mlp,synthetic-sc] [--threads 1] [--device cpu]

Problems: hyper-cleaning on the embedded MNIST sample (784 pixels; the linear model in float32,
and the MLP with 50 hidden units), and synthetic-sc (dim 20, float64). Solvers run with their
defaults, except the steps on x of the hyper-cleaning runs, set as in configs/ so that x moves.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section

PROBLEMS = {
    "hc-linear": ("hyper-cleaning (784, linear)", lambda device: bilevel.PROBLEMS["hyper-cleaning"](device=device), 40),
    "hc-mlp": ("hyper-cleaning (784, MLP 50)",
               lambda device: bilevel.PROBLEMS["hyper-cleaning"](model="mlp", device=device), 40),
    "synthetic-sc": ("synthetic-sc", lambda device: bilevel.PROBLEMS["synthetic-sc"](device=device), 400),
}
HYPER_CLEANING = {
    "pgdqp": dict(schedule="constant", step_size=1000.0, lower_step_size=1.0, alpha=1.0),
    "bome": dict(step_size=100.0, lower_step_size=1.0, inner_step_size=1.0, phi="value", inner_steps=3),
    "aid_bio": dict(step_size=100.0, inner_steps=5, inner_step_size=1.0,
                    linear_solver=bilevel.ConjugateGradient(iters=10)),
}


def lower_gradient_ms(problem: bilevel.BilevelProblem, repeats: int) -> float:
    """Median milliseconds of one grad_y g(x0, y0) by autograd."""
    oracle = bilevel.Oracle(bilevel.Autograd(problem.f, problem.g))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gy = oracle.grad_g_y(problem.x0, problem.y0)
        if gy.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[2:])


def iteration_ms(problem: bilevel.BilevelProblem, method: str, options: dict, iters: int, compile: bool) -> tuple:
    result = bilevel.solve(problem, method, max_iter=iters, log_every=10, kkt="none", seed=0, oracle="compiled" if compile else "autograd",
                           options=options)
    t, k = result.history["time"], result.history["iter"]
    if len(k) < 3:
        return float("nan"), result
    return 1e3 * (t[-1] - t[1]) / (k[-1] - k[1]), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="hc-linear,hc-mlp,synthetic-sc")
    parser.add_argument("--methods", default=",".join(bilevel.SOLVERS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the oracle=compiled rows")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for key in args.problems.split(","):
        label, build, iters = PROBLEMS[key]
        problem = dataclasses.replace(build(args.device), metrics=None)
        unit = lower_gradient_ms(problem, 30)
        rows.append({"problem": label, "method": "grad_y g (the unit)", "ms / iteration": unit,
                     "lower-level gradients": 1.0, "status": ""})
        variants = [(m, False) for m in args.methods.split(",")]
        if not args.no_compile:
            variants.append(("pgdqp", True))
        for method, compile in variants:
            options = HYPER_CLEANING.get(method, {}) if key.startswith("hc") else {}
            ms, result = iteration_ms(problem, method, options, iters, compile)
            status = result.status.name + (f" at {result.n_iter}" if result.status.name == "DIVERGED" else "")
            rows.append({"problem": label, "method": method + (" (oracle=compiled)" if compile else ""),
                         "ms / iteration": ms, "lower-level gradients": ms / unit, "status": status})
            print(f"{label:32s} {rows[-1]['method']:24s} {ms:9.3f} ms  {ms / unit:7.2f} x", flush=True)
    table = format_table(rows, list(rows[0]))
    print(table)
    device = args.device or "cpu"
    update_section(args.results, f"iteration-cost {device}", "\n".join([
        f"## Cost of one iteration per solver, in lower-level gradients ({device})",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; device {device}; {args.threads} intra-op thread(s)  ",
        "Wall time per iteration of `solve` (kkt='none', metrics dropped, first 10 iterations left out) "
        "divided by the median time of one grad_y g by autograd. Hyper-cleaning runs of pgdqp, bome and "
        "aid_bio use the steps of configs/; the rest their defaults (a DIVERGED run is timed up to where "
        "it stopped).",
        "",
        table,
    ]))


if __name__ == "__main__":
    main()
