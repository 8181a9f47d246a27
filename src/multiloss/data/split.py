"""Validation split: a fixed-seed share of the training images, stratified by class and grouped
by patient, so no patient's images sit on both sides (the published code split by file name)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from multiloss.data.imageio import DataError
from multiloss.files import replacing

# The validation split of every training, the same whatever the training's own seed: runs that
# differ only in loss or seed are scored on the same images.
VAL_FRACTION = 0.1
SPLIT_SEED = 42


def patient_split(frame: pd.DataFrame, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """Add column ``subset`` (``train``/``val``) to the ``split == "train"`` rows of ``frame``.

    scikit-learn's StratifiedGroupKFold does the work: the validation set is one of
    ``round(1 / fraction)`` folds, so 0.1 gives a tenth of the patients' images, class ratios kept.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    n_folds = max(2, round(1 / fraction))
    n_patients = train["patient"].nunique()
    if n_patients < n_folds:
        raise DataError(f"validation split needs at least {n_folds} patients in train, found {n_patients}")
    per_class = train["label"].value_counts()
    if per_class.min() < n_folds:
        raise DataError(f"class {per_class.idxmin()} has {per_class.min()} training images; a "
                        f"1/{n_folds} validation split needs at least {n_folds} per class")
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, val_index = next(folds.split(train, train["label"], groups=train["patient"]))
    subset = pd.Series("train", index=train.index)
    subset.iloc[val_index] = "val"
    return train.assign(subset=subset.to_numpy())


def write_split_csv(split: pd.DataFrame, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write the split for audit (paths relative to ``root`` if given), through a temporary file."""
    path = Path(path)
    table = split[["path", "label", "patient", "subset"]].copy()
    if root is not None:
        table["path"] = [os.path.relpath(p, root) for p in table["path"]]
    table = table.sort_values(["subset", "label", "path"])
    with replacing(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def random_split(n: int, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
    """Subset names (``train``/``val``) for n items with no patient information (mask sets)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise DataError(f"cannot hold out {n_val} of {n} images for validation and still train")
    subset = np.full(n, "train", dtype=object)
    subset[np.random.default_rng(seed).permutation(n)[:n_val]] = "val"
    return subset
