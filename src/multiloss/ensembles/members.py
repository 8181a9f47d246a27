"""The members of an ensemble: the best registered classifiers trained on the ensemble's data.

They are ranked on a validation score (a test score only to reproduce the paper), by default at
most one per loss. The pool they come from holds one data set (the members' predictions are
matched to its images), one image size (the model-level ensembles feed every member the same
batch of images) and, unless widened, one encoder: the best-ranked version's. It holds only
versions trained as the ensemble's variant prescribes for their loss (a ``published`` ensemble
combines classifiers trained with the published losses' flaws, a ``corrected`` one classifiers
trained without them) and no version flagged degenerate unless asked. What the pool left out is
kept with its reasons, for the stage to print and log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multiloss import names, variants
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


def variant_mismatch(version, variant: variants.Variant) -> str | None:
    """Why ``version`` was not trained as ``variant`` prescribes for its loss (the loss flaws acting
    on it; a version tagged before variants existed counts as corrected), or None."""
    trained = variants.tagged_flaws(version.tags)
    wanted = variant.members.acting_on(version.tags.get(names.LOSS_TAG, ""))
    if trained == wanted:
        return None
    return f"variant flaws {','.join(trained) or 'none'}, not {','.join(wanted) or 'none'}"


def member_pool(key: str, data_print: str, pool: str = "same_data", variant: variants.Variant | str | None = None,
                include_degenerate: bool = False, versions: tuple[str, ...] = ()) -> ranking.Pool:
    """The classifier versions an ensemble of ``variant`` on the data with ``data_print`` may use,
    best first.

    The data's versions without an image size tag are left out (no model-level ensemble could
    feed them), those trained otherwise than ``variant`` prescribes for their loss
    (:func:`variant_mismatch`), those not among ``versions`` when given and, unless
    ``include_degenerate``, the degenerate ones; among the rest, the best-ranked version sets the
    image size and the encoder.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    variant = variants.parse(variant)
    ranked, unscored = ranking.scored_versions(names.CLASSIFIER_MODEL, key)
    same_data = {names.DATA_FINGERPRINT_TAG: data_print}
    left_out = {}
    for r in ranked:
        if ranking.mismatch(r.version, same_data) is not None:
            continue                                    # make_pool names the other data
        why = "no img_size tag" if not r.version.tags.get(names.IMG_SIZE_TAG) else variant_mismatch(r.version, variant)
        if why is None and versions and str(r.version.version) not in versions:
            why = "not among the versions given"
        if why is None and not include_degenerate:
            why = ranking.degenerate(r.version)
        if why is not None:
            left_out[str(r.version.version)] = why
    ranked = [r for r in ranked if str(r.version.version) not in left_out]
    candidates = [r for r in ranked if ranking.mismatch(r.version, same_data) is None]
    criteria: dict[str, str | None] = dict(same_data)
    reference = ""
    if candidates:
        best = candidates[0].version
        criteria[names.IMG_SIZE_TAG] = best.tags.get(names.IMG_SIZE_TAG)
        if pool == "same_data":
            criteria[ranking.ENCODER_TAG] = best.tags.get(ranking.ENCODER_TAG)
        reference = f"image size{' and encoder' if pool == 'same_data' else ''} of version {best.version}, the data's best"
    return ranking.make_pool(names.CLASSIFIER_MODEL, key, ranked, criteria, unscored=unscored, left_out=left_out,
                             reference=reference, rule=pool, include_degenerate=include_degenerate)


def choose_members(key: str, data_print: str, data: Path, count: int, distinct: str = "loss",
                   pool: str = "same_data", variant: variants.Variant | str | None = None,
                   include_degenerate: bool = False, versions: tuple[str, ...] = ()) -> Members:
    """The best ``count`` classifier versions by ``key`` in the pool of ``variant`` on the data
    with ``data_print`` (see :func:`member_pool`).

    ``distinct="loss"`` keeps the best version of each loss, so an ensemble combines different
    losses rather than seeds of one. Every way the choice can fail raises
    :class:`EnsembleInputError`, naming how many versions there are and what the pool left out.
    """
    found = member_pool(key, data_print, pool, variant, include_degenerate, versions)
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
