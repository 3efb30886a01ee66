"""The cost of a stochastic step: soba and saba through `bilevel.solve` against a hand-written
eager PyTorch loop of SOBA's update, on minibatch hyper-cleaning (linear 784 x 10).

    python benchmarks/stochastic_speed.py [--steps 1000] [--repeats 5] [--batch 64] [--profile]

All variants run in this process, interleaved, on one thread, from the same start with the
same constant steps; the hand-written loop draws the batches solve's sampler draws (same
generator, same order), so it must reach soba's iterate (checked: last column). Reported:
the median over repeats of ms per step, and each variant's ratio to the hand-written loop
measured in the same repeat (robust to load from other jobs on a shared machine).
The compiled row's step is compiled in the warm-up run and reused by the timed ones (the same
shapes: dynamo's guards pass).
`--profile` prints where a soba and a saba step's time goes (cProfile, top entries).
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import statistics
import sys
from pathlib import Path

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, relative_difference, update_section

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import interleaved, median_ratio  # noqa: E402

RHO, GAMMA = 0.1, 1.0        # constant steps on (y, v) and on x


def hand_written_soba(problem: bilevel.BilevelProblem, steps: int, batch: int, seed: int):
    """SOBA with constant steps written out with torch.autograd: per step one forward of g with
    the graph of grad_y g kept, one backward through it for (grad_xy g v, grad_yy g v), one
    gradient of f."""
    f, g = problem.batched
    upper, lower = problem.upper_data, problem.lower_data
    generator = torch.Generator().manual_seed(seed)

    def draw():
        return (torch.randint(upper.size, (batch,), generator=generator),
                torch.randint(lower.size, (batch,), generator=generator))
    draw()                                   # the batch solve's sampler draws before the first step
    x, y = problem.x0.clone(), problem.y0.clone()
    v = torch.zeros_like(y)
    for _ in range(steps):
        i_f, i_g = draw()
        b_f, b_g = upper.take(i_f), lower.take(i_g)
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        (gy,) = torch.autograd.grad(g(xr, yr, b_g), (yr,), create_graph=True)
        jx, jy = torch.autograd.grad((gy * v).sum(), (xr, yr))
        fx, fy = torch.autograd.grad(f(xr, yr, b_f), (xr, yr), allow_unused=True)
        fx = torch.zeros_like(x) if fx is None else fx
        x, y, v = x - GAMMA * (jx + fx), y - RHO * gy.detach(), v - RHO * (jy + fy)
    return x, y


def solve(problem, method: str, steps: int, batch: int, seed: int, defaults: bool = False, oracle: str = "autograd"):
    options = {} if defaults else dict(step_size=GAMMA, inner_step_size=RHO, schedule="constant")
    return bilevel.solve(problem, method, options=options, max_iter=steps, log_every=steps, batch_size=batch,
                         seed=seed, kkt="none", verify=False, oracle=oracle)


def profile(problem, method: str, steps: int, batch: int, top: int = 18) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    solve(problem, method, steps, batch, seed=0)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=3, help="the problem's seed (split and corruption)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = dataclasses.replace(bilevel.PROBLEMS["hyper-cleaning"](minibatch=True, seed=args.seed),
                                  metrics=None, final_metrics=None)
    if args.profile:
        for method in ("soba", "saba"):
            print(f"--- {method}, {args.steps} steps\n{profile(problem, method, args.steps, args.batch)}")
        return
    runs = {"hand-written eager loop (SOBA)": lambda: hand_written_soba(problem, args.steps, args.batch, 0),
            "solve soba": lambda: solve(problem, "soba", args.steps, args.batch, 0),
            "solve saba": lambda: solve(problem, "saba", args.steps, args.batch, 0),
            "solve soba, oracle='compiled' (the step one compiled graph)":
                lambda: solve(problem, "soba", args.steps, args.batch, 0, oracle="compiled"),
            "solve soba, default steps": lambda: solve(problem, "soba", args.steps, args.batch, 0, defaults=True),
            "solve saba, default steps": lambda: solve(problem, "saba", args.steps, args.batch, 0, defaults=True)}
    for run in runs.values():                  # warm-up (and compilation)
        run()
    times, outputs = interleaved(runs, args.repeats)
    hand_x = outputs["hand-written eager loop (SOBA)"][0]
    soba_x = outputs["solve soba"].x
    difference = relative_difference(soba_x, hand_x)
    base = times["hand-written eager loop (SOBA)"]
    soba = times["solve soba"]
    rows = []
    for name, t in times.items():
        rows.append({"variant": name, "ms / step (median)": 1e3 * statistics.median(t) / args.steps,
                     "x hand-written loop (median of per-repeat ratios)":
                         median_ratio(t, base),
                     "x solve soba": median_ratio(t, soba),
                     "max relative difference of x from the hand loop":
                         difference if name == "solve soba" else ""})
    table = format_table(rows, list(rows[0]))
    print(table)
    update_section(args.results, "stochastic-speed", "\n".join([
        f"## Cost of a stochastic step: soba and saba against a hand-written loop (batch {args.batch})", "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; one intra-op thread, pinned to one core (taskset -c 1); the machine was shared "
        f"with other jobs while measuring, so only the ratios (taken within each repeat) are comparable  ",
        f"Minibatch hyper-cleaning (embedded MNIST sample, seed {args.seed}: 2000 training samples, linear "
        f"784 x 10, float32), {args.steps} steps with constant steps rho = {RHO}, gamma = {GAMMA} (the "
        f"'default steps' rows: AdaGrad-norm x steps, the curvature estimate at the start and its refresh "
        f"every 10 steps), "
        f"{args.repeats} interleaved repeats; solve with kkt='none', verify=False, metrics dropped.", "",
        table]))


if __name__ == "__main__":
    main()
