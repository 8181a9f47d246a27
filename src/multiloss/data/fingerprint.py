"""Data fingerprints: runs are reused only when their input data is byte-for-byte the same."""

from __future__ import annotations

import hashlib
import os


def mask_set_fingerprint(pairs, root: str | os.PathLike) -> str:
    """The fingerprint of an image/mask set as the readers return it (columns image, masks)."""
    return fingerprint([p for row in pairs.itertuples() for p in (row.image, *row.masks)], root=root)


def fingerprint(paths, root: str | os.PathLike | None = None) -> str:
    """A content hash of a set of files (names relative to ``root``, and bytes): equal data, equal print."""
    digest = hashlib.blake2b(digest_size=16)
    root = os.path.realpath(root) if root is not None else None
    for path in sorted(str(p) for p in paths):
        name = os.path.relpath(os.path.realpath(path), root) if root is not None else path
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def kermany_fingerprint(folder: str | os.PathLike, frame=None) -> str:
    """The data fingerprint of a Kermany-layout dataset, what a classifier version is tagged with
    (``frame``: its :func:`read_kermany` listing, when the caller has it already)."""
    from multiloss.data.readers import find_kermany_root, read_kermany

    frame = read_kermany(folder) if frame is None else frame
    return fingerprint(frame["path"], root=find_kermany_root(folder))
