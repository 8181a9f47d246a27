"""Entry point ``ensemble``: the top-K registered classifiers, every ensemble of SPEC §9, the
comparison table with significance tests, and the best ensemble registered as ``cxr-ensemble``
(an end-to-end pyfunc: raw image → segment → crop → members → combine)."""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from multiloss import names
from multiloss.classification.scoring import predictions_frame, split_figures
from multiloss.classification.train import TAGGED_SCORES
from multiloss.data.fingerprint import fingerprint
from multiloss.data.readers import find_kermany_root, read_kermany
from multiloss.ensembles import serving
from multiloss.ensembles.build import (
    build_all,
    choose_best,
    describe,
    level_slug,
    member_predictions,
    rebase,
    score_table,
    serving_parts,
)
from multiloss.metrics.classification import CI_METHODS, classification_scores
from multiloss.plots import polar_scores
from multiloss.report.tables import markdown_table, write_table
from multiloss.segmentation.cropped_dataset import read_crop_summary
from multiloss.stages.cli import integer
from multiloss.tracking import ranking, registry, store
from multiloss.training import seed_everything


def top_k_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"top_k must be comma-separated integers such as 3,5, got {text!r}") from None
    if not values or values[0] < 2:
        raise argparse.ArgumentTypeError(f"top_k needs sizes of at least 2, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ensemble", description=__doc__)
    parser.add_argument("--top-k", type=top_k_list, default=[3, 5], help="ensemble sizes, e.g. 3,5")
    parser.add_argument("--metric", default="val_mcc",
                        help="score to rank members on (mcc, auroc_micro, ece, ...); its split comes from --select-on")
    parser.add_argument("--select-on", choices=ranking.SPLITS, default="val",
                        help="split the members and the best ensemble are chosen on; test reproduces the paper")
    parser.add_argument("--data", required=True, help="the cropped dataset the members were trained on")
    parser.add_argument("--distinct", choices=("loss", "none"), default="loss",
                        help="loss: at most one member per loss (the best version of each)")
    parser.add_argument("--epochs", type=integer("epochs", 1), default=20, help="model-level head training")
    parser.add_argument("--batch-size", type=integer("batch_size", 1), default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=integer("patience", 1), default=5)
    parser.add_argument("--seed", type=integer("seed", 0), default=0)
    parser.add_argument("--ci-method", choices=CI_METHODS, default="bootstrap")
    return parser.parse_args(argv)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


CROP_KEYS = ("members", "seg_size", "img_size", "margin")


def choose_members(args, key: str, data_print: str, data: Path) -> tuple[list, int]:
    """The top max(top_k) versions trained on this data, best first, and their common img_size;
    every way this can fail is reported before anything is trained or logged."""
    ranked = ranking.rank_versions(names.CLASSIFIER_MODEL, key, tags={names.DATA_FINGERPRINT_TAG: data_print})
    pool = len(ranked)
    if args.distinct == "loss":
        ranked = ranking.distinct_by_tag(ranked, "loss")
    largest = args.top_k[-1]
    if len(ranked) < largest:
        shrunk = f" ({pool} versions, {len(ranked)} distinct losses; distinct=none allows repeats)" \
            if args.distinct == "loss" else ""
        raise SystemExit(f"ensemble: top_k {largest} needs {largest} {names.CLASSIFIER_MODEL} versions trained on "
                         f"{data} (fingerprint {data_print[:12]}) with a {key} score; found {len(ranked)}{shrunk}")
    chosen = ranked[:largest]
    sizes = {str(r.version.version): r.version.tags.get("img_size") for r in chosen}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise SystemExit(f"ensemble: the chosen members need one common img_size tag; version → img_size: {sizes}")
    return chosen, int(next(iter(sizes.values())))


def main(argv=None) -> None:
    args = parse_args(argv)
    key = ranking.selection_key(args.metric, args.select_on)
    score = ranking.base_score(key)
    data = Path(args.data).resolve()
    crop = read_crop_summary(data)
    if crop is None or any(k not in crop for k in CROP_KEYS):
        raise SystemExit(f"ensemble: {data} is not a crop stage output (no crop.json with {', '.join(CROP_KEYS)}); "
                         "the end-to-end model repeats that crop")
    frame = read_kermany(data)
    data_print = fingerprint(frame["path"], root=find_kermany_root(data))
    store.configure()
    chosen, img_size = choose_members(args, key, data_print, data)
    if score not in classification_scores(np.array([0, 1, 2]), np.eye(3)):
        raise SystemExit(f"ensemble: metric {args.metric!r} ranks the members, but the ensembles are compared on "
                         f"the classification scores; use one of them (mcc, auroc_micro, ece, ...)")
    try:
        registry.versions(names.SEGMENTATION_MODEL, only=[str(v) for v in crop["members"]])
    except ValueError as err:
        raise SystemExit(f"ensemble: the U-Nets that cropped {data} are gone from the registry: {err}") from None
    segmenter_uris = [f"models:/{names.SEGMENTATION_MODEL}/{v}" for v in crop["members"]]
    seed_everything(args.seed)
    versions = [str(r.version.version) for r in chosen]
    member_names = [f"{r.version.tags.get('loss', '?')} (v{v})" for r, v in zip(chosen, versions)]
    if args.metric != key:
        print(f"ensemble: ranking on {key} (metric {args.metric!r} on select_on={args.select_on})")

    with store.stage_run(names.ENSEMBLES_EXPERIMENT, run_name=f"ensemble-top{','.join(map(str, args.top_k))}"):
        store.log_params({"top_k": ",".join(map(str, args.top_k)), "metric": args.metric, "select_on": args.select_on,
                             "selection_key": key, "data": str(data), "distinct": args.distinct, "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience, "seed": args.seed,
                             "ci_method": args.ci_method, "img_size": img_size, "members": ",".join(versions)})
        mlflow.set_tags({names.STAGE_TAG: "ensemble", "select_on": args.select_on, names.DATA_FINGERPRINT_TAG: data_print,
                         "test_selected": str(args.select_on == "test").lower()})
        for position, (r, name) in enumerate(zip(chosen, member_names), start=1):
            print(f"ensemble: member {position}: {name}, {key} = {r.value:.4f}")

        run_ids = [r.version.run_id for r in chosen]
        val = rebase(member_predictions(run_ids, "val"), frame, "val", "train")
        test = rebase(member_predictions(run_ids, "test"), frame, "test", "test")
        members = [registry.load_keras(f"models:/{names.CLASSIFIER_MODEL}/{v}") for v in versions]
        singles, ensembles, levels = build_all(member_names, members, frame, val, test, top_k=args.top_k, img_size=img_size,
                                               epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                               patience=args.patience, seed=args.seed)

        table = score_table(singles, ensembles, test.labels, val.labels, reference=singles[0],
                            ci_method=args.ci_method, seed=args.seed)
        select_labels = val.labels if args.select_on == "val" else test.labels
        higher = ranking.higher_is_better(key)
        best, _ = choose_best(ensembles, score, select_labels, on=args.select_on, higher_is_better=higher)
        best_level, _ = choose_best(levels, score, select_labels, on=args.select_on, higher_is_better=higher)
        for name, row in table.iterrows():
            mlflow.log_metrics({f"{slug(name)}.{m}": float(row[m]) for m in (*TAGGED_SCORES, "f1", "val_mcc")})
        headline = table.loc[best.name]
        mlflow.log_metrics({f"test_{m}": float(headline[m]) for m in (*TAGGED_SCORES, "mcc_low", "mcc_high", "f1",
                                                                       "auprc_micro", "brier", "nll")})
        mlflow.log_metric("val_mcc", float(headline["val_mcc"]))

        for level in levels:
            info = registry.log_keras(level.parts[0].full, name=level_slug(len(level.members)),
                                      keep_in_memory=level is best_level)      # main's Grad-CAM loads it next
            if level is best_level:
                mlflow.set_tag("model_level_uri", info.model_uri)
        mlflow.set_tag("best_ensemble", best.name)

        with tempfile.TemporaryDirectory() as tmp:
            write_table(table, tmp, "ensemble_scores")
            (Path(tmp) / "ensembles.json").write_text(json.dumps(describe(ensembles), indent=2))
            polar_scores(table[["f1", "mcc"]].T, list(table.index), Path(tmp) / "ensemble_polar.png",
                         "Test F1 and MCC per model")
            split_figures(tmp, "test", test.labels, best.test_probs, best.name)
            predictions_frame(test.paths, test.labels, best.test_probs).to_csv(
                Path(tmp) / "best_test_predictions.csv", index=False)
            mlflow.log_artifacts(tmp)

        segmenters = [registry.load_keras(uri) for uri in segmenter_uris]
        parts, combiner = serving_parts(best, members)
        info = serving.log_pipeline(segmenters=segmenters, parts=parts, combiner=combiner,
                                    config=serving.pipeline_config(crop, img_size, frame["path"]),
                                    weights=best.weights, stacker=best.stacker, name="model",
                                    registered_model_name=names.ENSEMBLE_MODEL,
                                    pip_requirements=registry.pip_requirements())
        version = str(info.registered_model_version)
        in_best = versions if best.kind == "model_level_weighted" else versions[:len(best.members)]
        tags = {"ensemble": best.name, "kind": best.kind, "k": len(best.members), "members": ",".join(in_best),
                "segmenters": ",".join(crop["members"]), "select_on": args.select_on, names.DATA_FINGERPRINT_TAG: data_print,
                "img_size": img_size, "val_mcc": round(float(headline["val_mcc"]), 6),
                **{f"test_{m}": round(float(headline[m]), 6) for m in TAGGED_SCORES}}
        client = mlflow.MlflowClient()
        for tag, value in tags.items():
            client.set_model_version_tag(names.ENSEMBLE_MODEL, version, tag, str(value))
        print(markdown_table(table[["kind", "k", "accuracy", "auroc_micro", "f1", "mcc", "mcc_low", "mcc_high", "ece",
                                    "val_mcc", "mcnemar_p", "bootstrap_p"]]))
        print(f"ensemble: best on {args.select_on} ({score}): {best.name}; registered {names.ENSEMBLE_MODEL} "
              f"version {version} (test MCC {headline['mcc']:.4f} [{headline['mcc_low']:.3f}, {headline['mcc_high']:.3f}])")

        # Aliases last, once the version is whole. A test-selected choice gets its own alias: it
        # must not become the champion that other stages (gradcam, serving) pick up by default.
        if args.select_on == "val":
            moves = [(names.ENSEMBLE_MODEL, names.CHAMPION, version), (names.CLASSIFIER_MODEL, names.CHAMPION, versions[0])]
            moves += [(names.CLASSIFIER_MODEL, names.top_alias(i), v) for i, v in enumerate(versions, start=1)]
        else:
            moves = [(names.ENSEMBLE_MODEL, names.TEST_SELECTED, version)]
        for model_name, alias, target in moves:
            before = registry.set_alias(model_name, alias, target)
            if before != target:
                print(f"ensemble: {model_name}@{alias} -> version {target} (was {before or 'unset'})")
        if args.select_on == "val":
            registry.delete_aliases_beyond(names.CLASSIFIER_MODEL, names.TOP_PREFIX, len(versions))


if __name__ == "__main__":
    main()
