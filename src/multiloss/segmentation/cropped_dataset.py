"""Writing a lung-cropped copy of a Kermany-layout dataset (paper §2.2), all or nothing.

Masks come from the AND of the top-K U-Nets (the versions a segment_eval chose, given by number,
or else those aliased ``top1``..``topK``) at the segmentation size; boxes are cut from the
full-resolution originals. An image whose AND mask is empty is kept uncropped, counted and listed.
Everything is written under a temporary sibling folder and renamed into place at the end; a
finished copy made by the same member models (compared by their logged model and run, not by
version number: a fresh store numbers from 1 again) with the same settings from the same source is
reused as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.data import layout
from multiloss.data.datasets import image_dataset
from multiloss.data.fingerprint import kermany_fingerprint
from multiloss.data.imageio import read_gray, write_image
from multiloss.data.readers import class_counts, find_kermany_root, read_kermany
from multiloss.files import replacing_folder
from multiloss.models.unet import check_size
from multiloss.segmentation.crop import BOX_MARGIN, crop_lungs
from multiloss.segmentation.masks import (
    PREDICT_BATCH,
    and_ensemble,
    predict_probabilities,
)
from multiloss.tracking import registry

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
                 seg_size: int, img_size: int, margin: float = BOX_MARGIN, batch_size: int = PREDICT_BATCH,
                 provenance: dict | None = None, progress=print) -> pd.DataFrame:
    """Crop every image of ``frame`` (from :func:`read_kermany`) into ``out``; returns the manifest.

    ``out/chest_xray/...`` mirrors the source layout (so the Kermany reader reads it),
    ``out/masks/...`` holds the AND masks at ``seg_size``, ``out/manifest.csv`` one row per image,
    ``out/crop.json`` the settings, ``provenance`` (e.g. the member model versions) and the counts.
    """
    out = Path(out).resolve()
    check_out_free(out)
    source_root = find_kermany_root(data)
    with replacing_folder(out, before_swap=lambda: check_out_free(out)) as tmp:
        manifest = _crop_into(tmp, frame, source_root, models, seg_size=seg_size, img_size=img_size,
                              margin=margin, batch_size=batch_size, progress=progress)
        (tmp / "crop.json").write_text(json.dumps({
            **(provenance or {}), "source": str(source_root), "seg_size": seg_size, "img_size": img_size, "margin": margin,
            "n_images": len(manifest), "n_empty_masks": int(manifest["empty_mask"].sum()),
            "empty_masks": manifest.loc[manifest["empty_mask"], "path"].tolist()}, indent=2))
    return manifest


def _crop_into(folder: Path, frame: pd.DataFrame, source_root: Path, models: list, *, seg_size: int,
               img_size: int, margin: float, batch_size: int, progress) -> pd.DataFrame:
    """Write the cropped images, their masks and ``manifest.csv`` into ``folder``, one
    full-resolution image at a time."""
    paths = frame["path"].tolist()
    # Each model.predict call has a fixed set-up cost: predict a chunk of images per call (as
    # many as CHUNK_PIXELS allows), in batches of batch_size inside it.
    chunk = max(1, CHUNK_PIXELS // (seg_size * seg_size * batch_size)) * batch_size
    chunks = image_dataset(paths, img_size=seg_size, batch_size=chunk, cache=False)
    rows, done = [], 0
    for images in chunks.as_numpy_iterator():
        masks = and_ensemble([predict_probabilities(m, images, batch_size) for m in models])
        for mask in masks:
            source = Path(paths[done])
            relative = source.relative_to(source_root)
            cropped = crop_lungs(read_gray(source), mask, img_size, margin)
            target = folder / layout.KERMANY / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(target, cropped.image)
            mask_path = (folder / "masks" / relative).with_suffix(".png")
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_image(mask_path, mask.astype(np.uint8) * 255)
            row = frame.iloc[done]
            rows.append({"path": str(Path(layout.KERMANY) / relative), "split": row["split"],
                         "label": row["label"], "patient": row["patient"],
                         "empty_mask": cropped.box is None,
                         "box": "" if cropped.box is None else " ".join(map(str, cropped.box))})
            done += 1
        progress(f"crop: {done}/{len(paths)} images")
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / "manifest.csv", index=False)
    return manifest


def top_members(top_k: int) -> list[ModelVersion]:
    """The ``cxr-lung-seg`` versions aliased ``top1``..``topK``, best first."""
    members = []
    for k in range(1, top_k + 1):
        try:
            members.append(registry.alias_version(names.SEGMENTATION_MODEL, names.top_alias(k)))
        except ValueError as err:
            raise LookupError(f"{names.SEGMENTATION_MODEL} has no alias {names.top_alias(k)}; run segment_eval "
                              f"with top_k >= {top_k} first") from err
    return members


def given_members(members: str, top_k: int) -> list[ModelVersion]:
    """The ``cxr-lung-seg`` versions named in ``members`` ("3,1,2", best first), in that order.

    A pipeline passes the versions its segment_eval chose: the ``top`` aliases are shared by every
    pipeline on the store and may have moved since. Errors name the parameter."""
    numbers = [m.strip() for m in members.split(",") if m.strip()]
    bad = [m for m in numbers if not m.isdigit()]
    if bad:
        raise ValueError(f"parameter members must be comma-separated version numbers of "
                         f"{names.SEGMENTATION_MODEL}, got {', '.join(map(repr, bad))}")
    twice = sorted({m for m in numbers if numbers.count(m) > 1}, key=int)
    if twice:
        raise ValueError(f"parameter members names version {', '.join(twice)} twice")
    if len(numbers) != top_k:
        raise ValueError(f"parameter members names {len(numbers)} version{'s' if len(numbers) != 1 else ''} "
                         f"({', '.join(numbers)}) but top_k is {top_k}; give exactly top_k versions")
    try:
        found = {str(v.version): v for v in registry.versions(names.SEGMENTATION_MODEL, numbers)}
    except ValueError as err:
        raise ValueError(f"parameter members: {err}") from err
    return [found[m] for m in numbers]


def member_sources(members: list[ModelVersion]) -> list[dict[str, str]]:
    """What identifies each member's model in any store, best first: version, run and logged model."""
    return [{"name": names.SEGMENTATION_MODEL, "version": str(m.version), "run_id": str(m.run_id),
             "source": str(m.source)} for m in members]


def segmentation_size(members: list[ModelVersion], seg_size: int, img_size: int) -> int:
    """The size the members run at: ``seg_size`` when set, else the best member's img_size tag,
    else ``img_size``."""
    size = seg_size or int(members[0].tags.get(names.IMG_SIZE_TAG, 0)) or img_size
    return check_size("seg_size", size)


@dataclasses.dataclass
class Crop:
    manifest: pd.DataFrame    # one row per image (manifest.csv)
    cropped: pd.DataFrame     # the copy at ``out``, as read_kermany reads it back
    reused: bool              # True: ``out`` already held this crop and nothing was written


def crop_or_reuse(frame: pd.DataFrame, data: str | os.PathLike, out: str | os.PathLike,
                  members: list[ModelVersion], *, seg_size: int, img_size: int, margin: float = BOX_MARGIN,
                  batch_size: int = PREDICT_BATCH, progress=print) -> Crop:
    """The lung-cropped copy of ``frame`` (read from ``data``) at ``out``, by the AND of ``members``.

    An earlier crop at ``out`` with the same member models (``member_sources``), settings and source
    is reused; one with other settings, or one that does not say which models made it, is replaced
    whole (see :func:`crop_dataset`). The copy must read back with its source's class counts.
    """
    out = Path(out).resolve()
    provenance = {"members": [str(m.version) for m in members], "member_sources": member_sources(members),
                  "source_fingerprint": kermany_fingerprint(data, frame)}
    earlier = read_crop_summary(out)
    settings = {"seg_size": seg_size, "img_size": img_size, "margin": margin, **provenance}
    reused = earlier is not None and all(earlier.get(k) == v for k, v in settings.items())
    if reused:
        progress(f"crop: {out} already holds this crop (same member models, settings and source); reusing it")
        manifest = pd.read_csv(out / "manifest.csv")
    else:
        check_out_free(out)
        if earlier is not None:
            changed = sorted(k for k, v in settings.items() if earlier.get(k) != v)
            progress(f"crop: {out} holds an earlier crop with other {', '.join(changed)}; replacing it")
        models = [registry.load_keras(registry.version_uri(names.SEGMENTATION_MODEL, m.version), shared=True)
                  for m in members]
        manifest = crop_dataset(frame, data, out, models, seg_size=seg_size, img_size=img_size, margin=margin,
                                batch_size=batch_size, provenance=provenance, progress=progress)
    cropped = read_kermany(out)
    if not class_counts(cropped).equals(class_counts(frame)):
        raise RuntimeError(f"cropped dataset {out} reads back with other counts than its source")
    return Crop(manifest, cropped, reused)
