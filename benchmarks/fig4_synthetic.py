"""Fig. 4 of the seed paper: pgdqp on the synthetic problems of appendix C.

Left panels: ||F(x, y)|| (exact hypergradient) against iterations on synthetic-sc with the
theorems' parameters (Theorem 4.2: rho = ||grad h||^2; Theorem 4.5: rho = ||grad h|| sqrt(h0))
for several iteration budgets K. Right panels: ||Delta|| and h on synthetic-nc for pgdqp
(practical default), sgf and, where registered, bome.

    python benchmarks/fig4_synthetic.py [--seeds 3] [--out runs/fig4] [--quick]

Writes PNGs into --out and the final numbers into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import bilevel
from bilevel.cli import store, tables
from bilevel.cli.plot import plot_metrics
from bilevel.cli.report import command, format_table, machine, update_section


def run(problem_name: str, method: str, label: str, seed: int, max_iter: int, **options) -> pd.DataFrame:
    problem = bilevel.PROBLEMS[problem_name](seed=seed)
    start = time.perf_counter()
    result = bilevel.solve(problem, method, max_iter=max_iter, log_every=max(max_iter // 100, 1), kkt="none",
                           seed=seed, options=options)
    frame = store.tidy(result, method=label, problem=problem_name, seed=seed, run_id=f"{label}-{seed}")
    frame["wall_s"] = time.perf_counter() - start
    return frame


def final_table(frame: pd.DataFrame, metrics: list[str]) -> str:
    last = tables.final_rows(frame, ["run_id"])
    rows = []
    for label, sub in last.groupby("method", sort=False):
        row = {"setting": label}
        for m in metrics:
            row[f"{m} (median)"] = float(sub[m].median())
            row[f"{m} (min-max)"] = f"{sub[m].min():.3g} to {sub[m].max():.3g}"
        row["wall s / run"] = float(sub["wall_s"].mean())
        rows.append(row)
    return format_table(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/fig4")
    parser.add_argument("--quick", action="store_true", help="small budgets, for a smoke test")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    budgets = (200, 1000) if args.quick else (1000, 5000, 20000)
    nc_iter = 500 if args.quick else 20000
    out = Path(args.out)

    sc = []
    for rho, theorem in (("grad", "Thm 4.2"), ("warm", "Thm 4.5")):
        for K in budgets:
            for seed in range(args.seeds):
                sc.append(run("synthetic-sc", "pgdqp", f"{theorem} K={K}", seed, K, schedule="theorem", rho=rho))
    sc = pd.concat(sc, ignore_index=True)
    plot_metrics(sc[sc["method"].str.startswith("Thm 4.2")], ["hypergradient_norm"], out / "fig4_sc_thm42.png",
                 title="synthetic-sc, Theorem 4.2 parameters")
    plot_metrics(sc[sc["method"].str.startswith("Thm 4.5")], ["hypergradient_norm"], out / "fig4_sc_thm45.png",
                 title="synthetic-sc, Theorem 4.5 parameters")

    nc = []
    methods = [("pgdqp", "pgdqp (default)", {}), ("pgdqp", "pgdqp (decay 30, feasibility 1)",
                                                   {"decay": 30.0, "feasibility": 1.0}), ("sgf", "sgf", {})]
    if "bome" in bilevel.SOLVERS:
        methods.append(("bome", "bome", {}))
    for method, label, options in methods:
        for seed in range(args.seeds):
            nc.append(run("synthetic-nc", method, label, seed, nc_iter, **options))
    nc = pd.concat(nc, ignore_index=True)
    plot_metrics(nc, ["delta_norm", "h"], out / "fig4_nc.png", title="synthetic-nc", logy=True)

    text = "\n".join([
        "## Fig. 4: synthetic problems (appendix C)", "",
        f"Command: `{command()}`  ", f"Machine: {machine()}  ",
        f"Seeds: {args.seeds} (problem data and start drawn from each seed). Plots: {out}/fig4_*.png", "",
        "synthetic-sc, final exact hypergradient norm ||F|| with the theorems' parameters (K = max_iter):", "",
        final_table(sc, ["hypergradient_norm", "distance_to_lower"]), "",
        f"synthetic-nc, {nc_iter} iterations, final ||Delta|| (KKT stationarity at the least-squares "
        "multiplier) and h:", "",
        final_table(nc, ["delta_norm", "h"]),
    ])
    print(text)
    update_section(args.results, "fig4", text)


if __name__ == "__main__":
    main()
