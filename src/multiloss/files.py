"""All-or-nothing writes: a file or folder appears under its name only once it is complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike, *, before_swap=None):
    """Yield a fresh hidden sibling folder to fill; on success it takes ``path``'s place (an existing
    ``path`` is swapped out only once the new folder is whole), on error it goes. ``before_swap`` is
    called just before the swap: a last check that may raise and leave ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)      # a stale leftover of this very process id
    tmp.mkdir()
    try:
        yield tmp
        if before_swap is not None:
            before_swap()
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_private_json(path: str | os.PathLike, values: dict) -> None:
    """``values`` as JSON at ``path``, readable by its owner only from the first byte (passwords),
    all or nothing."""
    with replacing(path) as tmp:
        tmp.touch(mode=0o600)
        tmp.chmod(0o600)               # touch's mode is masked by the umask
        tmp.write_text(json.dumps(values, indent=1))
