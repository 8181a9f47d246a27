"""Entry point ``promote``: point an alias (default ``champion``) at a version of a registered model.

The version is the best by a metric within a pool, or one named; what moved from where, and what
the pool left out, is printed (and logged into the run ``mlflow run`` opened), so a promotion
never passes unnoticed.

The pool holds the versions that share the tags of the version holding the alias now: its data
fingerprint and image size, for ``cxr-classifier`` its encoder version, for a ``holdout_*`` metric
its holdout fingerprint. ``data_fingerprint``/``img_size`` name the data and size instead; where
no version holds the alias, each of these tags must have one value among the ranked versions or be
named. ``pool=any_encoder`` drops the encoder, ``pool=all`` every condition. An alias held by a
version of other data moves only with ``force=true``.

A move is compared first: the candidate against the version holding the alias, on the metric's
split (a paired bootstrap over its images where both logged per-image predictions, else their
values), and a candidate that is not better moves only with ``force=true``. Every move is recorded
(a run in the ``promotions`` experiment, a tag on both versions).

A pool holds the versions trained with the holder's published flaws (``variant.flaws``; none where
no version holds the alias): a published-variant model never becomes ``champion`` by ranking.

A version flagged degenerate on validation (tag ``degenerate=true``: one class predicted, or
confidence pinned at 1/C) is left out of every pool, and a named one is refused, unless
``include_degenerate=true``.
"""

from __future__ import annotations

import argparse
import os

import mlflow

from multiloss import names, variants
from multiloss.segmentation.evaluate import HOLDOUT_FINGERPRINT_TAG, HOLDOUT_PREFIX
from multiloss.stages.cli import StageParser, boolean, integer
from multiloss.tracking import promotions, ranking, registry, store

POOLS = ("same_data", "any_encoder", "all")


def parser() -> StageParser:
    stage = StageParser("promote", __doc__)
    stage.parameter("model", help="registered model name")
    stage.parameter("metric",
                    help="source-run metric or version tag to rank on (ece, brier, nll, loss rank low to high)")
    stage.parameter("alias")
    stage.parameter("version", help="a version number; empty: the best by --metric")
    stage.parameter("pool", choices=POOLS,
                    help="same_data: the holder's data, size (and encoder); any_encoder; all: every version")
    stage.parameter("data_fingerprint", help="the pool's data fingerprint (or a prefix); empty: the holder's")
    stage.parameter("img_size", type=integer("img_size", 0), help="the pool's image size; 0: the holder's")
    stage.parameter("force", type=boolean("force"),
                    help="true: move an alias held by a version of other data, or to a version that is not better")
    stage.parameter("include_degenerate", type=boolean("include_degenerate"),
                    help="true: versions flagged degenerate on validation may be chosen (or named)")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def check(args: argparse.Namespace) -> None:
    """Contradicting parameters, refused before anything is read or moved."""
    if not args.alias or args.alias.isdigit() or args.alias.lower() == "latest":
        raise SystemExit(f"promote: alias {args.alias!r} is not allowed (empty, a number or 'latest')")
    named = [p for p in ("data_fingerprint", "img_size") if getattr(args, p)]
    if args.version and named:
        raise SystemExit(f"promote: version and {' and '.join(named)} are alternatives: a named version "
                         "needs no pool")
    if args.pool == "all" and named:
        raise SystemExit(f"promote: pool=all and {' and '.join(named)} contradict: pool=all compares every version")


def pool_tags(model: str, metric: str, pool: str) -> list[str]:
    """The tags a pool's versions share, in the order a left-out version's reason names them."""
    if pool == "all":
        return []
    tags = [names.DATA_FINGERPRINT_TAG, names.IMG_SIZE_TAG]
    if model == names.CLASSIFIER_MODEL and pool == "same_data":
        tags.append(ranking.ENCODER_TAG)
    if metric.startswith(HOLDOUT_PREFIX):
        tags.append(HOLDOUT_FINGERPRINT_TAG)
    return tags


def named_fingerprint(prefix: str, model: str, ranked: list[ranking.Ranked]) -> str:
    """The one data fingerprint of the ranked versions that starts with ``prefix``."""
    found = sorted({fp for r in ranked if (fp := ranking.data_fingerprint(r.version)) and fp.startswith(prefix)})
    if not found:
        raise SystemExit(f"promote: data_fingerprint {prefix!r} matches no version of {model} with a score")
    if len(found) > 1:
        raise SystemExit(f"promote: data_fingerprint {prefix!r} matches {len(found)} fingerprints "
                         f"({', '.join(f[:12] for f in found)}): give more of it")
    return found[0]


def choose_pool(args: argparse.Namespace, holder) -> ranking.Pool:
    """The versions ``--metric`` may choose among (see the module's docstring)."""
    ranked, unscored = ranking.scored_versions(args.model, args.metric)
    if not ranked:
        raise SystemExit(f"promote: no version of {args.model} has a {args.metric!r} metric or tag")
    criteria: dict[str, str | None] = {}
    if args.data_fingerprint:
        criteria[names.DATA_FINGERPRINT_TAG] = named_fingerprint(args.data_fingerprint, args.model, ranked)
    if args.img_size:
        criteria[names.IMG_SIZE_TAG] = str(args.img_size)
    reference = holder if holder is not None and ranking.mismatch(holder, criteria) is None else None
    sources = {tag: "named" for tag in criteria}
    for tag in pool_tags(args.model, args.metric, args.pool):
        if tag in criteria:
            continue
        if reference is not None:
            criteria[tag], sources[tag] = reference.tags.get(tag), f"of version {reference.version}"
            continue
        matching = [r.version for r in ranked if ranking.mismatch(r.version, criteria) is None]
        # A degenerate version (left out below) decides no tag, unless all are degenerate.
        among = {v.tags.get(tag) for v in matching if args.include_degenerate or ranking.degenerate(v) is None} \
            or {v.tags.get(tag) for v in matching}
        if len(among) > 1:
            shown = ", ".join(sorted(ranking.shown(tag, v) for v in among))
            raise SystemExit(f"promote: no version holds {args.model}@{args.alias} to take the pool from, and the "
                             f"versions with a {args.metric} have {len(among)} values of {tag} ({shown}): name the "
                             "data with data_fingerprint= (and img_size=), or widen with pool=all"
                             + (" or pool=any_encoder" if tag == ranking.ENCODER_TAG else ""))
        criteria[tag] = next(iter(among), None)
        sources[tag] = "the only one"
    if reference is not None:
        why = f"from version {reference.version}, which holds @{args.alias}"
    else:
        why = "; ".join(f"{tag} {how}" for tag, how in sources.items())
    wanted = variants.tagged_flaws(reference.tags) if reference is not None else ()
    other_variant = {str(r.version.version): f"variant flaws {','.join(flaws) or 'none'}, not "
                                             f"{','.join(wanted) or 'none'}"
                     for r in ranked if (flaws := variants.tagged_flaws(r.version.tags)) != wanted}
    ranked = [r for r in ranked if str(r.version.version) not in other_variant]
    pool = ranking.make_pool(args.model, args.metric, ranked, criteria, unscored=unscored, reference=why,
                             rule=args.pool, include_degenerate=args.include_degenerate, left_out=other_variant)
    if not pool.ranked:
        degenerate = any(ranking.mismatch(r.version, criteria) is None and ranking.degenerate(r.version)
                         for r in ranked)
        raise SystemExit(f"promote: no version of {args.model} in the {pool.describe()} has a {args.metric!r}; "
                         "pool=all widens it" + (", include_degenerate=true admits the degenerate ones"
                                                 if degenerate else ""))
    return pool


def log_pool(pool: ranking.Pool) -> None:
    """Into the run ``mlflow run`` opened; run directly, promote opens none (printing is its record)."""
    with store.stage_run(names.CLASSIFICATION_EXPERIMENT):
        mlflow.set_tag(names.STAGE_TAG, "promote")
        ranking.log_pool(pool)


def refuse_crossing(args: argparse.Namespace, holder, chosen) -> bool:
    """Whether the move takes the alias from a version of other data; refused without force."""
    target = str(chosen.version)
    crossing = holder is not None and str(holder.version) != target and \
        ranking.other_data(holder, ranking.data_fingerprint(chosen))
    if crossing and not args.force:
        raise SystemExit(
            f"promote: {args.model}@{args.alias} is held by version {holder.version}, trained on data "
            f"{ranking.shown(names.DATA_FINGERPRINT_TAG, ranking.data_fingerprint(holder))}; version {target} "
            f"was trained on other data "
            f"({ranking.shown(names.DATA_FINGERPRINT_TAG, ranking.data_fingerprint(chosen))}): pass force=true to "
            f"move it, or choose another alias")
    return crossing


def choose_version(args: argparse.Namespace, holder):
    """The version to promote, why, and the pool it was ranked in (None for a named version)."""
    pool = None
    if args.version:
        chosen = registry.versions(args.model, only=[args.version])[0]
        reason = "as named"
        flagged = ranking.degenerate(chosen)
        if flagged and not args.include_degenerate:
            raise SystemExit(f"promote: version {chosen.version} of {args.model} is flagged {flagged}: pass "
                             "include_degenerate=true to promote it anyway")
        if flagged:
            reason += f"; {flagged}"
    else:
        pool = choose_pool(args, holder)
        best = pool.ranked[0]
        chosen, reason = best.version, f"best {args.metric} = {best.value:.6g}"
        if flagged := ranking.degenerate(chosen):
            reason += f"; {flagged}, admitted by include_degenerate=true"
        print(f"promote: {pool.describe()}")
    return chosen, reason, pool


def main(argv=None) -> str:
    args = parse_args(argv)
    check(args)
    store.configure()
    holder = ranking.alias_holder(args.model, args.alias)
    chosen, reason, pool = choose_version(args, holder)
    target = str(chosen.version)
    crossing = refuse_crossing(args, holder, chosen)
    comparison = compare_with_holder(args, holder, chosen)
    worse = comparison is not None and not comparison.better()
    if worse and not args.version and comparison.difference == 0 and not crossing:
        print(f"promote: {args.model}@{args.alias} stays at version {holder.version}: the best of the pool, version "
              f"{target}, ties it ({comparison.describe()})")
        return str(holder.version)
    if worse and not args.force:
        raise SystemExit(f"promote: version {target} is not better than version {holder.version}, which holds "
                         f"{args.model}@{args.alias}: {comparison.describe()}; pass force=true to move it anyway")
    if pool is not None and os.environ.get("MLFLOW_RUN_ID"):
        log_pool(pool)
    before = registry.set_alias(args.model, args.alias, target)
    moved = "unchanged" if before == target else f"was {before or 'unset'}"
    forced = "; ".join(why for why, applies in (("forced across data sets", crossing),
                                                 ("forced though not better", worse)) if applies)
    if before != target:
        run_id = promotions.record(args.model, args.alias, holder, chosen, reason, comparison, bool(forced))
        moved += f"; recorded in run {run_id}"
    if comparison is not None:
        moved += f"; {comparison.describe()}"
    print(f"promote: {args.model}@{args.alias} -> version {target} ({reason}; {moved}{'; ' + forced if forced else ''})")
    return target


def compare_with_holder(args: argparse.Namespace, holder, chosen) -> promotions.Comparison | None:
    """The candidate against the version holding the alias (None: no holder, the same version, or a
    holder without the metric, which cannot be compared)."""
    if holder is None or str(holder.version) == str(chosen.version):
        return None
    try:
        return promotions.compare(args.metric, holder, chosen)
    except ValueError as err:
        print(f"promote: not compared with version {holder.version}: {err}")
        return None


if __name__ == "__main__":
    main()
