"""Ranking registered lung U-Nets on a holdout mask set, and recording the ranking in the registry.

Each version is scored alone and the AND of the top K is scored beside them. Every scored version
is tagged with its holdout scores and rank; ``top1``..``topK`` and ``champion`` point at the best,
so the crop stage and the classifiers read the ranking by alias.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.data.datasets import mask_dataset
from multiloss.metrics.segmentation import SCORES, segmentation_scores, summarize
from multiloss.plots import polar_scores
from multiloss.report.tables import write_table
from multiloss.segmentation.masks import (
    PREDICT_BATCH,
    and_ensemble,
    predict_probabilities,
)
from multiloss.tracking import registry

# The paper picks its top-3 on accuracy, IoU and Dice; we rank on mean Dice, ties broken by the
# mean IoU and then pixel accuracy.
RANK_ON = ("dice_mean", "mean_iou_mean", "pixel_accuracy_mean")
# Tags on the segment_eval run and on each scored version (holdout_dice, ... per score).
HOLDOUT_PREFIX = "holdout_"
HOLDOUT_FINGERPRINT_TAG = "holdout_fingerprint"
HOLDOUT_RANK_TAG = "holdout_rank"


def score_table(truth: np.ndarray, predictions: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Mean ± std of each score per named prediction (boolean masks), and the per-image tables."""
    per_image = {name: segmentation_scores(truth, masks) for name, masks in predictions.items()}
    summary = pd.DataFrame({name: summarize(table) for name, table in per_image.items()}).T
    return summary, per_image


def rank(summary: pd.DataFrame) -> list[str]:
    """Row names best first."""
    return summary.sort_values(list(RANK_ON), ascending=False).index.tolist()


@dataclasses.dataclass
class HoldoutRanking:
    """The scores of every version and of the AND of the top K, best version first."""

    table: pd.DataFrame                 # one row per version, best first, then the AND row ("model" index)
    order: list[str]                    # version labels ("v3 bce_dice"), best first
    top: list[str]                      # the first K of ``order``
    by_label: dict[str, ModelVersion]
    ensemble: str                       # the AND row's label, "AND top-K"
    champion_before: str | None = None  # the version ``champion`` pointed at before (see :func:`publish`)

    @property
    def champion(self) -> ModelVersion:
        return self.by_label[self.order[0]]

    def metrics(self) -> dict[str, float]:
        """The champion's scores as ``champion_*`` and the AND's as ``and_top_k_*``."""
        return {**{f"champion_{k}": float(v) for k, v in self.table.loc[self.order[0]].items()},
                **{f"and_top_k_{k}": float(v) for k, v in self.table.loc[self.ensemble].items()}}

    def write_artifacts(self, folder: str | Path) -> None:
        """``holdout_scores`` (csv and markdown) and ``holdout_polar.png`` into ``folder``."""
        write_table(self.table, folder, "holdout_scores")
        means = self.table[[f"{s}_mean" for s in SCORES]].rename(columns=lambda c: c.removesuffix("_mean"))
        polar_scores(means, list(SCORES), Path(folder) / "holdout_polar.png", "Holdout segmentation scores")


def _print_now(line: str) -> None:
    print(line, flush=True)


def holdout_arrays(pairs: pd.DataFrame, img_size: int, batch_size: int = PREDICT_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """The holdout images (N, H, W, 3) and their boolean lung masks (N, H, W) at ``img_size``."""
    batches = list(mask_dataset(pairs["image"], pairs["masks"], img_size=img_size,
                                batch_size=batch_size, cache=False).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    truth = np.concatenate([b[1] for b in batches])[..., 0] > 0.5
    return images, truth


def rank_versions(versions: list[ModelVersion], pairs: pd.DataFrame, *, top_k: int, img_size: int,
                  batch_size: int = PREDICT_BATCH, progress=None) -> HoldoutRanking:
    """Score each version alone on the holdout ``pairs``, rank them, and score the AND of the top K."""
    progress = progress or _print_now
    images, truth = holdout_arrays(pairs, img_size, batch_size)
    probabilities, by_label = {}, {}
    for version in versions:
        label = f"v{version.version} {version.tags.get(names.LOSS_TAG, '?')}"
        by_label[label] = version
        model = registry.load_keras(registry.version_uri(names.SEGMENTATION_MODEL, version.version))
        probabilities[label] = predict_probabilities(model, images, batch_size)
        progress(f"segment_eval: scored {label}")

    singles, _ = score_table(truth, {label: p > 0.5 for label, p in probabilities.items()})
    order = rank(singles)
    top = order[:top_k]
    ensemble = f"AND top-{len(top)}"
    anded, _ = score_table(truth, {ensemble: and_ensemble([probabilities[label] for label in top])})
    table = pd.concat([singles.loc[order], anded])
    table.index.name = "model"
    return HoldoutRanking(table, order, top, by_label, ensemble)


def publish(ranking: HoldoutRanking, holdout_fingerprint: str) -> HoldoutRanking:
    """Record ``ranking`` in the registry: each scored version's holdout scores, rank and holdout
    fingerprint as tags; ``top1``..``topK`` on the top K (no older ``top`` alias left beyond K);
    no ``holdout_rank`` left on a version this ranking did not score (it would read as current);
    ``champion`` on the best. Returns ``ranking`` with ``champion_before`` filled in."""
    model = names.SEGMENTATION_MODEL
    for position, label in enumerate(ranking.order, start=1):
        registry.tag_version(model, ranking.by_label[label].version, {
            **{f"{HOLDOUT_PREFIX}{score}": f"{ranking.table.loc[label, f'{score}_mean']:.6f}" for score in SCORES},
            HOLDOUT_RANK_TAG: position, HOLDOUT_FINGERPRINT_TAG: holdout_fingerprint})
    for position, label in enumerate(ranking.top, start=1):
        registry.set_alias(model, names.top_alias(position), ranking.by_label[label].version)
    registry.delete_aliases_beyond(model, names.TOP_PREFIX, len(ranking.top))
    scored = {str(v.version) for v in ranking.by_label.values()}
    for other in registry.versions(model):
        if str(other.version) not in scored:
            registry.untag_version(model, other.version, [HOLDOUT_RANK_TAG])
    before = registry.set_alias(model, names.CHAMPION, ranking.champion.version)
    return dataclasses.replace(ranking, champion_before=before)


def evaluate_holdout(versions: list[ModelVersion], pairs: pd.DataFrame, *, top_k: int, img_size: int,
                     holdout_fingerprint: str, batch_size: int = PREDICT_BATCH, progress=None) -> HoldoutRanking:
    """:func:`rank_versions`, then :func:`publish` the ranking."""
    ranking = rank_versions(versions, pairs, top_k=top_k, img_size=img_size, batch_size=batch_size,
                            progress=progress)
    return publish(ranking, holdout_fingerprint)
