"""Autodiff back-ends of the oracle, compiled and not, and the cost of subnormal floats.

1. Each oracle operation by torch.autograd (`bilevel.Oracle`, the default), by torch.func
   transforms (`bilevel.core.oracles.Func`) and by those compiled with torch.compile
   (`solve(..., oracle="compiled")`), on hyper-cleaning (784, linear and MLP) and synthetic-sc.
2. pgdqp's two oracle calls per iteration on hyper-cleaning at a point where the weights of
   the corrupted samples are subnormal floats (x = -88 there: sigmoid(x) = 6e-39 < 1.2e-38),
   with and without flushing subnormals to zero, against a point with normal weights.

    python benchmarks/autodiff.py [--threads 1] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.core.oracles import Autograd, Func, Oracle

PROBLEMS = {
    "hyper-cleaning (784, linear)": lambda: bilevel.PROBLEMS["hyper-cleaning"](),
    "hyper-cleaning (784, MLP 50)": lambda: bilevel.PROBLEMS["hyper-cleaning"](model="mlp"),
    "synthetic-sc": lambda: bilevel.PROBLEMS["synthetic-sc"](),
}
OPERATIONS = ("grad_f", "grad_g_y", "h_and_grad", "vjp_grad_y_g", "jvp_grad_y_g", "hvp_f")


def median_ms(work: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def arguments(problem: bilevel.BilevelProblem) -> dict[str, tuple]:
    gen = torch.Generator().manual_seed(0)
    x = problem.x0 + 0.1 * torch.randn(problem.x0.shape, generator=gen, dtype=problem.x0.dtype)
    y = problem.y0 + 0.01 * torch.randn(problem.y0.shape, generator=gen, dtype=problem.y0.dtype)
    vx, vy = torch.randn_like(x), torch.randn_like(y)
    return {"grad_f": (x, y), "grad_g_y": (x, y), "h_and_grad": (x, y), "vjp_grad_y_g": (x, y, vy),
            "jvp_grad_y_g": (x, y, vx, vy), "hvp_f": (x, y, vx, vy)}


def backends_table(repeats: int, compile: bool) -> str:
    rows = []
    for label, build in PROBLEMS.items():
        problem = build()
        args = arguments(problem)
        oracles = {"autograd (Oracle)": Oracle(Autograd(problem.f, problem.g)),
                   "torch.func (Func)": Oracle(Func(problem.f, problem.g))}
        if compile:
            oracles["torch.func, compiled"] = Oracle(Func(problem.f, problem.g, compile=True))
        for op in OPERATIONS:
            row = {"problem": label, "operation": op}
            for name, oracle in oracles.items():
                row[f"{name} ms"] = median_ms(lambda: getattr(oracle, op)(*args[op]), repeats)
            rows.append(row)
            print(row, flush=True)
    return format_table(rows, list(rows[0]))


def denormals_table(repeats: int) -> str:
    problem = bilevel.PROBLEMS["hyper-cleaning"]()
    corrupted = problem.info["corrupted_mask"]
    oracle = Oracle(Autograd(problem.f, problem.g))
    y = 0.01 * torch.randn(problem.y0.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for label, value in (("normal (x = 0 on corrupted samples)", 0.0), ("subnormal (x = -88 on corrupted)", -88.0)):
        x = torch.where(corrupted, torch.tensor(value), torch.tensor(5.0))
        row = {"weights of the corrupted samples": label, "sigmoid(x)": float(torch.sigmoid(torch.tensor(value)))}
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            row[f"ms, flush={flush}"] = median_ms(lambda: (oracle.grad_f(x, y), oracle.h_and_grad(x, y)), repeats)
        torch.set_flush_denormal(False)
        rows.append(row)
        print(row, flush=True)
    return format_table(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backends = backends_table(args.repeats, not args.no_compile)
    denormals = denormals_table(args.repeats)
    print(backends, denormals, sep="\n\n")
    update_section(args.results, "autodiff", "\n".join([
        "## Oracle back-ends, and subnormal floats",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; {args.threads} intra-op thread(s)  ",
        f"Median of {args.repeats} calls after 3 warm-up calls (compilation happens in the warm-up).",
        "",
        backends,
        "",
        "pgdqp's oracle calls of one iteration (grad f and the double backward of h) on hyper-cleaning "
        "(784, linear, float32):",
        "",
        denormals,
    ]))


if __name__ == "__main__":
    main()
