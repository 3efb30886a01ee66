"""aid_bio, galet, hjfbio, iaptt_gm and bome with their defaults on the robustness suite's families
(bilevel.problems.bolib.SUITE), before and after a change of defaults, as one RESULTS.md section.

Each run is `bilevel.solve(problem, method, max_iter=K, log_every=K, kkt="none", seed=0)`, as in
benchmarks/robustness_suite.py, scored by bolib.success (|F - F*| <= 1e-2 max(1, |F*|), lower-level
gap <= 1e-3, inside the boxes), and, where the problem knows x*, by |x - x*| (the target of these
methods on the quadratics and the continuum family: 5e-2). Rows carry a label (e.g. "before",
"after") and go to a JSON-lines log; runs already in the log are not repeated.

    OMP_NUM_THREADS=1 python benchmarks/baselines_a_suite.py --label after [--methods bome]
        [--families quadratic,continuum] [--max-iter 5000] [--log runs/baselines_a.jsonl]
        [--results benchmarks/RESULTS.md] [--import-lines OUTPUT_OF_robustness_suite.py]

--hpo-log LOG renders the log of benchmarks/defaults_suite.py (run with --methods of these five) as
the section "baselines-a-hpo" instead.

--import-lines adds the runs printed by benchmarks/robustness_suite.py (for code that predates this
script) under the label, without |x - x*| (that script does not print it).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from robustness_suite import run  # one scored run (benchmarks/ is on sys.path when run as a script)

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.problems.bolib import SUITE

METHODS = ("aid_bio", "galet", "hjfbio", "iaptt_gm", "bome")
X_TARGET = 5e-2


def summary(rows: list[dict]) -> str:
    """Per label and method: successes per family, and for families with x* the worst |x - x*| and how
    many runs land within X_TARGET of x*."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["label"], r["method"])][r["problem"].split("/")[0]].append(r)
    families = sorted({r["problem"].split("/")[0] for r in rows})
    table = []
    for (label, method), by_family in sorted(cells.items(), key=lambda kv: (kv[0][0] != "before", kv[0])):
        row = {"label": label, "method": method}
        for family in families:
            runs = by_family.get(family, [])
            if not runs:
                continue
            text = f"{sum(r['success'] for r in runs)}/{len(runs)}"
            errors = [r["x_error"] for r in runs if r["x_error"] is not None]
            if errors:
                close = sum(e < X_TARGET for e in errors)
                text += f"; x* within {X_TARGET:g}: {close}/{len(errors)}, worst {max(errors):.2g}"
            bad = [r for r in runs if r["status"] not in ("COMPLETED", "CONVERGED")]
            if bad:
                text += "; " + ", ".join(f"{r['problem'].split('/', 1)[1]} {r['status']}" for r in bad)
            row[family] = text
        table.append(row)
    return format_table(table, ["label", "method", *families])


def failures(rows: list[dict], label: str) -> str:
    """The failed BOLIB runs of `label`, one line each (the other families' are in the table)."""
    lines = [f"- {r['method']} {r['problem']}: {r['status']}, F error {r['F_error']:.2g}, lower gap "
             f"{r['lower_gap']:.2g}" + ("" if r["x_error"] is None else f", |x - x*| {r['x_error']:.2g}")
             for r in rows if r["label"] == label and not r["success"] and r["problem"].startswith("bolib/")]
    return "\n".join(lines) or "- none"


def parse_lines(path: str, label: str, max_iter: int) -> list[dict]:
    """The runs printed by benchmarks/robustness_suite.py, one a line:
    `method problem STATUS success=B F_error=E gap=E Ss`."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) != 7 or not parts[3].startswith("success="):
            continue
        rows.append({"label": label, "version": "imported", "problem": parts[1], "method": parts[0],
                     "status": parts[2], "success": parts[3] == "success=True",
                     "F_error": float(parts[4].split("=")[1]), "lower_gap": float(parts[5].split("=")[1]),
                     "x_error": None, "max_iter": max_iter, "seconds": float(parts[6].rstrip("s"))})
    return rows


def hpo_section(log: str, results: str | None, methods: list[str]) -> None:
    """The defaults_suite.py table of these methods, as the section "baselines-a-hpo"."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _robust_set import ENTRIES  # noqa: E402
    from defaults_suite import render  # noqa: E402  (a sibling script)
    rows = [r for r in map(json.loads, Path(log).read_text().splitlines()) if r["method"] in methods]
    table = render(rows, [e.key for e in ENTRIES], methods)
    table = table.replace("## Robustness: every solver", "## Baselines aid_bio, galet, hjfbio, iaptt_gm, bome", 1)
    print(table)
    if results:
        update_section(results, "baselines-a-hpo", table + "\n\nThe runs: `cd benchmarks && python defaults_suite.py "
                       f"--methods {','.join(methods)} --problems KEYS --log {log}`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="the label of these runs (e.g. before, after)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--families", default="quadratic,continuum")
    parser.add_argument("--problems", default=None, help="suite names, comma-separated (instead of --families)")
    parser.add_argument("--max-iter", type=int, default=5000)
    parser.add_argument("--log", default="runs/baselines_a.jsonl")
    parser.add_argument("--results", default=None, help="write the section into this Markdown file")
    parser.add_argument("--import-lines", default=None, help="add the runs printed by robustness_suite.py")
    parser.add_argument("--hpo-log", default=None, help="render this defaults_suite.py log (with --results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.hpo_log:
        hpo_section(args.hpo_log, args.results, args.methods.split(","))
        return
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["label"], r["method"], r["problem"], r["max_iter"]) for r in rows}
    if args.import_lines:
        new = [r for r in parse_lines(args.import_lines, args.label, args.max_iter)
               if (r["label"], r["method"], r["problem"], r["max_iter"]) not in done]
        with log.open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
        done |= {(r["label"], r["method"], r["problem"], r["max_iter"]) for r in new}
    families = args.families.split(",") if not args.import_lines else []
    for method in args.methods.split(","):
        names = args.problems.split(",") if args.problems else [n for n in SUITE if n.split("/")[0] in families]
        for name in names:
            if (args.label, method, name, args.max_iter) in done:
                continue
            row = {"label": args.label, "version": bilevel.__version__, **run(name, method, args.max_iter),
                   "max_iter": args.max_iter}
            rows.append(row)
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            x_text = "" if row["x_error"] is None else f" |x-x*|={row['x_error']:.2e}"
            print(f"{args.label:7s} {method:9s} {name:40s} {row['status']:9s} success={row['success']!s:5s} "
                  f"F_error={row['F_error']:.2e} gap={row['lower_gap']:.2e}{x_text} {row['seconds']:.1f}s", flush=True)
    text = summary(rows)
    print(text)
    if args.results:
        labels = sorted({r["label"] for r in rows}, key=lambda s: (s != "before", s))
        lines = ["## Baselines aid_bio, galet, hjfbio, iaptt_gm, bome on the robustness suite (defaults)", "",
                 f"Command: `{command()}` (once per label; the log holds every label's runs)  ",
                 f"Machine: {machine()}, OMP_NUM_THREADS=1  ",
                 "`bilevel.solve(problem, method, max_iter=K, log_every=K, kkt='none', seed=0)`; success is "
                 "bolib.success (|F - F*| <= 1e-2 max(1, |F*|), lower gap <= 1e-3); |x - x*| where the problem "
                 "knows x*. Iterations: " + ", ".join(sorted({f"{r['max_iter']}" for r in rows})) + ".", "",
                 text, ""]
        for label in labels:
            lines += [f"Failed BOLIB runs ({label}):", "", failures(rows, label), ""]
        update_section(args.results, "baselines-a-suite", "\n".join(lines))


if __name__ == "__main__":
    main()
