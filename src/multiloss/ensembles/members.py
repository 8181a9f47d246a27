"""The members of an ensemble: the best registered classifiers trained on the ensemble's data.

They are ranked on a validation score (a test score only to reproduce the paper), by default at
most one per loss. The pool they come from holds one data set (the members' predictions are
matched to its images), one image size (the model-level ensembles feed every member the same
batch of images) and, unless widened, one encoder: the best-ranked version's. What the pool left
out is kept with its reasons, for the stage to print and log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multiloss import names
from multiloss.tracking import ranking

POOLS = ("same_data", "any_encoder")     # any_encoder: members may come from different U-Net encoders


class EnsembleInputError(ValueError):
    """Inputs no ensemble can be built from (too few members, data the crop stage did not write...).

    Raised before anything is trained or logged; the message names what is missing.
    """


@dataclass(frozen=True)
class Members:
    """The chosen classifier versions, best first, the image size they were all trained at, and
    the pool they were chosen from."""

    ranked: list[ranking.Ranked]
    img_size: int
    pool: ranking.Pool

    @property
    def versions(self) -> list[str]:
        return [str(r.version.version) for r in self.ranked]

    @property
    def member_names(self) -> list[str]:
        """``<loss> (v<N>)``: how the score table and the ensembles name each member."""
        return [f"{r.version.tags.get(names.LOSS_TAG, '?')} (v{v})" for r, v in zip(self.ranked, self.versions)]


def member_pool(key: str, data_print: str, pool: str = "same_data") -> ranking.Pool:
    """The classifier versions an ensemble of the data with ``data_print`` may use, best first.

    The data's versions without an image size tag are left out (no model-level ensemble could
    feed them); among the rest, the best-ranked version sets the image size and the encoder.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    ranked, unscored = ranking.scored_versions(names.CLASSIFIER_MODEL, key)
    same_data = {names.DATA_FINGERPRINT_TAG: data_print}
    untagged = {str(r.version.version): "no img_size tag" for r in ranked
                if ranking.mismatch(r.version, same_data) is None and not r.version.tags.get(names.IMG_SIZE_TAG)}
    candidates = [r for r in ranked if ranking.mismatch(r.version, same_data) is None
                  and str(r.version.version) not in untagged]
    criteria: dict[str, str | None] = dict(same_data)
    reference = ""
    if candidates:
        best = candidates[0].version
        criteria[names.IMG_SIZE_TAG] = best.tags.get(names.IMG_SIZE_TAG)
        if pool == "same_data":
            criteria[ranking.ENCODER_TAG] = best.tags.get(ranking.ENCODER_TAG)
        reference = f"image size{' and encoder' if pool == 'same_data' else ''} of version {best.version}, the data's best"
    return ranking.make_pool(names.CLASSIFIER_MODEL, key, ranked, criteria, unscored=unscored, left_out=untagged,
                             reference=reference, rule=pool)


def choose_members(key: str, data_print: str, data: Path, count: int, distinct: str = "loss",
                   pool: str = "same_data") -> Members:
    """The best ``count`` classifier versions by ``key`` in the pool of the data with ``data_print``.

    ``distinct="loss"`` keeps the best version of each loss, so an ensemble combines different
    losses rather than seeds of one. Every way the choice can fail raises
    :class:`EnsembleInputError`, naming how many versions there are and what the pool left out.
    """
    found = member_pool(key, data_print, pool)
    ranked = found.ranked
    if distinct == "loss":
        ranked = ranking.distinct_by_tag(ranked, names.LOSS_TAG)
    if len(ranked) < count:
        shrunk = f" ({len(found.ranked)} versions, {len(ranked)} distinct losses; distinct=none allows repeats)" \
            if distinct == "loss" else ""
        raise EnsembleInputError(f"top_k {count} needs {count} {names.CLASSIFIER_MODEL} versions trained on "
                                 f"{data} (fingerprint {data_print[:12]}) with a {key} score; found "
                                 f"{len(ranked)}{shrunk} in the {found.describe()}")
    chosen = ranked[:count]
    return Members(chosen, int(found.criteria[names.IMG_SIZE_TAG]), found)
