"""All-or-nothing writes: a file or folder appears under its name only once it is complete."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Yield a temporary sibling path to write; on success it replaces ``path``, on error it goes."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
