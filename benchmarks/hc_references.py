"""Reference accuracies for data hyper-cleaning: a classifier trained on the corrupted set,
on the validation set only, and on the clean samples only (an oracle), per setting, over seeds.

    python benchmarks/hc_references.py [--seeds 3]

Writes a table into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.problems.hyper_cleaning import reference_accuracies

SETTINGS = {"linear, PCA 82": dict(pca=82), "linear, 784 pixels": {}, "MLP (50 hidden), 784 pixels": dict(model="mlp")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    for label, kwargs in SETTINGS.items():
        values: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            refs = reference_accuracies(bilevel.PROBLEMS["hyper-cleaning"](seed=seed, **kwargs))
            for name, value in refs.items():
                values.setdefault(name, []).append(value)
        row = {"setting": label}
        row.update({name: f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"
                    for name, v in values.items()})
        rows.append(row)
        print(row, flush=True)
    text = "\n".join(["## Hyper-cleaning reference accuracies (test accuracy)", "",
                      f"Command: `{command()}`  ", f"Machine: {machine()}  ",
                      f"Embedded MNIST sample, 2000/1000/2000, 25% uniform wrong labels, seeds 0..{args.seeds - 1}; "
                      "corrupted set: every weight 1/2 (x = 0); clean samples: weight 1 on clean, 0 on corrupted.", "",
                      format_table(rows, list(rows[0]))])
    update_section(args.results, "hc-references", text)
    print(text)


if __name__ == "__main__":
    main()
