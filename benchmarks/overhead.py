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

    python benchmarks/overhead.py [--iters 300] [--repeats 5] [--threads 1] [--tables steady overhead]

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
from bilevel.cli.report import record, relative_difference

SETTINGS = {
    "hyper-cleaning (784, linear)": (lambda: bilevel.PROBLEMS["hyper-cleaning"](),
                                     dict(schedule="constant", step_size=1000.0, lower_step_size=1.0, alpha=1.0)),
    "synthetic-sc": (lambda: bilevel.PROBLEMS["synthetic-sc"](seed=0), dict(schedule="diminishing")),
}


def hand_schedule(solver: bilevel.solvers.PGDQP, start, k: int) -> tuple[float, float]:
    """(gamma_k, alpha_k) of the hand-written loops: the solver's schedule from init's constants."""
    if solver.schedule == "diminishing":
        gamma = start.gamma0 / (1.0 + k / solver.decay)
        return gamma, solver.feasibility / (gamma * start.lipschitz_h)
    return start.gamma0, start.alpha0


def hand_written_loop(problem: bilevel.BilevelProblem, solver: bilevel.solvers.PGDQP, start, iters: int,
                      tick=None):
    """pgdqp written out: gradients by torch.autograd, the QP's closed form, the step (tick(k) called
    at every iteration where given)."""
    f, g = problem.f, problem.g
    x, y = problem.x0.clone(), problem.y0.clone()
    momentum = 0.9 if solver.schedule == "diminishing" else 0.0
    vx = vy = None
    for k in range(iters):
        if tick is not None:
            tick(k)
        gamma, alpha = hand_schedule(solver, start, k)
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


def compiled_hand_loop(problem: bilevel.BilevelProblem, solver: bilevel.solvers.PGDQP, start, iters: int,
                       tick=None):
    """The hand-written loop's update (y's step that of x: no lower_step_size) with torch.func
    derivatives, its step compiled by torch.compile (the iteration's step size and alpha enter as
    tensors: one graph for the run). What a user who compiles their own loop pays: the compiled
    peer of solve(oracle="compiled")."""
    f, g = problem.f, problem.g
    momentum = 0.9 if solver.schedule == "diminishing" else 0.0

    def update(x, y, vx, vy, gamma, alpha):
        fx, fy = torch.func.grad(f, argnums=(0, 1))(x, y)
        gy, pullback = torch.func.vjp(lambda a, b: torch.func.grad(g, argnums=1)(a, b), x, y)
        hx, hy = pullback(2 * gy)
        hh = (hx * hx).sum() + (hy * hy).sum()
        lam = torch.clamp(alpha * hh - (hx * fx).sum() - (hy * fy).sum(), min=0) / hh
        dx, dy = -gamma * (fx + lam * hx) + momentum * vx, -gamma * (fy + lam * hy) + momentum * vy
        return x + dx, y + dy, dx, dy

    step = torch.compile(update, dynamic=False)
    x, y = problem.x0.clone(), problem.y0.clone()
    vx, vy = torch.zeros_like(x), torch.zeros_like(y)
    for k in range(iters):
        if tick is not None:
            tick(k)
        gamma, alpha = hand_schedule(solver, start, k)
        x, y, vx, vy = step(x, y, vx, vy, torch.tensor(gamma, dtype=x.dtype), torch.tensor(alpha, dtype=x.dtype))
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
    error = relative_difference(solve_x, hand_x)
    base, bare = times["hand-written loop"], times["solver.step in a bare loop"]
    return [{"setting": label, "variant": name, "ms / iteration (median)": 1e3 * statistics.median(t) / iters,
             "ms / iteration (min)": 1e3 * min(t) / iters,
             "overhead over the hand-written loop": f"{100 * (median_ratio(t, base) - 1):+.1f}%",
             "overhead over the bare step loop": f"{100 * (median_ratio(t, bare) - 1):+.1f}%",
             "max relative difference of x": error if name.startswith("solve,") else "",
             "init ms (once per run)": f"{init_ms:.3g}" if name == "solver.step in a bare loop" else ""}
            for name, t in times.items()]


def steady_state(label: str, build, options: dict, iters: int, repeats: int, skip: int = 300,
                 chunk: int = 100) -> list[dict]:
    """ms per iteration once running, against the hand-written loop, eager and compiled: the clock
    read every `chunk` iterations from iteration `skip` to skip + iters of a run (set-up,
    compilation and the first steps excluded; everything else the loop does between the reads
    included), `repeats` runs of each variant in turn. Reported: the median and the lower quartile
    of the chunks' costs over all runs, the overheads from the lower quartiles (the cost of an
    iteration when the shared machine leaves the run alone: bursts of load from other jobs lengthen
    some chunks of one variant and not those of another)."""
    problem = dataclasses.replace(build(), metrics=None)
    solver = bilevel.solvers.PGDQP(**options)
    oracle = bilevel.Oracle(bilevel.Autograd(problem.f, problem.g))
    start = solver.init(problem, oracle, max_iter=iters, generator=torch.Generator().manual_seed(0))
    solver = dataclasses.replace(solver, lipschitz_f=start.lipschitz_f, lipschitz_h=start.lipschitz_h, escape_every=0)
    total = skip + iters + 1
    stamps: list[float] = []

    def tick(k: int) -> None:
        if skip <= k <= skip + iters and (k - skip) % chunk == 0:
            stamps.append(time.perf_counter())

    def solved(oracle_name: str):
        return lambda: bilevel.solve(problem, solver, max_iter=total, log_every=10, kkt="none", verify=False,
                                     oracle=oracle_name, callback=lambda state, aux: tick(state.k))
    variants = {
        "hand-written loop (autograd, eager)": lambda: hand_written_loop(problem, solver, start, total, tick),
        "hand-written loop, step compiled by torch.compile (torch.func)": lambda: compiled_hand_loop(
            problem, solver, start, total, tick),
        "solve, oracle='autograd'": solved("autograd"),
        "solve, oracle='compiled' (one graph per step)": solved("compiled"),
    }
    chunks: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for _ in range(repeats):
        for name, run in variants.items():
            stamps.clear()
            outputs[name] = run()
            chunks[name] += [(b - a) / chunk for a, b in zip(stamps, stamps[1:])]
    quartile = {name: statistics.quantiles(costs, n=4)[0] for name, costs in chunks.items()}
    names = list(variants)
    eager, compiled = quartile[names[0]], quartile[names[1]]
    reference = outputs[names[0]][0]
    rows = []
    for name in names:
        out = outputs[name]
        x = out.x if hasattr(out, "x") else out[0]
        rows.append({"setting": label, "variant": name,
                     "ms / iteration, steady (median)": f"{1e3 * statistics.median(chunks[name]):.4g}",
                     "(lower quartile)": f"{1e3 * quartile[name]:.4g}",
                     "over the eager hand-written loop": f"{100 * (quartile[name] / eager - 1):+.0f}%",
                     "over the compiled hand-written loop": f"{100 * (quartile[name] / compiled - 1):+.0f}%",
                     "max relative difference of x": relative_difference(x, reference)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--steady-iters", type=int, default=3000,
                        help="iterations between the two runs whose difference gives the steady cost (0: skip)")
    parser.add_argument("--tables", nargs="+", choices=("steady", "overhead"), default=["steady", "overhead"],
                        help="the tables to measure and write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.steady_iters and "steady" in args.tables:
        build, options = SETTINGS["synthetic-sc"]
        rows = steady_state("synthetic-sc (n = 20)", build, options, args.steady_iters, args.repeats)
        record(args.results, "overhead-steady",
               "Overhead of `bilevel.solve` once running, eager and compiled (n = 20)",
               f"{args.threads} intra-op thread(s)", [
            f"ms per iteration between iterations 300 and {300 + args.steady_iters} of a run, read every 100 "
            f"iterations by a callback (solve) or at the top of the loop (hand-written), {args.repeats} runs of "
            "each variant in turn: what a further iteration costs once set-up (init, compilation, the first "
            "steps) is paid, everything the loop does included. The median and the lower quartile of the "
            "100-iteration chunks; overheads from the lower quartiles (bursts of load on the shared machine "
            "lengthen some chunks of one variant and not another's). Escape checks "
            "off, metrics dropped, log_every=10, kkt='none', verify=False. The compiled hand-written loop is "
            "the same update as the eager one with torch.func derivatives, its step compiled by torch.compile; "
            "solve(oracle='compiled') runs pgdqp's step as one graph (`PGDQP._fused_step`)."], rows)
    if "overhead" not in args.tables:
        return
    rows = []
    for label, (build, options) in SETTINGS.items():
        rows += measure(label, build, options, args.iters, args.repeats)
    record(args.results, "overhead", "Overhead of `bilevel.solve` over a hand-written pgdqp loop",
           f"{args.threads} intra-op thread(s); shared with other jobs while measuring: compare the overheads "
           "(medians of ratios within each repetition), not the milliseconds", [
        f"{args.iters} iterations, {args.repeats} interleaved repetitions; metrics dropped; the hand-written "
        "loop and solve reach the same x (last column). The hand-written loop starts from init's constants "
        "(init untimed); the bare step loop and solve run init (its time in the last column, once per run: it "
        "weighs less the more iterations); solve verifies its answer unless verify=False (also once per run). "
        "pgdqp's lower-level escape checks are off (escape_every=0): the hand-written loop has none."], rows)


if __name__ == "__main__":
    main()
