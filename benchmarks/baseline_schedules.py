"""sgf, f2ba, vpbgd and meha with their defaults (or given options) on the robustness suite's
strongly convex quadratics and lower levels with a continuum of solutions: |x - x*| at the end.

Each run is `bilevel.solve(problem, method, max_iter=K, log_every=K, kkt="none", seed=0)` on a
problem of `bilevel.problems.bolib.SUITE` whose info holds x* (the optimistic one where the lower
level has many solutions). A cell is |x - x*| and, where the run did not complete, its status.
Targets: |x - x*| <= 5e-2 on the quadratics and 1e-2 on the continuum family.

    OMP_NUM_THREADS=1 python benchmarks/baseline_schedules.py [--methods sgf,f2ba] [--families quadratic,continuum]
        [--max-iter 5000] [--variant 'label=method:{"penalty": 10}' ...] [--log runs/schedules.jsonl]
        [--results benchmarks/RESULTS.md --key KEY]

With --log, each run is appended to the log as it ends and runs already there are not repeated
(processes for different methods can share one log; the table covers the runs asked for).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import bilevel
from bilevel.cli.report import format_table, machine, update_section
from bilevel.problems.bolib import SUITE

TARGET = {"quadratic": 5e-2, "continuum": 1e-2}


def distance(name: str, method: str, options: dict, max_iter: int) -> tuple[float, str]:
    """|x - x*| after max_iter iterations, and the run's status."""
    problem = SUITE[name]()
    r = bilevel.solve(problem, method, max_iter=max_iter, log_every=max_iter, kkt="none", seed=0, options=options)
    return float((r.x - problem.info["x_star"]).norm()), r.status.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sgf,f2ba,vpbgd,meha")
    parser.add_argument("--variant", action="append", default=[],
                        help="label=method:JSON options (repeatable); replaces --methods")
    parser.add_argument("--families", default="quadratic,continuum")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--log", default=None, help="JSON lines of finished runs, reused and appended to")
    parser.add_argument("--results", default=None, help="write the table as a section of this Markdown file")
    parser.add_argument("--key", default="baseline-schedules", help="the section's key in --results")
    parser.add_argument("--title", default="sgf, f2ba, vpbgd, meha: |x - x*| with defaults")
    parser.add_argument("--note", default="", help="a sentence added under the section's command")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for spec in args.variant:
        label, rest = spec.split("=", 1)
        method, options = rest.split(":", 1)
        runs.append((label, method, json.loads(options)))
    if not runs:
        runs = [(m, m, {}) for m in args.methods.split(",")]
    families = args.families.split(",")
    names = [n for n in SUITE if n.split("/")[0] in families]
    log = Path(args.log) if args.log else None
    done = {}
    if log and log.exists():
        done = {(r["run"], r["problem"], r["max_iter"]): r for r in map(json.loads, log.read_text().splitlines())}
    rows = []
    for label, method, options in runs:
        row, passes, total = {"run": label}, {f: [0, 0] for f in families}, 0.0
        for name in names:
            family = name.split("/")[0]
            key = (label, name, args.max_iter)
            if key in done:
                d, status, seconds = done[key]["distance"], done[key]["status"], done[key].get("seconds")
            else:
                begun = time.perf_counter()
                d, status = distance(name, method, options, args.max_iter)
                seconds = time.perf_counter() - begun
                if log:
                    with log.open("a") as out:
                        out.write(json.dumps({"run": label, "problem": name, "max_iter": args.max_iter, "distance": d,
                                              "status": status, "method": method, "options": options,
                                              "seconds": seconds}) + "\n")
            ok = d <= TARGET.get(family, 1e-2)
            passes[family][0] += ok
            passes[family][1] += 1
            row[name] = f"{d:.1e}" + ("" if ok else " x") + ("" if status == "COMPLETED" else f" {status}")
            total = None if total is None or seconds is None else total + seconds
            print(label, name, row[name], flush=True)
        row.update({f"{f} within {TARGET.get(f, 1e-2):g}": f"{p[0]}/{p[1]}" for f, p in passes.items()})
        row["seconds"] = "-" if total is None else round(total, 1)
        rows.append(row)
    columns = ["run", *[c for c in rows[0] if c not in ("run", "seconds") and "/" not in c], "seconds"]
    summary = format_table(rows, columns)
    detail = format_table([{"problem": n, **{r["run"]: r[n] for r in rows}} for n in names],
                          ["problem", *[r["run"] for r in rows]])
    print(summary)
    print(detail)
    if args.results:
        text = "\n".join([f"## {args.title}", "", f"Command: `python {shlex.join(sys.argv)}`  ",
                          f"Machine: {machine()}, OMP_NUM_THREADS=1  ", *([args.note + "  "] if args.note else []),
                          f"|x - x*| after {args.max_iter} iterations (x: misses the target, 5e-2 on the quadratics, "
                          "1e-2 on the continuum family); solve(..., kkt='none', seed=0).", "", summary, "", detail])
        update_section(args.results, args.key, text)


if __name__ == "__main__":
    main()
