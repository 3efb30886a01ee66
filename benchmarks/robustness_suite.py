"""Every solver with its defaults on the robustness suite (bilevel.problems.bolib.SUITE): BOLIB
test problems with verified optima, lower levels with continua of solutions, strongly convex
quadratics of condition 1 to 1e3 at scales 1e-2 to 1e4, and nonconvex lower levels.

A run succeeds when bolib.success holds at its answer: |F - F*| <= 1e-2 max(1, |F*|) (scaled for
the quadratics), the lower-level gap <= 1e-3 (against the lower level solved globally) and the
point inside the boxes. A run reported COMPLETED whose iterates ran away would be a lie; the
table counts RUNAWAY statuses separately.

    python benchmarks/robustness_suite.py [--methods pgdqp,bome] [--families bolib,continuum]
        [--max-iter 5000] [--jobs 2] [--log runs/robustness_suite.jsonl] [--results benchmarks/RESULTS.md]

Every finished run is a line of the log: a run that dies loses only the run in progress, and
the command run again goes on from there.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.problems.bolib import SUITE, success


def run(name: str, method: str, max_iter: int, options: dict | None = None) -> dict:
    """One run of a suite problem, scored by bolib.success (also |x - x*| where x* is known; the
    other suite scripts, baselines_a_suite.py and pgdqp_bolib.py, run through this too)."""
    problem = SUITE[name]()
    start = time.perf_counter()
    r = bilevel.solve(problem, method, max_iter=max_iter, log_every=max_iter, kkt="none", seed=0, options=options)
    verdict = success(problem, r.x, r.y)
    x_star = (problem.info or {}).get("x_star")
    x_error = None if x_star is None else float(torch.linalg.vector_norm(r.x - x_star))
    return {"problem": name, "method": method, "status": r.status.name, "success": verdict["success"],
            "F_error": verdict["F_error"], "lower_gap": verdict["lower_gap"], "inside": verdict["inside"],
            "x_error": x_error, "verified": r.success, "seconds": time.perf_counter() - start}


def _run_logged(job: tuple[str, str, int, int]) -> dict:
    name, method, max_iter, threads = job
    torch.set_num_threads(threads)
    return {**run(name, method, max_iter), "max_iter": max_iter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(sorted(bilevel.SOLVERS)))
    parser.add_argument("--families", default="bolib,continuum,quadratic,nonconvex")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    parser.add_argument("--log", default="runs/robustness_suite.jsonl",
                        help="one JSON line per finished run; runs already there are not repeated")
    parser.add_argument("--results", default=None, help="write the table as a section of this Markdown file")
    parser.add_argument("--no-run", action="store_true", help="only the table of the runs already in the log")
    parser.add_argument("--section", default="robustness-suite", help="the section of --results to write")
    args = parser.parse_args()
    families = args.families.split(",")
    methods = args.methods.split(",")
    names = [n for n in SUITE if n.split("/")[0] in families]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["method"], row["problem"], row["max_iter"])] = row
    jobs = [(name, method, args.max_iter, args.threads) for method in methods for name in names
            if (method, name, args.max_iter) not in done and not args.no_run]
    with ProcessPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(_run_logged, job) for job in jobs]):
            row = future.result()
            done[(row["method"], row["problem"], row["max_iter"])] = row
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{row['method']:9s} {row['problem']:40s} {row['status']:9s} success={row['success']!s:5s} "
                  f"F_error={row['F_error']:.2e} gap={row['lower_gap']:.2e} {row['seconds']:.1f}s", flush=True)
    rows = [done[(m, n, args.max_iter)] for m in methods for n in names if (m, n, args.max_iter) in done]
    per_method = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    misses = defaultdict(list)
    for row in rows:
        cell = per_method[row["method"]][row["problem"].split("/")[0]]
        cell[0] += row["success"]
        cell[1] += 1
        cell[2] += row["status"] == "RUNAWAY"
        if not row["success"]:
            misses[row["method"]].append(row["problem"].split("/", 1)[-1] + ("" if row["status"] == "COMPLETED"
                                                                            else f" ({row['status']})"))
    summary = [{"method": m, **{f: f"{c[0]}/{c[1]}" + (f" ({c[2]} ran away)" if c[2] else "")
                                for f, c in cells.items()}} for m, cells in per_method.items()]
    table = format_table(summary, ["method", *families])
    completed_outside = [r for r in rows if r["status"] == "COMPLETED" and not r["inside"]]
    success_lies = [r for r in rows if r["verified"] and r["status"] in ("RUNAWAY", "DIVERGED")]
    print(table)
    if args.results:
        text = ["## Robustness suite (defaults)", "",
                f"Command: `{command()}`  ", f"Machine: {machine()}, {args.jobs} run(s) at a time, "
                f"{args.threads} thread(s) each  ",
                f"Successes per family with default settings, {args.max_iter} iterations: |F - F*| <= 1e-2 "
                "max(1, |F*|), lower-level gap <= 1e-3, inside the boxes (bilevel.problems.bolib.success). "
                "RUNAWAY counts runs whose iterates grew without bound (reported as such, success False).", "",
                table, "", f"Runs finished: {len(rows)} of {len(methods) * len(names)} (each cell counts the "
                "finished runs of its family). "
                f"Runs outside the boxes reported COMPLETED: {len(completed_outside)}. "
                f"Runs RUNAWAY or DIVERGED that claimed success: {len(success_lies)}.", "",
                "Misses per method (status when not COMPLETED):", ""]
        text += [f"- {m}: {', '.join(misses[m]) or 'none'}" for m in methods]
        update_section(args.results, args.section, "\n".join(text))


if __name__ == "__main__":
    main()
