"""The members of an ensemble: the best registered classifiers trained on the ensemble's data.

They are ranked on a validation score (a test score only to reproduce the paper), by default at
most one per loss, and must share one image size, because the model-level ensembles feed every
member the same batch of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multiloss import names
from multiloss.tracking import ranking


class EnsembleInputError(ValueError):
    """Inputs no ensemble can be built from (too few members, data the crop stage did not write...).

    Raised before anything is trained or logged; the message names what is missing.
    """


@dataclass(frozen=True)
class Members:
    """The chosen classifier versions, best first, and the image size they were all trained at."""

    ranked: list[ranking.Ranked]
    img_size: int

    @property
    def versions(self) -> list[str]:
        return [str(r.version.version) for r in self.ranked]

    @property
    def member_names(self) -> list[str]:
        """``<loss> (v<N>)``: how the score table and the ensembles name each member."""
        return [f"{r.version.tags.get(names.LOSS_TAG, '?')} (v{v})" for r, v in zip(self.ranked, self.versions)]


def choose_members(key: str, data_print: str, data: Path, count: int, distinct: str = "loss") -> Members:
    """The best ``count`` classifier versions by ``key`` trained on the data with ``data_print``.

    ``distinct="loss"`` keeps the best version of each loss, so an ensemble combines different
    losses rather than seeds of one. Every way the choice can fail raises
    :class:`EnsembleInputError`, naming how many versions there are.
    """
    ranked = ranking.rank_versions(names.CLASSIFIER_MODEL, key, tags={names.DATA_FINGERPRINT_TAG: data_print})
    pool = len(ranked)
    if distinct == "loss":
        ranked = ranking.distinct_by_tag(ranked, names.LOSS_TAG)
    if len(ranked) < count:
        shrunk = f" ({pool} versions, {len(ranked)} distinct losses; distinct=none allows repeats)" \
            if distinct == "loss" else ""
        raise EnsembleInputError(f"top_k {count} needs {count} {names.CLASSIFIER_MODEL} versions trained on "
                                 f"{data} (fingerprint {data_print[:12]}) with a {key} score; "
                                 f"found {len(ranked)}{shrunk}")
    chosen = ranked[:count]
    sizes = {str(r.version.version): r.version.tags.get(names.IMG_SIZE_TAG) for r in chosen}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise EnsembleInputError(f"the chosen members need one common img_size tag; version → img_size: {sizes}")
    return Members(chosen, int(next(iter(sizes.values()))))
