"""Entry point ``segment_eval``: score registered ``cxr-lung-seg`` versions of one data set and one
image size on a holdout mask set, AND the top-K, tag every version with its scores, alias the best
``champion`` and the top K ``top1``..``topK``, and record the top K's version numbers on the run
(tag ``top_versions``) for the steps after it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow

from multiloss import names
from multiloss.data.fingerprint import mask_set_fingerprint
from multiloss.data.readers import read_mask_set
from multiloss.report.tables import markdown_table
from multiloss.segmentation import evaluate
from multiloss.stages.cli import StageParser, integer, unet_size
from multiloss.tracking import registry, store


def parser() -> StageParser:
    parser = StageParser("segment_eval", description=__doc__)
    parser.parameter("data", required=True, help="holdout image/mask set (Montgomery layout or images/ + masks/)")
    parser.parameter("top_k", type=integer("top_k", 1))
    parser.parameter("img_size", type=unet_size("img_size"))
    parser.parameter("versions", help="comma-separated versions to score (default: the pool's)")
    parser.parameter("pool", choices=evaluate.POOL_RULES,
                     help="same_data: versions trained at img_size on the newest such version's data; all: every one")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def choose_pool(args: argparse.Namespace) -> evaluate.Pool:
    """The versions to score, or an error naming the parameter (before any run is opened)."""
    only = [v.strip() for v in args.versions.split(",") if v.strip()] or None
    store.configure()
    try:
        candidates = registry.versions(names.SEGMENTATION_MODEL, only)
    except ValueError as err:
        raise SystemExit(f"segment_eval: parameter versions: {err}") from err
    if not candidates:
        raise SystemExit(f"segment_eval: no versions of {names.SEGMENTATION_MODEL} registered; run segment first")
    pool = evaluate.choose_pool(candidates, img_size=args.img_size, rule=args.pool)
    reasons = "; ".join(f"version {v}: {why}" for v, why in pool.left_out.items())
    if only and pool.left_out:
        raise SystemExit(f"segment_eval: parameter versions: {reasons} (pass pool=all to rank them together "
                         "anyway)")
    if not pool.versions:
        raise SystemExit(f"segment_eval: no {names.SEGMENTATION_MODEL} version has {names.IMG_SIZE_TAG} "
                         f"{args.img_size} and a {names.DATA_FINGERPRINT_TAG} tag ({reasons}); train one at "
                         "that size, set img_size to theirs, or pass pool=all")
    for version, why in pool.left_out.items():
        print(f"segment_eval: left out version {version}: {why}")
    kinds = {(v.tags.get(names.DATA_FINGERPRINT_TAG), v.tags.get(names.IMG_SIZE_TAG)) for v in pool.versions}
    if len(kinds) > 1:
        print(f"segment_eval: pool={args.pool}: ranking versions of {len(kinds)} different data fingerprints "
              "and image sizes together")
    return pool


def main(argv=None) -> None:
    args = parse_args(argv)
    pairs = read_mask_set(args.data)
    pool = choose_pool(args)
    found = pool.versions
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name="segment_eval"):
        holdout_print = mask_set_fingerprint(pairs, root=args.data)
        store.log_params({"data": str(Path(args.data).resolve()), "top_k": args.top_k, "img_size": args.img_size,
                          "versions": ",".join(str(v.version) for v in found), "pool": args.pool,
                          "n_holdout": len(pairs)})
        mlflow.set_tags({names.STAGE_TAG: "segment_eval", evaluate.HOLDOUT_FINGERPRINT_TAG: holdout_print})
        mlflow.log_dict(pool.summary(), "pool.json")

        ranking = evaluate.evaluate_holdout(found, pairs, top_k=args.top_k, img_size=args.img_size,
                                            holdout_fingerprint=holdout_print)
        mlflow.set_tag(names.TOP_VERSIONS_TAG, ",".join(ranking.top_versions))
        print(f"segment_eval: champion -> version {ranking.champion.version} (was {ranking.champion_before}); "
              f"top {len(ranking.top)}: versions {', '.join(ranking.top_versions)}")
        mlflow.log_metrics(ranking.metrics())
        with tempfile.TemporaryDirectory() as tmp:
            ranking.write_artifacts(tmp)
            mlflow.log_artifacts(tmp)
        print(markdown_table(ranking.table))


if __name__ == "__main__":
    main()
