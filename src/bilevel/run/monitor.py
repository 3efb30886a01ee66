"""Live monitoring: callbacks that write every row of a run's history as it is logged.

    from bilevel.run.monitor import Callbacks, JsonLines, TensorBoard
    result = bilevel.solve(problem, "pgdqp", log_every=10, callback=JsonLines("run.jsonl"))
    with TensorBoard("logs/run") as board:                   # tensorboard --logdir logs
        result = bilevel.solve(problem, "pgdqp", log_every=10, callback=board)
    callback = Callbacks(JsonLines("run.jsonl"), my_stop_test)   # several at once

The loop calls a callback's `on_row(row)`, where it has one, with each row of the history
(`bilevel.run.loop.iterate`, `History.listen`): the numbers of `Result.history` as they are
logged (iter, time, the oracle counts, f, g, h, the KKT residuals, the solver's diagnostics,
the problem's metrics; in `solve_batch` also "member", the member's index), and first, for a
run continued from a checkpoint, the rows restored from it. The callback(state, aux) call made
at every iterate does nothing here and never stops a run.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Callable


def tensorboard_available() -> bool:
    """Whether the tensorboard package is installed (for `TensorBoard`)."""
    return importlib.util.find_spec("tensorboard") is not None


class RowCallback:
    """A callback that acts on logged rows (`on_row`) and does nothing at other iterates.
    `close()` releases what it holds; `with` closes it."""

    def __call__(self, state: Any, aux: Any) -> None:
        return None

    def on_row(self, row: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files; nothing to do by default."""

    def __enter__(self) -> "RowCallback":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class JsonLines(RowCallback):
    """Each row as one JSON object on its own line of `path`, written (and flushed) as it is
    logged, so that `tail -f path` follows the run. Numbers that are not finite are written as
    null (JSON has no NaN). The first row it writes starts the file anew (for a run continued
    from a checkpoint, the first of the rows restored from it: the file holds the whole
    history); the rows after it, of this run or another, are appended.

    Args:
        path: the file (its directory is created).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mode = "w"

    def on_row(self, row: dict[str, float]) -> None:
        values = {name: value if math.isfinite(value) else None for name, value in row.items()}
        if self._mode == "w":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, self._mode) as fh:
            fh.write(json.dumps(values, allow_nan=False) + "\n")
        self._mode = "a"


class TensorBoard(RowCallback):
    """Each logged row as one TensorBoard step (the row's iteration): a scalar per column
    (a batch member's under "member_B/"), flushed as it is logged, so that
    `tensorboard --logdir` shows the run live. Needs the tensorboard package.

    Args:
        logdir: the directory of the event files (created at the first row).
    """

    def __init__(self, logdir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(f"TensorBoard({str(logdir)!r}) needs the tensorboard package: "
                              f"pip install tensorboard ({exc})") from None
        self.logdir = Path(logdir)
        self._make_writer: Callable[[], Any] = lambda: SummaryWriter(str(self.logdir))
        self._writer: Any = None

    def on_row(self, row: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = self._make_writer()
        step = int(row["iter"])
        prefix = f"member_{int(row['member'])}/" if "member" in row else ""
        for name, value in row.items():
            if name not in ("iter", "member"):
                self._writer.add_scalar(prefix + name, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Callbacks(RowCallback):
    """Several callbacks as one: each is called at every iterate (the run stops when one asks),
    and each one's `on_row` and `close`, where it has them."""

    def __init__(self, *callbacks: Callable[[Any, Any], Any]):
        self.callbacks = callbacks

    def __call__(self, state: Any, aux: Any) -> bool:
        return any([bool(callback(state, aux)) for callback in self.callbacks])   # every one is called

    def on_row(self, row: dict[str, float]) -> None:
        for callback in self.callbacks:
            if callable(getattr(callback, "on_row", None)):
                callback.on_row(row)

    def close(self) -> None:
        for callback in self.callbacks:
            if callable(getattr(callback, "close", None)):
                callback.close()
