"""The baselines' x step: the former fixed numbers against AdaGrad-norm (`bilevel.solvers.base.x_step`).

For each baseline, three x steps on the HPO problem (per-feature L2 weights, breast_cancer, splits 0,
3 and 6; 2000 iterations) and on the closed-form quadratic of tests/test_baselines_*.py (seed 0, the
iterations those tests give the method): the former fixed step, and step_size=None (AdaGrad-norm,
step_k = x_scale / sqrt(sum_i ||d_i||^2 / dim x)) with x_scale 0.1 and 0.2. Every other option is the
method's default. Scores: the honest validation loss (f at the lower level re-solved at x; "half" =
closes half the gap from the start to the best shared weight) and |x - x*|.

    OMP_NUM_THREADS=1 python benchmarks/baseline_x_steps.py [--methods aid_bio,bome] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import time

import torch

import bilevel
from bilevel.cli.main import format_table
from bilevel.cli.report import command, machine, update_section
from bilevel.problems.hpo import best_shared_weight, feature_weight_decay, honest_upper_value

FORMER = {"aid_bio": 0.1, "galet": 0.1, "hjfbio": 0.05, "iaptt_gm": 0.1, "meha": 0.05, "f2ba": 0.05, "bome": 0.02,
          "vpbgd": 0.1, "sgf": 0.01}
QUAD_ITERS = {"aid_bio": 3000, "vpbgd": 5000, "galet": 1000, "bome": 20000, "iaptt_gm": 300, "meha": 3000,
              "f2ba": 1000, "hjfbio": 2000, "sgf": 5000}
SPLITS = (0, 3, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(FORMER))
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    hpo = {}
    for s in SPLITS:
        p = feature_weight_decay(seed=s, honest_metric=False)
        start, best = honest_upper_value(p, p.x0), best_shared_weight(p)["value"]
        hpo[s] = (p, start, best)
    quad = bilevel.PROBLEMS["quadratic"](seed=0)
    rows = []
    for method in args.methods.split(","):
        for label, options in ((f"fixed {FORMER[method]}", dict(step_size=FORMER[method])),
                               ("AdaGrad-norm, x_scale 0.1", dict(step_size=None, x_scale=0.1)),
                               ("AdaGrad-norm, x_scale 0.2", dict(step_size=None, x_scale=0.2))):
            row = {"method": method, "x step": label}
            started = time.perf_counter()
            for s, (p, start, best) in hpo.items():
                r = bilevel.solve(p, method, max_iter=2000, log_every=2000, kkt="none", seed=0, options=options)
                honest = honest_upper_value(p, r.x)
                mark = "half" if honest <= (start + best) / 2 else "-"
                status = "" if r.status.name == "COMPLETED" else f" {r.status.name}"
                row[f"HPO split {s} (start {start:.3f}, best shared {best:.4f})"] = f"{honest:.4f} {mark}{status}"
            k = QUAD_ITERS[method]
            r = bilevel.solve(quad, method, max_iter=k, log_every=k, kkt="none", seed=0, options=options)
            row[f"quadratic |x - x*| (iterations of its test)"] = f"{float((r.x - quad.info['x_star']).norm()):.1e} ({k})"
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(row, flush=True)
    text = "\n".join(["## Baselines: fixed x steps against AdaGrad-norm (HPO and the quadratic)", "",
                      f"Command: `{command()}`  ", f"Machine: {machine()}, OMP_NUM_THREADS=1  ",
                      "HPO: honest validation loss after 2000 iterations, 'half' where it closes half the gap from "
                      "the start to the best shared weight. Defaults now: AdaGrad-norm with x_scale 0.2 (hjfbio 0.1); "
                      "sgf keeps its fixed Euler step 0.01.", "", format_table(rows, list(rows[0]))])
    print(text)
    if args.results:
        update_section(args.results, "baseline-x-steps", text)


if __name__ == "__main__":
    main()
