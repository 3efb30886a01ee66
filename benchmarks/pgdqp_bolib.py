"""pgdqp's lower-level escapes on the BOLIB problems (bilevel.problems.bolib.SUITE, family bolib):
per problem, the default against the default without escapes (escape_every=0, escape_starts=0).

A run succeeds when bolib.success holds at its answer: |F - F*| <= 1e-2 max(1, |F*|), the
lower-level gap (against the lower level solved globally) <= 1e-3, inside the boxes.

    OMP_NUM_THREADS=1 python benchmarks/pgdqp_bolib.py [--max-iter 5000] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse

import torch
from robustness_suite import run  # one scored run (benchmarks/ is on sys.path when run as a script)

from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.problems.bolib import SUITE

VARIANTS = [("no escapes", {"escape_every": 0, "escape_starts": 0}), ("default", {})]


def cell(v: dict) -> str:
    return f"{'**ok**' if v['success'] else 'miss'} {v['F_error']:.1e} / {v['lower_gap']:.1e} [{v['seconds']:.0f} s]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--results", default=None, help="write the table as a section of this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in SUITE if n.startswith("bolib/")]
    rows, passes = [], {label: 0 for label, _ in VARIANTS}
    for name in names:
        row = {"problem": name.split("/", 1)[1]}
        for label, options in VARIANTS:
            verdict = run(name, "pgdqp", args.max_iter, options)
            passes[label] += verdict["success"]
            row[label] = cell(verdict)
        print(" | ".join(row.values()), flush=True)
        rows.append(row)
    rows.append({"problem": "**successes**", **{label: f"**{n}/{len(names)}**" for label, n in passes.items()}})
    table = format_table(rows, ["problem", *passes])
    print(table)
    if args.results:
        text = "\n".join(["## pgdqp on BOLIB: lower-level escapes (defaults, one seed)", "",
                          f"Command: `{command()}`  ", f"Machine: {machine()}, OMP_NUM_THREADS=1  ",
                          f"{args.max_iter} iterations. Each cell: ok/miss (bilevel.problems.bolib.success), "
                          "|F - F*| / lower-level gap, wall time. `no escapes`: escape_every=0, escape_starts=0 "
                          "(the QP step alone, with block steps and the curvature floors).", "", table])
        update_section(args.results, "pgdqp-bolib", text)


if __name__ == "__main__":
    main()
