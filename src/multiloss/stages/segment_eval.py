"""Entry point ``segment_eval``: score registered ``cxr-lung-seg`` versions on a holdout mask set,
AND the top-K, tag every version with its scores, alias the best ``champion`` and the top K
``top1``..``topK``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from multiloss import names
from multiloss.data.datasets import mask_dataset
from multiloss.data.fingerprint import mask_set_fingerprint
from multiloss.data.readers import read_mask_set
from multiloss.metrics.segmentation import SCORES
from multiloss.plots import polar_scores
from multiloss.report.tables import markdown_table, write_table
from multiloss.segmentation.masks import (
    and_ensemble,
    predict_probabilities,
    rank,
    score_table,
)
from multiloss.stages.cli import integer, unet_size
from multiloss.tracking import registry, store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segment_eval", description=__doc__)
    parser.add_argument("--data", required=True, help="holdout image/mask set (Montgomery layout or images/ + masks/)")
    parser.add_argument("--top-k", type=integer("top_k", 1), default=3)
    parser.add_argument("--img-size", type=unet_size("img_size"), default=128)
    parser.add_argument("--versions", default="", help="comma-separated versions to score (default: all)")
    parser.add_argument("--batch-size", type=integer("batch_size", 1), default=8)
    return parser.parse_args(argv)


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
        mlflow.set_tags({names.STAGE_TAG: "segment_eval", "holdout_fingerprint": holdout_print})

        batches = list(mask_dataset(pairs["image"], pairs["masks"], img_size=args.img_size,
                                    batch_size=args.batch_size, cache=False).as_numpy_iterator())
        images = np.concatenate([b[0] for b in batches])
        truth = np.concatenate([b[1] for b in batches])[..., 0] > 0.5
        probabilities, by_label = {}, {}
        for version in found:
            name = f"v{version.version} {version.tags.get('loss', '?')}"
            by_label[name] = version
            model = registry.load_keras(f"models:/{names.SEGMENTATION_MODEL}/{version.version}")
            probabilities[name] = predict_probabilities(model, images, args.batch_size)
            print(f"segment_eval: scored {name}", flush=True)

        singles, _ = score_table(truth, {n: p > 0.5 for n, p in probabilities.items()})
        order = rank(singles)
        top = order[: args.top_k]
        ensemble_name = f"AND top-{len(top)}"
        ensemble, _ = score_table(truth, {ensemble_name: and_ensemble([probabilities[n] for n in top])})
        table = pd.concat([singles.loc[order], ensemble])
        table.index.name = "model"

        client = mlflow.MlflowClient()
        for position, name in enumerate(order, start=1):
            version = by_label[name].version
            for score in SCORES:
                client.set_model_version_tag(names.SEGMENTATION_MODEL, version, f"holdout_{score}",
                                             f"{table.loc[name, f'{score}_mean']:.6f}")
            client.set_model_version_tag(names.SEGMENTATION_MODEL, version, "holdout_rank", str(position))
            client.set_model_version_tag(names.SEGMENTATION_MODEL, version, "holdout_fingerprint", holdout_print)
        for position, name in enumerate(top, start=1):
            registry.set_alias(names.SEGMENTATION_MODEL, names.top_alias(position), by_label[name].version)
        registry.delete_aliases_beyond(names.SEGMENTATION_MODEL, names.TOP_PREFIX, len(top))
        scored = {str(v.version) for v in found}
        for other in registry.versions(names.SEGMENTATION_MODEL):
            if str(other.version) not in scored and "holdout_rank" in other.tags:
                client.delete_model_version_tag(names.SEGMENTATION_MODEL, other.version, "holdout_rank")
        before = registry.set_alias(names.SEGMENTATION_MODEL, names.CHAMPION, by_label[order[0]].version)
        print(f"segment_eval: champion -> version {by_label[order[0]].version} (was {before})")

        mlflow.log_metrics({f"champion_{k}": float(v) for k, v in table.loc[order[0]].items()})
        mlflow.log_metrics({f"and_top_k_{k}": float(v) for k, v in table.loc[ensemble_name].items()})
        with tempfile.TemporaryDirectory() as tmp:
            write_table(table, tmp, "holdout_scores")
            means = table[[f"{s}_mean" for s in SCORES]].rename(columns=lambda c: c.removesuffix("_mean"))
            polar_scores(means, list(SCORES), Path(tmp) / "holdout_polar.png", "Holdout segmentation scores")
            mlflow.log_artifacts(tmp)
        print(markdown_table(table))


if __name__ == "__main__":
    main()
