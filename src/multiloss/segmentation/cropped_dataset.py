"""Writing a lung-cropped copy of a Kermany-layout dataset (paper §2.2), all or nothing.

Masks come from the AND of the top-K U-Nets at the segmentation size; boxes are cut from the
full-resolution originals. An image whose AND mask is empty is kept uncropped, counted and listed.
Everything is written under a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from multiloss.data.datasets import image_dataset
from multiloss.data.imageio import read_gray, write_image
from multiloss.data.readers import find_kermany_root
from multiloss.segmentation.crop import BOX_MARGIN, crop_lungs
from multiloss.segmentation.masks import and_ensemble, predict_probabilities

CHUNK_PIXELS = 2 ** 22          # images read and predicted per model.predict call, in pixels


def check_out_free(out: Path) -> None:
    """``out`` may be new, empty, or an earlier crop of ours (it holds crop.json): anything else
    is someone's data and is refused before anything is written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and read_crop_summary(out) is None:
        raise ValueError(f"out {out} already exists and is not empty (nor an earlier crop); "
                         "choose a new path (nothing was written)")


def read_crop_summary(out: str | os.PathLike) -> dict | None:
    """The ``crop.json`` of a finished crop at ``out`` (None if there is none)."""
    path = Path(out) / "crop.json"
    return json.loads(path.read_text()) if path.is_file() else None


def crop_dataset(frame: pd.DataFrame, data: str | os.PathLike, out: str | os.PathLike, models: list, *,
                 seg_size: int, img_size: int, margin: float = BOX_MARGIN, batch_size: int = 8,
                 provenance: dict | None = None, progress=print) -> pd.DataFrame:
    """Crop every image of ``frame`` (from :func:`read_kermany`) into ``out``; returns the manifest.

    ``out/chest_xray/...`` mirrors the source layout (so the Kermany reader reads it),
    ``out/masks/...`` holds the AND masks at ``seg_size``, ``out/manifest.csv`` one row per image,
    ``out/crop.json`` the settings, ``provenance`` (e.g. the member model versions) and the counts.
    """
    out = Path(out).resolve()
    check_out_free(out)
    source_root = find_kermany_root(data)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    try:
        paths = frame["path"].tolist()
        # Each model.predict call costs ~0.2 s of set-up: predict a chunk of images per call (as
        # many as fit in ~50 MB), in batches of batch_size inside it.
        chunk = max(1, CHUNK_PIXELS // (seg_size * seg_size * batch_size)) * batch_size
        chunks = image_dataset(paths, img_size=seg_size, batch_size=chunk, cache=False)
        done = 0
        for images in chunks.as_numpy_iterator():
            masks = and_ensemble([predict_probabilities(m, images, batch_size) for m in models])
            for mask in masks:
                source = Path(paths[done])
                relative = source.relative_to(source_root)
                cropped = crop_lungs(read_gray(source), mask, img_size, margin)
                target = tmp / "chest_xray" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                write_image(target, cropped.image)
                mask_path = (tmp / "masks" / relative).with_suffix(".png")
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                write_image(mask_path, mask.astype(np.uint8) * 255)
                row = frame.iloc[done]
                rows.append({"path": str(Path("chest_xray") / relative), "split": row["split"],
                             "label": row["label"], "patient": row["patient"],
                             "empty_mask": cropped.box is None,
                             "box": "" if cropped.box is None else " ".join(map(str, cropped.box))})
                done += 1
            progress(f"crop: {done}/{len(paths)} images")
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "crop.json").write_text(json.dumps({
            **(provenance or {}), "source": str(source_root), "seg_size": seg_size, "img_size": img_size, "margin": margin,
            "n_images": len(manifest), "n_empty_masks": int(manifest["empty_mask"].sum()),
            "empty_masks": manifest.loc[manifest["empty_mask"], "path"].tolist()}, indent=2))
        check_out_free(out)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)          # an earlier crop: swapped out only once the new one is whole
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
