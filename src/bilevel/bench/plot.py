"""Plots: median and a quantile band over seeds, per method, against iterations, time or oracle calls."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

X_AXES = {"iter": "iteration", "time": "time (s)", "oracle_calls": "oracle calls"}
# beyond this magnitude a value (a diverging run's last finite iterates, e.g. 7e306) cannot be
# drawn: the margins of a log axis overflow and the axis comes out wrong
DRAWABLE = 1e150


def drawable(values: pd.Series) -> pd.Series:
    """values with the non-finite ones, and those beyond +-DRAWABLE, made missing."""
    values = values.astype(float)
    with np.errstate(invalid="ignore"):
        return values.where(np.isfinite(values) & (values.abs() <= DRAWABLE))


def band(frame: pd.DataFrame, x: str, metric: str, quantiles: tuple[float, float] = (0.25, 0.75),
         points: int = 200) -> pd.DataFrame:
    """Median and quantiles of `metric` over runs, on a common grid of `x`.

    Each run is interpolated linearly on the grid (NaN outside its own range, except that
    on the iteration axis a finished run keeps its last value) so that runs logged at
    different times or oracle counts can be combined.
    """
    runs = [g.sort_values(x) for _, g in frame.groupby("run_id")]
    lo = min(float(r[x].min()) for r in runs)
    hi = max(float(r[x].max()) for r in runs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    values = []
    for r in runs:
        xs, ys = r[x].to_numpy(float), r[metric].to_numpy(float)
        v = np.interp(grid, xs, ys, left=np.nan, right=ys[-1] if x == "iter" else np.nan)
        values.append(v)
    stack = np.vstack(values)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return pd.DataFrame({x: grid, "median": np.nanmedian(stack, 0),
                                 "low": np.nanquantile(stack, quantiles[0], 0),
                                 "high": np.nanquantile(stack, quantiles[1], 0)})


def plot_metrics(frame: pd.DataFrame, metrics: Sequence[str], path: str | Path, *, x: str = "iter",
                 group: str = "method", logy: bool | None = None, title: str = "",
                 reference_lines: dict[str, dict[str, float]] | None = None,
                 configs: dict[str, str] | None = None) -> Path:
    """One panel per metric: median (line) and interquartile band (shade) per group.

    Args:
        frame: tidy results with columns run_id, `group`, `x` and the metrics.
        metrics: the columns to plot, one panel each.
        path: the PNG to write.
        x: "iter", "time" or "oracle_calls".
        logy: log scale on y; default: when a metric is positive and spans > 2 decades.
        reference_lines: metric -> {label: value}, drawn as dashed horizontal lines.
        configs: group -> the configuration plotted for it, shown in the legend.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise ValueError(f"Invalid x: {x!r} (expected one of {', '.join(X_AXES)})")
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        raise ValueError(f"Invalid metric: {missing[0]!r} (columns present: {', '.join(sorted(frame.columns))})")
    frame = frame.assign(**{m: drawable(frame[m]) for m in metrics})   # a diverged run draws up to its end
    ncols = min(len(metrics), 2 if len(metrics) == 4 else 3)
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        for name, sub in frame.groupby(group, sort=True):
            data = sub.dropna(subset=[metric])
            if data.empty:
                continue
            b = band(data, x, metric)
            label = str(name) + (f" ({configs[str(name)]})" if configs and str(name) in configs else "")
            line, = ax.plot(b[x], b["median"], label=label)
            ax.fill_between(b[x], b["low"], b["high"], color=line.get_color(), alpha=0.2, linewidth=0)
        for label, value in (reference_lines or {}).get(metric, {}).items():
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
            ax.annotate(label, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize=7, color="gray")
        col = frame[metric].dropna()
        use_log = logy if logy is not None else bool(len(col) and (col > 0).all() and col.max() > 100 * col.min())
        if use_log:
            ax.set_yscale("log")
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if title:
        fig.suptitle(title)
    # one legend for the figure, under the panels: labels with configurations are long
    legend = fig.legend(handles, labels, loc="lower center", ncol=1 if configs else min(len(labels), 4),
                        fontsize=8, frameon=False)
    fig.canvas.draw()
    height = legend.get_window_extent().height / fig.get_figheight() / fig.dpi
    fig.tight_layout(rect=(0, min(height + 0.01, 0.5), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
