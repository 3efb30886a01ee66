"""pgdqp's three parameter schedules on bilevel problems with known answers.

Closed-form quadratics (`quadratic`: distance to x*) and synthetic-sc (distance of y to
y*(x) and the exact hypergradient norm), after K iterations from the same start:
constant step (Algorithm 1 as written, gamma = 0.01, alpha = 1), the theorem's
parameters, and the practical default (diminishing step, fixed feasibility step, heavy ball).

    python benchmarks/pgdqp_schedules.py [--max-iter 20000] [--quick]
"""
from __future__ import annotations

import argparse
import time

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section

SCHEDULES = {
    "constant (gamma 0.01, alpha 1)": dict(schedule="constant", step_size=0.01, alpha=1.0),
    "theorem 4.2": dict(schedule="theorem"),
    "default (diminishing)": dict(),
}
PROBLEMS = {
    "quadratic 5x5 cond 5": ("quadratic", dict(seed=0)),
    "quadratic 10x8 cond 10": ("quadratic", dict(dim_x=10, dim_y=8, cond=10.0, seed=3)),
    "quadratic 20x20 cond 20": ("quadratic", dict(dim_x=20, dim_y=20, cond=20.0, seed=4)),
    "synthetic-sc": ("synthetic-sc", dict(seed=0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=20000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    K = 500 if args.quick else args.max_iter
    rows = []
    for label, (name, kwargs) in PROBLEMS.items():
        problem = bilevel.PROBLEMS[name](**kwargs)
        for schedule, options in SCHEDULES.items():
            start = time.perf_counter()
            r = bilevel.solve(problem, "pgdqp", max_iter=K, log_every=K, kkt="none", options=options)
            metric = "distance_to_solution" if "distance_to_solution" in r.history else "distance_to_lower"
            rows.append({"problem": label, "schedule": schedule, "status": r.status.name,
                         "error": r.final(metric), "error is": metric, "h": r.final("h"),
                         "ms / iter": 1000 * (time.perf_counter() - start) / K})
            print(rows[-1], flush=True)
    text = "\n".join([f"## pgdqp schedules on problems with known answers ({K} iterations)", "",
                      f"Command: `{command()}`  ", f"Machine: {machine()}", "",
                      format_table(rows, list(rows[0]))])
    print(text)
    update_section(args.results, "pgdqp-schedules", text)


if __name__ == "__main__":
    main()
