"""Files written so that a reader never sees half of one: a temporary file in the same
directory, then an atomic rename (os.replace). A killed process leaves the old file or the
new one, never a torn one. New files get the permissions the umask allows, as open() gives."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(temporary path) and rename the result to `path` (parents created)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Invalid path: {str(path)!r} is a directory (expected a file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
