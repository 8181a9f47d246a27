"""Where a data folder comes from: the built-in synthetic generator, directly or through crops.

A model trained on synthetic phantoms must say so wherever it is used; the generator leaves its
manifest (``synth.json``) at the top of what it writes, and a crop records its source folder in
``crop.json``, so the question is answered from the files themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SYNTH_MANIFEST = "synth.json"
CROP_MANIFEST = "crop.json"


def synthetic_manifest(folder: str | os.PathLike, _seen: frozenset = frozenset()) -> Path | None:
    """The generator's manifest behind ``folder`` (it, or a parent of it, holds one; or it is a
    crop, at any depth, of such a folder); None for data of any other origin."""
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / SYNTH_MANIFEST).is_file():
            return candidate / SYNTH_MANIFEST
        crop = candidate / CROP_MANIFEST
        if crop.is_file() and candidate not in _seen:
            try:
                source = json.loads(crop.read_text()).get("source")
            except (OSError, ValueError):
                return None
            return synthetic_manifest(source, _seen | {candidate}) if source else None
    return None


def is_synthetic(folder: str | os.PathLike) -> bool:
    return synthetic_manifest(folder) is not None
