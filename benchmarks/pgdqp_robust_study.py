"""Scale-free defaults for pgdqp: candidate step rules measured on the robustness set.

Each candidate is a set of pgdqp options (see the PGDQP docstring: block_steps, decay_horizon,
decay_power, ...); every run is `bilevel.solve(problem, PGDQP(**options), max_iter=K,
log_every=K)` with K from benchmarks/_robust_set.py, scored as there (HPO: honest validation
loss against 1.1 x the best shared weight; hyper-cleaning: retrained accuracy >= 3 points over
uniform weights and AUC >= 0.9; quadratics: |x - x*| < 1e-2; ring: |x - x*| < 1e-2 and
h < 1e-3; synthetic-nc: h <= 1e-6 and ||Delta||^2 <= 1e-3; coreset: upper value < 1e-6).

    OMP_NUM_THREADS=1 python benchmarks/pgdqp_robust_study.py [--candidates 0,5] [--problems p,q]
        [--skip-slow] [--log runs/pgdqp_study.jsonl] [--results benchmarks/RESULTS.md]

Runs already in the log are not repeated (delete it to rerun); the table covers the whole log.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import bilevel
from bilevel.bench.report import command, machine, update_section

sys.path.insert(0, str(Path(__file__).parent))
from _robust_set import BY_KEY, ENTRIES, run, score  # noqa: E402

CANDIDATES = {
    "old default (joint, decay 10)": dict(block_steps="joint"),
    "(b) decay 0.1 K": dict(block_steps="joint", decay_horizon=0.1),
    "(b) decay 0.1 K, 1/sqrt": dict(block_steps="joint", decay_horizon=0.1, decay_power=0.5),
    "(a) blocks: residual": dict(block_steps="residual"),
    "(a) blocks: curvature at (x0, y0)": dict(block_steps="curvature", ratio_warm_start=0),
    "(a) blocks: curvature, warm 30 [new default]": dict(block_steps="curvature", ratio_warm_start=30),
    "(a)+(b) curvature, warm 30, decay 0.1 K": dict(block_steps="curvature", ratio_warm_start=30, decay_horizon=0.1),
    "(c) AdaGrad-norm x step (0.2)": dict(block_steps="adagrad", adagrad_step=0.2),
    "(d) merit f + lambda h": dict(block_steps="merit"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=None, help="comma-separated indices into CANDIDATES (default: all)")
    parser.add_argument("--problems", default=",".join(e.key for e in ENTRIES))
    parser.add_argument("--skip-slow", action="store_true", help="leave out hyper-cleaning on 784 pixels")
    parser.add_argument("--log", default="runs/pgdqp_study.jsonl")
    parser.add_argument("--results", default=None, help="write the table into this Markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    names = list(CANDIDATES)
    chosen = names if args.candidates is None else [names[int(c)] for c in args.candidates.split(",")]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if log.exists():
        done = {(r["candidate"], r["problem"]) for r in map(json.loads, log.read_text().splitlines())}
    for key in args.problems.split(","):
        entry = BY_KEY[key]
        if entry.slow and args.skip_slow:
            continue
        problem = None
        for name in chosen:
            if (name, key) in done:
                continue
            problem = problem or entry.build()
            result, seconds = run(entry, problem, bilevel.solvers.PGDQP(**CANDIDATES[name]), seed=0, kkt="none")
            row = {"candidate": name, "problem": key, "options": CANDIDATES[name], "seconds": seconds,
                   **score(entry, problem, result)}
            print(f"{key:24s} {name:45s} {'PASS' if row['ok'] else 'fail'} {row['text']} ({seconds:.1f} s)", flush=True)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    table = render(rows, [e.key for e in ENTRIES])
    print(table)
    if args.results:
        update_section(args.results, "pgdqp-robust-study", table)


def render(rows: list[dict], problems: list[str]) -> str:
    """Problems x candidates: the score, PASS/fail, and a count of passes per candidate."""
    candidates = [c for c in CANDIDATES if any(r["candidate"] == c for r in rows)]
    cell = {(r["candidate"], r["problem"]): r for r in rows}
    lines = ["## pgdqp: scale-free default candidates on the robustness set", "",
             f"Command: `{command()}`  ", f"Machine: {machine()}, OMP_NUM_THREADS=1  ",
             "Each cell: the score and whether it meets the target (see benchmarks/pgdqp_robust_study.py); "
             "seed 0 for the power iterations.", "",
             "| problem | " + " | ".join(candidates) + " |", "|---|" + "---|" * len(candidates)]
    for p in problems:
        if not any((c, p) in cell for c in candidates):
            continue
        cells = []
        for c in candidates:
            r = cell.get((c, p))
            cells.append("" if r is None else f"{'**PASS**' if r['ok'] else 'fail'} {r['text']} [{r['seconds']:.0f} s]")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    counts = [sum(cell[(c, p)]["ok"] for p in problems if (c, p) in cell) for c in candidates]
    totals = [sum((c, p) in cell for p in problems) for c in candidates]
    lines.append("| **passes** | " + " | ".join(f"**{n}/{t}**" for n, t in zip(counts, totals)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
