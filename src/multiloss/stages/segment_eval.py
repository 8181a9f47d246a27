"""Entry point ``segment_eval``: score registered ``cxr-lung-seg`` versions on a holdout mask set,
AND the top-K, tag every version with its scores, alias the best ``champion`` and the top K
``top1``..``topK``."""

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
    parser.parameter("versions", help="comma-separated versions to score (default: all)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    only = [v.strip() for v in args.versions.split(",") if v.strip()] or None
    pairs = read_mask_set(args.data)
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name="segment_eval"):
        found = registry.versions(names.SEGMENTATION_MODEL, only)
        if not found:
            raise SystemExit(f"segment_eval: no versions of {names.SEGMENTATION_MODEL} registered; run segment first")
        holdout_print = mask_set_fingerprint(pairs, root=args.data)
        store.log_params({"data": str(Path(args.data).resolve()), "top_k": args.top_k, "img_size": args.img_size,
                          "versions": ",".join(str(v.version) for v in found), "n_holdout": len(pairs)})
        mlflow.set_tags({names.STAGE_TAG: "segment_eval", evaluate.HOLDOUT_FINGERPRINT_TAG: holdout_print})

        ranking = evaluate.evaluate_holdout(found, pairs, top_k=args.top_k, img_size=args.img_size,
                                            holdout_fingerprint=holdout_print)
        print(f"segment_eval: champion -> version {ranking.champion.version} (was {ranking.champion_before})")
        mlflow.log_metrics(ranking.metrics())
        with tempfile.TemporaryDirectory() as tmp:
            ranking.write_artifacts(tmp)
            mlflow.log_artifacts(tmp)
        print(markdown_table(ranking.table))


if __name__ == "__main__":
    main()
