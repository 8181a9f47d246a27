"""Ranking registered lung U-Nets on a holdout mask set, and recording the ranking in the registry.

The pool is one data set at one image size unless widened (:func:`choose_pool`): Dice of U-Nets
trained on other images, or scored at a size they were not trained at, do not rank against each
other. Each version is scored alone and the AND of the top K is scored beside them. Every scored
version is tagged with its holdout scores and rank, always under the fingerprint of the holdout set
that scored them; ``top1``..``topK`` and ``champion`` point at the best.
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
    predict_probabilities,
)
from multiloss.tracking import aliases, registry
from multiloss.tracking import ranking as tracking_ranking

# The paper picks its top-3 on accuracy, IoU and Dice; we rank on mean Dice, ties broken by the
# mean IoU and then pixel accuracy.
RANK_ON = ("dice_mean", "mean_iou_mean", "pixel_accuracy_mean")
# Tags on the segment_eval run and on each scored version (holdout_dice, ... per score).
HOLDOUT_PREFIX = "holdout_"
HOLDOUT_FINGERPRINT_TAG = "holdout_fingerprint"
HOLDOUT_RANK_TAG = "holdout_rank"
HOLDOUT_IMG_SIZE_TAG = "holdout_img_size"     # the size the scores were taken at

# Which versions one segment_eval ranks: one data set at the stage's size, or every version.
SAME_DATA, ALL = "same_data", "all"
POOL_RULES = (SAME_DATA, ALL)


@dataclasses.dataclass
class Pool:
    """The versions to rank, oldest first, and why each other candidate was left out."""

    rule: str
    img_size: int
    versions: list[ModelVersion]
    left_out: dict[str, str]            # version -> reason
    data_fingerprint: str | None = None  # the pool's (None under ``all``)

    def summary(self) -> dict:
        """What ``pool.json`` records."""
        return {"pool": self.rule, "img_size": self.img_size, "data_fingerprint": self.data_fingerprint,
                "scored": [str(v.version) for v in self.versions], "left_out": self.left_out}


def _size_tag(version: ModelVersion) -> int | None:
    try:
        return int(float(version.tags[names.IMG_SIZE_TAG]))
    except (KeyError, ValueError):
        return None


def choose_pool(candidates: list[ModelVersion], *, img_size: int, rule: str = SAME_DATA) -> Pool:
    """The versions of ``candidates`` that rank together.

    ``same_data``: those trained at ``img_size`` (their ``img_size`` tag) on the data of the newest
    such version (its ``data_fingerprint`` tag): the U-Nets a ``segment`` just trained, not older
    ones of other data in the same store. A version whose tags cannot tell is left out too.
    ``all``: every candidate, as the user asked.
    """
    if rule not in POOL_RULES:
        raise ValueError(f"parameter pool must be one of {', '.join(POOL_RULES)}, got {rule!r}")
    if rule == ALL:
        return Pool(rule, img_size, list(candidates), {})
    left_out, sized = {}, []
    for version in candidates:
        size = _size_tag(version)
        if size is None:
            left_out[str(version.version)] = f"no {names.IMG_SIZE_TAG} tag (the size it was trained at is unknown)"
        elif size != img_size:
            left_out[str(version.version)] = f"{names.IMG_SIZE_TAG} {size}, not the stage's {img_size}"
        elif not version.tags.get(names.DATA_FINGERPRINT_TAG):
            left_out[str(version.version)] = (f"no {names.DATA_FINGERPRINT_TAG} tag "
                                              "(the data it was trained on is unknown)")
        else:
            sized.append(version)
    if not sized:
        return Pool(rule, img_size, [], left_out)
    newest = max(sized, key=lambda v: int(v.version))
    reference = newest.tags[names.DATA_FINGERPRINT_TAG]
    pool = []
    for version in sized:
        theirs = version.tags[names.DATA_FINGERPRINT_TAG]
        if theirs == reference:
            pool.append(version)
        else:
            left_out[str(version.version)] = (f"{names.DATA_FINGERPRINT_TAG} {theirs[:12]}, not the pool's "
                                              f"{reference[:12]} (version {newest.version}'s, the newest "
                                              f"at {img_size} px)")
    left_out = dict(sorted(left_out.items(), key=lambda item: int(item[0])))
    return Pool(rule, img_size, pool, left_out, reference)


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
    img_size: int                       # the size every version was scored at
    champion_before: str | None = None  # the version ``champion`` pointed at before (see :func:`publish`)

    @property
    def champion(self) -> ModelVersion:
        return self.by_label[self.order[0]]

    @property
    def top_versions(self) -> list[str]:
        """The version numbers of the top K, best first: what a later step must use (aliases move)."""
        return [str(self.by_label[label].version) for label in self.top]

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


HOLDOUT_CHUNK = 32     # holdout images in memory at a time (with their masks and predictions)


def holdout_chunks(pairs: pd.DataFrame, img_size: int, chunk: int = HOLDOUT_CHUNK):
    """The holdout as (images (n, H, W, 3), boolean lung masks (n, H, W)) at ``img_size``, ``chunk``
    pairs at a time: full-resolution originals are read one chunk at a time, never held whole."""
    for images, masks in mask_dataset(pairs["image"], pairs["masks"], img_size=img_size,
                                      batch_size=chunk, cache=False).as_numpy_iterator():
        yield images, masks[..., 0] > 0.5


@dataclasses.dataclass
class HoldoutMasks:
    """Each model's per-image scores on the holdout, and its masks and the truth packed eight
    pixels to a byte (``np.packbits`` along the width): 1/32 of the float predictions, enough to
    score any AND of the models afterwards without predicting again."""
    scores: dict[str, pd.DataFrame]
    packed: dict[str, np.ndarray]      # (N, H, ceil(W / 8)) uint8 per model
    truth: np.ndarray                  # (N, H, ceil(W / 8)) uint8
    width: int

    def and_scores(self, names_: list[str], chunk: int = HOLDOUT_CHUNK) -> pd.DataFrame:
        """Per-image scores of the AND of the masks of ``names_``."""
        parts = []
        for start in range(0, len(self.truth), chunk):
            anded = np.bitwise_and.reduce([self.packed[n][start:start + chunk] for n in names_])
            unpack = lambda a: np.unpackbits(a, axis=-1, count=self.width).astype(bool)  # noqa: E731
            parts.append(segmentation_scores(unpack(self.truth[start:start + chunk]), unpack(anded)))
        return pd.concat(parts, ignore_index=True)


def holdout_masks(models: dict[str, object], pairs: pd.DataFrame, img_size: int, *,
                  batch_size: int = PREDICT_BATCH, chunk: int = HOLDOUT_CHUNK) -> HoldoutMasks:
    """One pass over the holdout, ``chunk`` images at a time: each model's masks, scored and kept packed."""
    scores = {name: [] for name in models}
    packed = {name: [] for name in models}
    truths = []
    for images, truth in holdout_chunks(pairs, img_size, chunk):
        truths.append(np.packbits(truth, axis=-1))
        for name, model in models.items():
            masks = predict_probabilities(model, images, batch_size) > 0.5
            scores[name].append(segmentation_scores(truth, masks))
            packed[name].append(np.packbits(masks, axis=-1))
    return HoldoutMasks({n: pd.concat(t, ignore_index=True) for n, t in scores.items()},
                        {n: np.concatenate(p) for n, p in packed.items()}, np.concatenate(truths), img_size)


def _summary(per_image: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame({name: summarize(table) for name, table in per_image.items()}).T


def rank_versions(versions: list[ModelVersion], pairs: pd.DataFrame, *, top_k: int, img_size: int,
                  batch_size: int = PREDICT_BATCH, progress=None) -> HoldoutRanking:
    """Score each version alone on the holdout ``pairs``, rank them, and score the AND of the top K."""
    progress = progress or _print_now
    models, by_label = {}, {}
    for version in versions:
        label = f"v{version.version} {version.tags.get(names.LOSS_TAG, '?')}"
        by_label[label] = version
        models[label] = registry.load_keras(registry.version_uri(names.SEGMENTATION_MODEL, version.version),
                                            shared=True)
    scored = holdout_masks(models, pairs, img_size, batch_size=batch_size)
    progress(f"segment_eval: scored {', '.join(models)}")
    singles = _summary(scored.scores)
    order = rank(singles)
    top = order[:top_k]
    ensemble = f"AND top-{len(top)}"
    anded = _summary({ensemble: scored.and_scores(top)})
    table = pd.concat([singles.loc[order], anded])
    table.index.name = "model"
    return HoldoutRanking(table, order, top, by_label, ensemble, img_size)


def _holdout_keys(version: ModelVersion) -> list[str]:
    return [key for key in version.tags if key.startswith(HOLDOUT_PREFIX)]


def _retag(model: str, version: str, tags: dict[str, object], holdout_fingerprint: str) -> None:
    """Replace a version's holdout tags. The old fingerprint goes first and the new one comes last,
    so at every moment the scores a version carries are either unattributed or the fingerprinted
    holdout's own; an interrupted write never leaves new scores under an old holdout's name."""
    current = registry.versions(model, [str(version)])[0]
    registry.untag_version(model, version, [HOLDOUT_FINGERPRINT_TAG])
    registry.untag_version(model, version, [k for k in _holdout_keys(current) if k not in tags])
    registry.tag_version(model, version, tags)
    registry.tag_version(model, version, {HOLDOUT_FINGERPRINT_TAG: holdout_fingerprint})


def publish(ranking: HoldoutRanking, holdout_fingerprint: str) -> HoldoutRanking:
    """Record ``ranking`` in the registry: each scored version's holdout scores, rank and scoring
    size as tags, always with the holdout fingerprint (see :func:`_retag`); ``top1``..``topK`` on
    the top K (no older ``top`` alias left beyond K); ``champion`` on the best. A version this
    ranking did not score loses its ``holdout_rank`` (it would read as current) but keeps scores
    that name their holdout, so another data set's ranking in the same store survives; holdout
    tags that name none are removed. Returns ``ranking`` with ``champion_before`` filled in."""
    model = names.SEGMENTATION_MODEL
    for position, label in enumerate(ranking.order, start=1):
        _retag(model, ranking.by_label[label].version, {
            **{f"{HOLDOUT_PREFIX}{score}": f"{ranking.table.loc[label, f'{score}_mean']:.6f}" for score in SCORES},
            HOLDOUT_RANK_TAG: position, HOLDOUT_IMG_SIZE_TAG: ranking.img_size}, holdout_fingerprint)
    data_print = ranking.champion.tags.get(names.DATA_FINGERPRINT_TAG, "")
    before = ranking_champion_before(model, data_print)
    scored = {str(v.version) for v in ranking.by_label.values()}
    for other in registry.versions(model):
        if str(other.version) in scored or other.tags.get(names.DATA_FINGERPRINT_TAG, "") != data_print:
            continue          # another data set's ranking in the same store keeps its ranks
        attributed = HOLDOUT_FINGERPRINT_TAG in other.tags
        registry.untag_version(model, other.version, [HOLDOUT_RANK_TAG] if attributed else _holdout_keys(other))
    aliases.move_ranked("segment_eval", model, ranking.top_versions, data_print)
    return dataclasses.replace(ranking, champion_before=before)


def ranking_champion_before(model: str, data_print: str) -> str | None:
    """The version the champion alias of this data (plain, or data-qualified where a version of
    other data holds the plain one) points at now."""
    alias = names.CHAMPION
    holder = tracking_ranking.alias_holder(model, alias)
    if tracking_ranking.other_data(holder, data_print):
        holder = tracking_ranking.alias_holder(model, names.data_alias(alias, data_print))
    return str(holder.version) if holder is not None else None


def evaluate_holdout(versions: list[ModelVersion], pairs: pd.DataFrame, *, top_k: int, img_size: int,
                     holdout_fingerprint: str, batch_size: int = PREDICT_BATCH, progress=None) -> HoldoutRanking:
    """:func:`rank_versions`, then :func:`publish` the ranking."""
    ranking = rank_versions(versions, pairs, top_k=top_k, img_size=img_size, batch_size=batch_size,
                            progress=progress)
    return publish(ranking, holdout_fingerprint)
