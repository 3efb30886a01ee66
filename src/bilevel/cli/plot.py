"""Plots: median and a quantile band over seeds, per method, against iterations, time or oracle calls."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..core.files import atomic_write
from .report import LABELS

X_AXES = {"iter": "iteration", "time": "time (s)", "oracle_calls": "oracle calls"}
# beyond this magnitude a value (a diverging run's last finite iterates, e.g. 7e306) cannot be
# drawn: the margins of a log axis overflow and the axis comes out wrong
DRAWABLE = 1e150


def drawable(values: pd.Series) -> pd.Series:
    """values with the non-finite ones, and those beyond +-DRAWABLE, made missing."""
    values = values.astype(float)
    with np.errstate(invalid="ignore"):
        return values.where(np.isfinite(values) & (values.abs() <= DRAWABLE))


# nonnegative residuals, drawn on a log axis whenever they have a positive value
RESIDUALS = {"h", "lower_gap", "y_distance", "upper_relative", "delta_norm", "hypergradient_norm"}
RESIDUAL_PREFIXES = ("kkt_", "distance_")
RESIDUAL_SUFFIXES = ("_gap", "_error", "_residual", "_distance")
MAX_NAME = 120


def is_residual(metric: str) -> bool:
    """Whether a column is by name a nonnegative residual (h, KKT residuals, gaps, distances,
    errors; its verified_ twin too): drawn on a log axis where its values are >= 0."""
    name = metric.removeprefix("verified_")
    return name in RESIDUALS or name.startswith(RESIDUAL_PREFIXES) or name.endswith(RESIDUAL_SUFFIXES)


def axis_label(metric: str) -> str:
    """The axis label of a column: 'f at the iterate' for f (`report.LABELS`), the name otherwise."""
    return LABELS.get(metric, metric)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in text).strip("_.")


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "-".join(_value(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def problem_slug(problem: str, problem_args: str | dict[str, Any] | None = None) -> str:
    """'stackelberg-build_K=2_x0=1' for problem 'stackelberg:build' with {"K": 2.0, "x0": 1.0}:
    the problem ('/' and the ':' of a module path as '-'), then each builder argument as
    key=value, whole floats without '.0'; only letters, digits and '-_=.' are kept."""
    args = json.loads(problem_args) if isinstance(problem_args, str) else dict(problem_args or {})
    name = problem.replace("/", "-").replace(":", "-")
    return "_".join([_safe(name), *(_safe(f"{k}={_value(v)}") for k, v in sorted(args.items()))])


def figure_name(prefix: str, problem: str, metrics: Sequence[str], x: str, logx: bool = False,
                problem_args: str | dict[str, Any] | None = None) -> str:
    """'plot_coreset_upper_objective-h_time.png', 'plot_stackelberg-build_K=2_x0=1_f_iter.png':
    the problem and its arguments (`problem_slug`), the metrics and the x axis (and '_logx'),
    so that figures of other problems, metrics or axes never overwrite it. A name longer than
    MAX_NAME characters keeps its start and ends in a hash of the whole."""
    name = f"{prefix}_{problem_slug(problem, problem_args)}_{_safe('-'.join(metrics))}_{x}{'_logx' if logx else ''}"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name + ".png"


def band(frame: pd.DataFrame, x: str, metric: str, quantiles: tuple[float, float] = (0.25, 0.75),
         points: int = 200, *, logx: bool = False, logy: bool = False) -> pd.DataFrame:
    """Median and quantiles of `metric` over runs, on a common grid of `x`.

    Every grid point has a value of every run, so the median never jumps where a run ends:
    the grid starts where the last run starts and, on the iteration axis, ends where the
    longest run ends, a run that ended earlier (converged, stopped, diverged) keeping its
    final value; on the time and oracle-call axes it ends where the first run ends (beyond
    it the others' values would be compared with nothing). Runs are interpolated linearly
    between logged rows, in log x with `logx` and in log values with `logy` (geometric
    interpolation, straight on log axes); rows a log axis cannot show (x <= 0, values <= 0)
    are left out. No rows when the runs share no range of x. Where every run has the metric at
    one row only (a final metric, a verified value), one row: the median of those x and the
    median and quantiles of the values.
    """
    def forward(log: bool, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log(values), np.nan) if log else values
    runs = []
    for _, run in frame.groupby("run_id"):
        run = run.sort_values(x)
        xs, ys = forward(logx, run[x].to_numpy(float)), forward(logy, run[metric].to_numpy(float))
        keep = np.isfinite(xs) & np.isfinite(ys)
        if keep.any():
            runs.append((xs[keep], ys[keep]))
    if not runs:
        return pd.DataFrame({x: [], "median": [], "low": [], "high": []})
    back = {False: lambda v: v, True: np.exp}
    if all(len(xs) == 1 for xs, _ in runs):   # a value each run has at one x only (a final metric)
        xs, ys = np.concatenate([xs for xs, _ in runs]), np.concatenate([ys for _, ys in runs])
        return pd.DataFrame({x: back[logx](np.median(xs, keepdims=True)),
                             "median": back[logy](np.median(ys, keepdims=True)),
                             "low": back[logy](np.quantile(ys, quantiles[0], keepdims=True)),
                             "high": back[logy](np.quantile(ys, quantiles[1], keepdims=True))})
    lo = max(xs[0] for xs, _ in runs)
    hi = (max if x == "iter" else min)(xs[-1] for xs, _ in runs)
    if hi < lo:
        return pd.DataFrame({x: [], "median": [], "low": [], "high": []})
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    stack = np.vstack([np.interp(grid, xs, ys) for xs, ys in runs])   # beyond its end: its final value
    return pd.DataFrame({x: back[logx](grid), "median": back[logy](np.median(stack, 0)),
                         "low": back[logy](np.quantile(stack, quantiles[0], 0)),
                         "high": back[logy](np.quantile(stack, quantiles[1], 0))})


def figure(frame: pd.DataFrame, metrics: Sequence[str], *, x: str = "iter", group: str = "method",
           logy: bool | None = None, logx: bool = False, title: str = "",
           reference_lines: dict[str, dict[str, float]] | None = None, configs: dict[str, str] | None = None) -> Any:
    """The matplotlib Figure of `plot_metrics` (arguments as there; close it with
    matplotlib.pyplot.close)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
    # one color per group in every panel, and one legend entry per group drawn in any panel
    colors = {name: f"C{i % 10}" for i, name in enumerate(sorted(frame[group].dropna().unique(), key=str))}
    handles: dict[Any, Any] = {}
    for ax, metric in zip(axes.flat, metrics):
        col = frame[metric].dropna()
        if logy is not None:
            use_log = logy
        elif is_residual(metric) and len(col) and (col >= 0).all():
            use_log = bool((col > 0).any())
        else:
            use_log = bool(len(col) and (col > 0).all() and col.max() > 100 * col.min())
        undrawn, points, curves = [], [], 0
        for name, sub in frame.groupby(group, sort=True):
            data = sub.dropna(subset=[metric])
            if data.empty:
                continue
            b = band(data, x, metric, logx=logx, logy=use_log)
            if b.empty:
                undrawn.append(str(name))
                continue
            label = str(name) + (f" ({configs[str(name)]})" if configs and str(name) in configs else "")
            if len(b) == 1:   # one point (a metric of the final row only): the median, bars to the quartiles
                below, above = b["median"] - b["low"], b["high"] - b["median"]
                # dodged by 1% of x per group around the true x, so that the groups' bars stay apart
                shift = 1 + 0.01 * (list(colors).index(name) - (len(colors) - 1) / 2)
                line = ax.errorbar(b[x] * shift, b["median"], yerr=[below, above], fmt="o", capsize=3, label=label,
                                   color=colors[name])
                points.append(float(b[x].iloc[0]))
            else:
                curves += 1
                line, = ax.plot(b[x], b["median"], label=label, color=colors[name])
                ax.fill_between(b[x], b["low"], b["high"], color=line.get_color(), alpha=0.2, linewidth=0)
            handles.setdefault(name, line)
        if undrawn:
            ax.text(0.5, 0.5, f"not drawn: the runs of {', '.join(undrawn)} share no range of {X_AXES[x]}",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color="gray", wrap=True)
        references = sorted((reference_lines or {}).get(metric, {}).items(), key=lambda item: item[1])
        for _, value in references:
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
        drawn = len(undrawn) < frame.dropna(subset=[metric])[group].nunique()
        if use_log and drawn:         # a log axis without data cannot place its ticks
            ax.set_yscale("log")
        if logx and drawn:
            ax.set_xscale("log")
        _label_lines(ax, references)
        if points and not curves and min(points) > 0:   # points only: ticks at their true x, the dodge small
            ax.set_xticks(sorted(set(points)))
            ax.set_xlim(0.9 * min(points), 1.1 * max(points))
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(axis_label(metric))
        ax.grid(alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):      # tick labels show the values themselves, never an offset
            formatter = axis.get_major_formatter()
            if isinstance(formatter, matplotlib.ticker.ScalarFormatter):
                formatter.set_useOffset(False)
    handles = [handles[name] for name in colors if name in handles]
    labels = [h.get_label() for h in handles]
    if title:
        fig.suptitle(title)
    # one legend for the figure, under the panels: labels with configurations are long
    legend = fig.legend(handles, labels, loc="lower center", ncol=1 if configs else max(1, min(len(labels), 4)),
                        fontsize=8, frameon=False)
    fig.canvas.draw()
    width = legend.get_window_extent().width / fig.dpi + 0.2       # inches
    if width > fig.get_figwidth():     # a long label wider than the panels: widen, never clip it
        fig.set_figwidth(width)
        fig.canvas.draw()
    height = legend.get_window_extent().height / fig.get_figheight() / fig.dpi
    fig.tight_layout(rect=(0, min(height + 0.01, 0.5), 1, 1))
    return fig


def _label_lines(ax: Any, references: list[tuple[str, float]], fontsize: float = 7) -> None:
    """Name each horizontal reference line above it, at the right end; the name of a line
    closer than a text height to the line below goes to the other end than that line's name,
    so that the names of close lines do not print over each other."""
    to_axes = ax.transAxes.inverted()
    text_height = 1.3 * fontsize / 72 * ax.figure.dpi / max(ax.get_window_extent().height, 1.0)
    previous, side = None, 1.0
    for label, value in references:           # sorted by value
        height = to_axes.transform(ax.transData.transform((0.0, value)))[1]
        side = (1.0 - side) if previous is not None and height - previous < text_height else 1.0
        ax.annotate(label, (side, value), xycoords=("axes fraction", "data"), ha="right" if side else "left",
                    va="bottom", fontsize=fontsize, color="gray")
        previous = height


def plot_metrics(frame: pd.DataFrame, metrics: Sequence[str], path: str | Path, *, x: str = "iter",
                 group: str = "method", logy: bool | None = None, logx: bool = False, title: str = "",
                 reference_lines: dict[str, dict[str, float]] | None = None,
                 configs: dict[str, str] | None = None) -> Path:
    """One panel per metric: median (line) and interquartile band (shade) per group (`band`),
    written atomically as a PNG with the permissions the umask gives (`bilevel.core.files.atomic_write`).

    Args:
        frame: tidy results with columns run_id, `group`, `x` and the metrics.
        metrics: the columns to plot, one panel each.
        path: the PNG to write.
        x: "iter", "time" or "oracle_calls".
        logy: log scale on y, with geometric interpolation; default: for a nonnegative residual
            (`is_residual`: h, KKT residuals, gaps, distances) with a positive value, and for
            any metric that is positive and spans > 2 decades. Values <= 0 are not drawn on a
            log axis.
        logx: log scale on x, interpolated in log x (rows at x <= 0, such as iteration 0, are
            left out). Default False.
        reference_lines: metric -> {label: value}, drawn as dashed horizontal lines.
        configs: group -> the configuration plotted for it (and how it was chosen), shown in
            the legend.
    """
    import matplotlib.pyplot as plt
    fig = figure(frame, metrics, x=x, group=group, logy=logy, logx=logx, title=title,
                 reference_lines=reference_lines, configs=configs)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    finally:
        plt.close(fig)
