"""Peak memory of one step of every solver on hyper-cleaning with the MLP, against one plain
training step of the same network (a gradient of the weighted training loss and an SGD update).

    python benchmarks/memory.py [--device cpu|cuda]

On CUDA: torch.cuda.max_memory_allocated over the step, above what was allocated before it.
On the CPU: the torch profiler's allocations and frees in time order, their running sum's
maximum above the start (torch's CPU allocator keeps no statistics of its own).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section

OPTIONS = {"pgdqp": dict(schedule="constant", step_size=30.0, lower_step_size=0.3, alpha=1.0)}


def peak_bytes(work: Callable[[], object], device: str) -> int:
    """The most memory that `work` held at once beyond what was held before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def plain_training_step(problem: bilevel.BilevelProblem, learning_rate: float = 0.1) -> Callable[[], object]:
    """One step of SGD on the weighted training loss g(x0, .) of the same network."""
    def work():
        y = problem.y0.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem.g(problem.x0, y), (y,))
        return y.detach() - learning_rate * grad
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    problem = dataclasses.replace(bilevel.PROBLEMS["hyper-cleaning"](model="mlp", hidden=args.hidden,
                                                                     device=args.device), metrics=None)
    base = peak_bytes(plain_training_step(problem), args.device)
    rows = [{"step": "plain training step (gradient of g in y, SGD)", "peak MB": base / 2 ** 20, "x plain step": 1.0}]
    for name in bilevel.SOLVERS:
        solver = bilevel.make_solver(name, OPTIONS.get(name, {}))
        oracle = bilevel.Oracle(bilevel.Autograd(problem.f, problem.g))
        state = solver.init(problem, oracle, max_iter=100, generator=torch.Generator().manual_seed(0))
        state = solver.step(problem, oracle, state)            # a state past the first step (momentum, w, ...)
        used = peak_bytes(lambda: solver.step(problem, oracle, state), args.device)
        rows.append({"step": f"{name} step", "peak MB": used / 2 ** 20, "x plain step": used / base})
        print(f"{name:10s} {used / 2 ** 20:8.2f} MB  {used / base:6.2f} x", flush=True)
    table = format_table(rows, list(rows[0]))
    print(table)
    update_section(args.results, f"memory {args.device}", "\n".join([
        f"## Peak memory of one step, hyper-cleaning with the MLP ({args.device})",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; device {args.device}  ",
        f"Embedded MNIST sample, 784 pixels, {args.hidden} hidden units, float32; memory held at once beyond "
        "what was held before the step (data and iterate excluded). Solvers with their defaults "
        "(pgdqp as in configs/fig3_mlp.yaml).",
        "",
        table,
    ]))


if __name__ == "__main__":
    main()
