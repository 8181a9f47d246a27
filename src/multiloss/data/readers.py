"""Readers for the on-disk layouts users actually have.

* Kermany pediatric pneumonia: ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``; the class of
  a PNEUMONIA file comes from its name (``person1_bacteria_1.jpeg``, ``person12_virus_44.jpeg``).
  The archive often unpacks as ``chest_xray/chest_xray``: both are found. Some copies carry a third
  ``val/`` folder of 16 images; the authors' split (train 1349/2538/1345) counts them as training
  images, so they are read as ``train`` (column ``source_split`` keeps ``val``) and our own
  patient-grouped validation split is drawn from the whole training set.
* Montgomery: ``MontgomerySet/{CXR_png, ManualMask/leftMask, ManualMask/rightMask}``; the lung mask
  is left OR right.
* Generic pairs: ``images/`` + ``masks/``; a mask is named like its image, optionally ``_mask``.

Readers check every file's header and completeness, not its pixels: bad files are named at once
and a full decode waits for the pipeline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from multiloss.data import layout
from multiloss.data.classes import CLASSES
from multiloss.data.imageio import DataError, image_size, list_images

KERMANY_FOLDERS = {"NORMAL": "normal", "PNEUMONIA": None}  # PNEUMONIA: class from the name
KERMANY_SPLITS = ("train", "test")
KERMANY_EXTRA_SPLIT = "val"
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_PNEUMONIA_CLASS = {"bacteria": "bacterial", "virus": "viral"}
_NORMAL_NAME = re.compile(r"^(.+)-\d+$")


def find_kermany_root(path: str | os.PathLike) -> Path:
    """The folder holding ``train/`` and ``test/``: ``path``, ``path/chest_xray`` or the nested copy."""
    path = Path(path)
    candidates = [path, path / layout.KERMANY, path / layout.KERMANY / layout.KERMANY]
    for root in candidates:
        if all((root / split).is_dir() for split in KERMANY_SPLITS):
            return root.resolve()   # file paths are resolved too: relative_to must agree
    if not path.exists():
        raise DataError(f"{path}: dataset folder not found")
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{path}: not a Kermany layout; no train/ and test/ folders in {looked}")


def kermany_label(path: Path) -> tuple[str, str]:
    """(class, patient) of one Kermany file, from its folder and name."""
    folder = path.parent.name.upper()
    if folder == "NORMAL":
        match = _NORMAL_NAME.match(path.stem)
        return "normal", match.group(1) if match else path.stem
    match = _PNEUMONIA_NAME.match(path.name)
    if not match:
        raise DataError(f"{path}: PNEUMONIA file name does not say bacteria or virus "
                        "(expected personN_bacteria_K or personN_virus_K)")
    return _PNEUMONIA_CLASS[match.group(2).lower()], match.group(1).lower()


def read_kermany(path: str | os.PathLike) -> pd.DataFrame:
    """One row per image: path, split (train/test), label, patient, source_split."""
    root = find_kermany_root(path)
    rows = []
    splits = list(KERMANY_SPLITS)
    if (root / KERMANY_EXTRA_SPLIT).is_dir():
        splits.append(KERMANY_EXTRA_SPLIT)
    for split in splits:
        for folder in KERMANY_FOLDERS:
            for file in list_images(root / split / folder):
                label, patient = kermany_label(file)
                image_size(file)
                rows.append({"path": str(file.resolve()), "split": "test" if split == "test" else "train",
                             "label": label, "patient": patient, "source_split": split})
    frame = pd.DataFrame(rows)
    for split in KERMANY_SPLITS:
        present = set(frame.loc[frame["split"] == split, "label"])
        missing = [c for c in CLASSES if c not in present]
        if missing:
            raise DataError(f"{root / split}: no images of class {', '.join(missing)}")
    return frame


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows) and class (columns, in CLASSES order)."""
    table = pd.crosstab(frame["split"], frame["label"])
    return table.reindex(columns=list(CLASSES), fill_value=0)


def find_montgomery_root(path: str | os.PathLike) -> Path | None:
    path = Path(path)
    for root in (path, path / layout.HOLDOUT):
        if (root / layout.MONTGOMERY_IMAGES).is_dir() and (root / layout.MONTGOMERY_MASKS).is_dir():
            return root.resolve()
    return None


def _check_same_size(image: Path, masks: list[Path]) -> None:
    size = image_size(image)
    for mask in masks:
        mask_size = image_size(mask)
        if mask_size != size:
            raise DataError(f"{mask}: mask is {mask_size[1]}x{mask_size[0]} but its image "
                            f"{image} is {size[1]}x{size[0]}")


def read_montgomery(path: str | os.PathLike) -> pd.DataFrame:
    """One row per image: image, masks (tuple of the left and right lung files)."""
    root = find_montgomery_root(path)
    if root is None:
        raise DataError(f"{path}: not a Montgomery layout (need CXR_png/ and ManualMask/)")
    rows = []
    for image in list_images(root / layout.MONTGOMERY_IMAGES):
        masks = [root / layout.MONTGOMERY_MASKS / side / image.name for side in layout.MONTGOMERY_SIDES]
        for mask in masks:
            if not mask.is_file():
                raise DataError(f"{image}: no lung mask {mask}")
        _check_same_size(image, masks)
        rows.append({"image": str(image.resolve()), "masks": tuple(str(m.resolve()) for m in masks)})
    return pd.DataFrame(rows)


def read_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """``images/`` + ``masks/``: each image's mask has its stem, optionally with ``_mask``."""
    path = Path(path)
    images = list_images(path / layout.PAIR_IMAGES)
    by_stem = {}
    for mask in list_images(path / layout.PAIR_MASKS):
        stem = mask.stem[: -len("_mask")] if mask.stem.endswith("_mask") else mask.stem
        by_stem[stem] = mask
    rows = []
    for image in images:
        mask = by_stem.get(image.stem)
        if mask is None:
            raise DataError(f"{image}: no mask named {image.stem}.* or {image.stem}_mask.* "
                            f"in {path / 'masks'}")
        _check_same_size(image, [mask])
        rows.append({"image": str(image.resolve()), "masks": (str(mask.resolve()),)})
    return pd.DataFrame(rows)


def read_mask_set(path: str | os.PathLike) -> pd.DataFrame:
    """Image/mask pairs from either a Montgomery layout or an ``images/`` + ``masks/`` folder."""
    if find_montgomery_root(path) is not None:
        return read_montgomery(path)
    if (Path(path) / layout.PAIR_IMAGES).is_dir():
        return read_pairs(path)
    raise DataError(f"{path}: no lung mask set here (expected MontgomerySet/ layout or images/ + masks/)")
