"""History: the rows a run logs (one per logged iterate), kept as columns of floats."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor

from ..core import kkt as metrics
from ..core.oracles import Oracle
from ..core.problem import BilevelProblem
from ..core.state import Aux

KKT_MODES = ("method", "least_squares", "none")
EXPLODED = 1e6      # iterates (or h) this many times their start's size (at least 1) have run away
DRIFT = 10          # at the end: iterates this many times their start's size, still moving as fast as before


def _unbounded(bounds: Any, like: Tensor) -> Tensor:
    """The coordinates of a variable that its box does not hold (a side missing or infinite)."""
    if bounds is None:
        return torch.ones_like(like, dtype=torch.bool)
    sides = [torch.broadcast_to(torch.as_tensor(b, dtype=like.dtype, device=like.device), like.shape).isinf()
             if b is not None else torch.ones_like(like, dtype=torch.bool) for b in bounds]
    return sides[0] | sides[1]


def _floats(values: Iterable[Tensor | float]) -> list[float]:
    """The values as floats, the 0-d tensors among them read with one host synchronisation."""
    values = list(values)
    tensors = [v for v in values if isinstance(v, Tensor)]
    if len(tensors) < 2 or any(t.dim() or t.device != tensors[0].device for t in tensors):
        return [float(v) for v in values]
    read = iter(torch.stack(tensors).tolist())   # (stack promotes: the values are those float() reads)
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]


class History:
    """The logged rows of one run.

    A row describes one iterate z_k: `iter` (k), `time` (seconds of steps before z_k, metrics
    excluded), the oracle counts spent to reach it, the diagnostics the step computed there
    (`Aux.diagnostics`), the KKT residuals that `kkt` asks for, and the problem's metrics.
    KKT residuals and metrics use `oracle` uncounted and are not timed.

    Every row also holds `z_norm`, the largest |entry| of x and y on the coordinates their boxes
    leave free to grow, which `runaway` watches.

    Args:
        problem: the problem (its metrics are called at every row).
        kkt: "method" (the step's kkt_stationarity, or one from the method's multiplier nu,
            the least-squares one where it defines none), "least_squares" (the least-squares
            multiplier for every method; the method's own value kept as
            kkt_stationarity_method) or "none" (only what the step computed).
        oracle: the run's oracle, for the residuals.
    """

    def __init__(self, problem: BilevelProblem, kkt: str, oracle: Oracle):
        self.problem, self.kkt, self.oracle = problem, kkt, oracle
        self.columns: dict[str, list[float]] = defaultdict(list)
        self._on_row: Callable[[dict[str, float]], Any] | None = None
        self._free = (_unbounded(problem.x_bounds, problem.x0), _unbounded(problem.y_bounds, problem.y0))
        self._everywhere = all(bool(free.all()) and free.numel() > 0 for free in self._free)   # no mask to apply

    @property
    def last_iter(self) -> float | None:
        """The iteration of the last row, None before the first."""
        rows = self.columns.get("iter")
        return rows[-1] if rows else None

    def log(self, k: int, elapsed: float, counts: Mapping[str, int], aux: Aux, x: Tensor, y: Tensor) -> dict[str, float]:
        """Log the row of iterate k = (x, y) and return it."""
        row: dict[str, float] = {"iter": float(k), "time": elapsed}
        row.update({name: float(v) for name, v in counts.items()})
        row.update(zip(aux.diagnostics, _floats(aux.diagnostics.values())))
        if self._everywhere:
            row["z_norm"] = max(_floats([x.abs().max(), y.abs().max()]))
        else:
            row["z_norm"] = max((float(v[free].abs().max()) if bool(free.any()) else 0.0)
                                for v, free in ((x, self._free[0]), (y, self._free[1])))
        if self.kkt == "least_squares" or (self.kkt == "method" and "kkt_stationarity" not in row):
            if "kkt_stationarity" in row:
                row["kkt_stationarity_method"] = row["kkt_stationarity"]
            with self.oracle.uncounted():
                residuals = metrics.kkt_info(self.oracle, x, y, aux.nu if self.kkt == "method" else None, self.problem)
            row.update({name: float(residuals[name]) for name in ("kkt_stationarity", "kkt_feasibility")})
        if self.problem.metrics is not None:
            row.update(metric_values(self.problem.metrics, x, y, taken=row))
        n_rows = len(self.columns["iter"])
        for name, value in row.items():
            column = self.columns[name]
            column.extend([math.nan] * (n_rows - len(column)))  # a column that appears late
            column.append(value)
        if self._on_row is not None:
            self._on_row(row)
        return row

    def runaway(self, final: bool = False) -> str:
        """Why the rows so far look like a run growing without bound, or '': z_norm or h beyond
        EXPLODED times their start's size (at least 1); at the end of a run (final), also z_norm
        beyond DRIFT times it while the second half of the run moved it at least 0.8 times as
        far as the first (no slowing down: an iterate heading for infinity, or for a solution
        so far away that the run has not started to settle)."""
        norms, h = self.columns.get("z_norm", []), self.columns.get("h", [])
        if not norms:
            return ""
        start = max(1.0, norms[0])
        if norms[-1] > EXPLODED * start:
            return f"the iterates grew from size {norms[0]:.3g} to {norms[-1]:.3g}"
        if h and h[-1] > EXPLODED * max(1.0, h[0]):
            return f"h grew from {h[0]:.3g} to {h[-1]:.3g}"
        if final and len(norms) >= 5 and norms[-1] > DRIFT * start:
            middle = norms[len(norms) // 2]
            if norms[-1] - middle >= 0.8 * (middle - norms[0]) > 0:
                return (f"the iterates grew from size {norms[0]:.3g} to {norms[-1]:.3g} and still move at a steady "
                        f"pace (they may grow without bound)")
        return ""

    def finish(self, x: Tensor, y: Tensor) -> None:
        """Add the problem's final_metrics at (x, y), the answer, to the last row."""
        if self.problem.final_metrics is None or not self.columns.get("iter"):
            return
        n_rows = len(self.columns["iter"])
        for name, value in metric_values(self.problem.final_metrics, x, y, taken=self.columns,
                                         what="final_metrics").items():
            column = self.columns[name]
            column.extend([math.nan] * (n_rows - 1 - len(column)))
            column.append(value)

    def listen(self, on_row: Callable[[dict[str, float]], Any]) -> None:
        """Call on_row(row) with every row: at once with those logged so far (a history restored
        from a checkpoint), then with each as it is logged (live monitoring, `bilevel.run.monitor`)."""
        columns = self.as_dict()
        for i in range(len(columns["iter"])):
            on_row({name: values[i] for name, values in columns.items()})
        self._on_row = on_row

    def restore(self, columns: Mapping[str, list[float]], before: int) -> None:
        """Continue from the rows of a saved history (a checkpoint) of iterates before `before`
        (a final row logged where a run ended is not one a longer run would have)."""
        keep = [i for i, k in enumerate(columns.get("iter", [])) if k < before]
        self.columns.update({name: [values[i] for i in keep] for name, values in columns.items()})

    def as_dict(self) -> dict[str, list[float]]:
        """Column -> values, every column as long as `iter`."""
        n = len(self.columns["iter"])
        return {name: col + [math.nan] * (n - len(col)) for name, col in self.columns.items()}


def metric_values(metrics: Callable, x: Tensor, y: Tensor, taken: Mapping[str, Any] = {},
                  what: str = "metrics") -> dict[str, float]:
    """A problem's `metrics` (or `final_metrics`: `what`) at (x, y), checked: a mapping of names
    (none of them in `taken`, the columns a row already has) to numbers."""
    with torch.no_grad():
        values = metrics(x, y)
    if not isinstance(values, Mapping):
        raise TypeError(f"Invalid {what}: {what}(x, y) returned {type(values).__name__} "
                        f"(expected a dict of name -> number)")
    out = {}
    for name, value in values.items():
        if name in taken:
            raise ValueError(f"Invalid {what}: {name!r} is already a history column (rename the metric)")
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"Invalid {what}: value of {name!r} is {value!r} (expected a number or a "
                            f"one-element tensor)") from None
    return out


def problem_metrics(problem: BilevelProblem, x: Tensor, y: Tensor) -> dict[str, float]:
    """All of the problem's metrics at (x, y): metrics and final_metrics."""
    out: dict[str, float] = {}
    for what in ("metrics", "final_metrics"):
        fn = getattr(problem, what)
        if fn is not None:
            out.update(metric_values(fn, x, y, taken=out, what=what))
    return out
