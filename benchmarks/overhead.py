"""The overhead of `bilevel.solve` over a minimal hand-written loop of the same pgdqp update.

Both run in this process on the same problem from the same start, with the same constants
(taken from the solver's own set-up), and must reach the same iterate; the problem's
metrics are dropped so that both time only the method. The hand-written loop starts from the
constants the solver's init computed (untimed); the other variants run init (timed), and
solve by default also verifies its answer (a lower-level re-solve, once per run). A third variant calls the solver's
step in a plain loop: solve's overhead over it is the loop's own (guard, history, clock); its
overhead over the hand-written loop is what the step computes beyond the update (diagnostics,
safeguards). Overheads are medians of ratios taken within each repetition (robust to load
from other jobs). `solve` logs every 10 iterations
with kkt="none" (the step's own diagnostics) and, in a second row, with its default
kkt="method".

    python benchmarks/overhead.py [--iters 300] [--repeats 5] [--threads 1]

Settings: hyper-cleaning (embedded MNIST sample, 784 pixels, linear, float32) with the
constant schedule that cleans there (step 1000 on x, 1 on y, alpha 1), and synthetic-sc
(dim 20, float64) with the diminishing schedule and momentum (the hand-written loop writes out the
QP of eq. 8; the default "projected" schedule's two solves and line search are not written out here),
its lower-level escape checks off in every variant (the hand-written loop has none).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section

SETTINGS = {
    "hyper-cleaning (784, linear)": (lambda: bilevel.PROBLEMS["hyper-cleaning"](),
                                     dict(schedule="constant", step_size=1000.0, lower_step_size=1.0, alpha=1.0)),
    "synthetic-sc": (lambda: bilevel.PROBLEMS["synthetic-sc"](seed=0), dict(schedule="diminishing")),
}


def hand_written_loop(problem: bilevel.BilevelProblem, solver: bilevel.solvers.PGDQP, start, iters: int):
    """pgdqp written out: gradients by torch.autograd, the QP's closed form, the step."""
    f, g = problem.f, problem.g
    x, y = problem.x0.clone(), problem.y0.clone()
    gamma0, lipschitz_h = start.gamma0, start.lipschitz_h
    momentum = 0.9 if solver.schedule == "diminishing" else 0.0
    vx = vy = None
    for k in range(iters):
        if solver.schedule == "diminishing":
            gamma = gamma0 / (1.0 + k / solver.decay)
            alpha = solver.feasibility / (gamma * lipschitz_h)
        else:
            gamma, alpha = gamma0, start.alpha0
        y_scale = 1.0 if solver.lower_step_size is None else solver.lower_step_size / gamma
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        fx, fy = torch.autograd.grad(f(xr, yr), (xr, yr), allow_unused=True)
        fx = torch.zeros_like(x) if fx is None else fx
        (gy,) = torch.autograd.grad(g(xr, yr), (yr,), create_graph=True)
        hx, hy = torch.autograd.grad((gy * gy).sum(), (xr, yr))
        hh = (hx * hx).sum() + y_scale * (hy * hy).sum()
        hdf = (hx * fx).sum() + y_scale * (hy * fy).sum()
        lam = torch.clamp(alpha * hh - hdf, min=0) / hh
        dx, dy = -gamma * (fx + lam * hx), -gamma * y_scale * (fy + lam * hy)
        if momentum and vx is not None:
            dx, dy = dx + momentum * vx, dy + momentum * vy
        vx, vy = dx, dy
        x, y = x + dx, y + dy
    return x, y


def bare_steps(problem: bilevel.BilevelProblem, solver: bilevel.solvers.PGDQP, iters: int):
    """The solver's own init and step in a plain loop: no guard, history, clock or stop tests (what
    solve adds is the difference from this; what pgdqp's step adds to the update, its diagnostics
    and safeguards, is this one's difference from the hand-written loop)."""
    oracle = bilevel.Oracle(bilevel.Autograd(problem.f, problem.g))
    state = solver.init(problem, oracle, max_iter=iters, generator=torch.Generator().manual_seed(0))
    for _ in range(iters):
        state, _ = solver.step(problem, oracle, state)
    return state.x, state.y


def interleaved(runs: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """({name: seconds per repetition}, {name: the last output}): every run once per repetition, in
    turn, so that drifts in machine load hit every variant alike."""
    times = {name: [] for name in runs}
    outputs = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def median_ratio(times: list[float], reference: list[float]) -> float:
    """The median over repetitions of time / reference time in the same repetition."""
    return statistics.median(a / b for a, b in zip(times, reference))


def measure(label: str, build, options: dict, iters: int, repeats: int) -> list[dict]:
    problem = dataclasses.replace(build(), metrics=None)
    solver = bilevel.solvers.PGDQP(**options)
    oracle = bilevel.Oracle(bilevel.Autograd(problem.f, problem.g))
    start = solver.init(problem, oracle, max_iter=iters, generator=torch.Generator().manual_seed(0))
    # the same update as the hand-written loop: its constants, and no lower-level escape checks (it has none)
    solver = dataclasses.replace(solver, lipschitz_f=start.lipschitz_f if solver.schedule != "constant" else None,
                                 lipschitz_h=start.lipschitz_h if solver.schedule != "constant" else None,
                                 escape_every=0)
    began = time.perf_counter()
    solver.init(problem, oracle, max_iter=iters, generator=torch.Generator().manual_seed(0))
    init_ms = 1e3 * (time.perf_counter() - began)
    runs = {
        "hand-written loop": lambda: hand_written_loop(problem, solver, start, iters),
        "solver.step in a bare loop": lambda: bare_steps(problem, solver, iters),
        "solve, log_every=10, kkt='none', verify=False": lambda: bilevel.solve(
            problem, solver, max_iter=iters, log_every=10, kkt="none", verify=False),
        "solve, log_every=10, kkt='none'": lambda: bilevel.solve(problem, solver, max_iter=iters, log_every=10,
                                                                  kkt="none"),
        "solve, log_every=10, kkt='method'": lambda: bilevel.solve(problem, solver, max_iter=iters, log_every=10),
    }
    times, outputs = interleaved(runs, repeats)
    hand_x = outputs["hand-written loop"][0]
    solve_x = outputs["solve, log_every=10, kkt='none'"].x
    error = float((hand_x - solve_x).abs().max() / hand_x.abs().max().clamp(min=1e-30))
    base, bare = times["hand-written loop"], times["solver.step in a bare loop"]
    return [{"setting": label, "variant": name, "ms / iteration (median)": 1e3 * statistics.median(t) / iters,
             "ms / iteration (min)": 1e3 * min(t) / iters,
             "overhead over the hand-written loop": f"{100 * (median_ratio(t, base) - 1):+.1f}%",
             "overhead over the bare step loop": f"{100 * (median_ratio(t, bare) - 1):+.1f}%",
             "max relative difference of x": f"{error:.1e}" if name.startswith("solve,") else "",
             "init ms (once per run)": f"{init_ms:.3g}" if name == "solver.step in a bare loop" else ""}
            for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, (build, options) in SETTINGS.items():
        rows += measure(label, build, options, args.iters, args.repeats)
    table = format_table(rows, list(rows[0]))
    print(table)
    update_section(args.results, "overhead", "\n".join([
        "## Overhead of `bilevel.solve` over a hand-written pgdqp loop",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; {args.threads} intra-op thread(s); shared with other jobs while measuring: "
        "compare the overheads (medians of ratios within each repetition), not the milliseconds  ",
        f"{args.iters} iterations, {args.repeats} interleaved repetitions; metrics dropped; the hand-written "
        "loop and solve reach the same x (last column). The hand-written loop starts from init's constants "
        "(init untimed); the bare step loop and solve run init (its time in the last column, once per run: it "
        "weighs less the more iterations); solve verifies its answer unless verify=False (also once per run). "
        "pgdqp's lower-level escape checks are off (escape_every=0): the hand-written loop has none.",
        "",
        table,
    ]))


if __name__ == "__main__":
    main()
