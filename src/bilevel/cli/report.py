"""Markdown reports: tables, and named sections of benchmarks/RESULTS.md (replacing an older copy),
with the command and machine that produced them."""
from __future__ import annotations

import math
import platform
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch


def machine() -> str:
    """A one-line description of this machine for result tables."""
    import os
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def command() -> str:
    """The command line that is running, for result tables."""
    return "python " + " ".join(sys.argv)


def update_section(path: str | Path, key: str, markdown: str) -> Path:
    """Put `markdown` between `<!-- key -->` markers in `path`, replacing what was there."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Measured results\n"
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


# a column's name in headers and on axes where the name alone reads as more than it is: f is the
# upper value at the iterate's y, not at the lower level's solution (that is verified_f)
LABELS = {"f": "f at the iterate"}


def record(path: str | Path, key: str, heading: str, setting: str, notes: Sequence[str],
           rows: list[dict[str, Any]]) -> str:
    """A benchmark's table: printed, and written into the `key` section of `path` (`update_section`)
    under its heading, the command, the machine (with `setting`, e.g. the threads) and `notes`
    (what was measured). Returns the table."""
    table = format_table(rows, list(rows[0]))
    print(table)
    preamble = [f"Command: `{command()}`  ", f"Machine: {machine()}; {setting}  ", *notes]
    update_section(path, key, "\n".join([f"## {heading}", "", *preamble, "", table]))
    return table


def relative_difference(value: Any, reference: Any) -> str:
    """max |value - reference| / max |reference| of two tensors, formatted for a table."""
    return f"{float((value - reference).abs().max() / reference.abs().max().clamp(min=1e-30)):.1e}"


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of rows (floats to 4 significant digits); headers as `LABELS` names them."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(LABELS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
