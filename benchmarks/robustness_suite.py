"""Every solver with its defaults on the robustness suite (bilevel.problems.bolib.SUITE): BOLIB
test problems with verified optima, lower levels with continua of solutions, strongly convex
quadratics of condition 1 to 1e3 at scales 1e-2 to 1e4, and nonconvex lower levels.

A run succeeds when bolib.success holds at its answer: |F - F*| <= 1e-2 max(1, |F*|) (scaled for
the quadratics), the lower-level gap <= 1e-3 (against the lower level solved globally) and the
point inside the boxes. A run reported COMPLETED whose iterates ran away would be a lie; the
table counts RUNAWAY statuses separately.

    python benchmarks/robustness_suite.py [--methods pgdqp,bome] [--families bolib,continuum]
        [--max-iter 5000] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

import bilevel
from bilevel.bench.report import command, format_table, machine, update_section
from bilevel.problems.bolib import SUITE, success


def run(name: str, method: str, max_iter: int) -> dict:
    problem = SUITE[name]()
    start = time.perf_counter()
    r = bilevel.solve(problem, method, max_iter=max_iter, log_every=max_iter, kkt="none", seed=0)
    verdict = success(problem, r.x, r.y)
    return {"problem": name, "method": method, "status": r.status.name, "success": verdict["success"],
            "F_error": verdict["F_error"], "lower_gap": verdict["lower_gap"], "inside": verdict["inside"],
            "verified": r.success, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(sorted(bilevel.SOLVERS)))
    parser.add_argument("--families", default="bolib,continuum,quadratic,nonconvex")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=None, help="write the table as a section of this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = args.families.split(",")
    names = [n for n in SUITE if n.split("/")[0] in families]
    rows, per_method = [], defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for method in args.methods.split(","):
        for name in names:
            row = run(name, method, args.max_iter)
            rows.append(row)
            cell = per_method[method][name.split("/")[0]]
            cell[0] += row["success"]
            cell[1] += 1
            cell[2] += row["status"] == "RUNAWAY"
            print(f"{method:9s} {name:40s} {row['status']:9s} success={row['success']!s:5s} "
                  f"F_error={row['F_error']:.2e} gap={row['lower_gap']:.2e} {row['seconds']:.1f}s", flush=True)
    summary = [{"method": m, **{f: f"{c[0]}/{c[1]}" + (f" ({c[2]} ran away)" if c[2] else "")
                                for f, c in cells.items()}} for m, cells in per_method.items()]
    table = format_table(summary, ["method", *families])
    completed_runaways = [r for r in rows if r["status"] == "COMPLETED" and not r["inside"]]
    print(table)
    if args.results:
        text = "\n".join(["## Robustness suite (defaults)", "",
                          f"Command: `{command()}`  ", f"Machine: {machine()}  ",
                          f"Successes per family with default settings, {args.max_iter} iterations: |F - F*| <= 1e-2 "
                          "max(1, |F*|), lower-level gap <= 1e-3, inside the boxes (bilevel.problems.bolib.success).", "",
                          table, "", f"Runs outside the boxes reported COMPLETED: {len(completed_runaways)}."])
        update_section(args.results, "robustness-suite", text)


if __name__ == "__main__":
    main()
