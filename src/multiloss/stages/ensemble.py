"""Entry point ``ensemble``: the top-K registered classifiers, every ensemble of SPEC §9, the
comparison table with significance tests, and the best ensemble registered as ``cxr-ensemble``
(an end-to-end pyfunc: raw image → segment → crop → members → combine)."""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import mlflow

from multiloss import registry, selection, serving, tracking
from multiloss.cropping import read_crop_summary
from multiloss.data.fingerprint import fingerprint
from multiloss.data.readers import find_kermany_root, read_kermany
from multiloss.ensembling import (Ensemble, choose_best, member_predictions, model_level, prediction_level, score_table,
                                  serving_parts, weighted_model_level)
from multiloss.evaluation import predictions_frame, split_figures
from multiloss.metrics.classification import CI_METHODS
from multiloss.plots import polar_scores
from multiloss.reports import markdown_table, write_table
from multiloss.stages.cli import integer
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
    parser.add_argument("--metric", default="val_mcc", help="score to rank members on (mcc, auroc_micro, ece, ...)")
    parser.add_argument("--select-on", choices=selection.SPLITS, default="val",
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


def main(argv=None) -> None:
    args = parse_args(argv)
    key = selection.selection_key(args.metric, args.select_on)
    data = Path(args.data).resolve()
    crop = read_crop_summary(data)
    if crop is None:
        raise SystemExit(f"ensemble: {data} is not a crop stage output (no crop.json); the end-to-end model "
                         "needs the crop settings")
    frame = read_kermany(data)
    data_print = fingerprint(frame["path"], root=find_kermany_root(data))
    seed_everything(args.seed)

    with tracking.stage_run("ensembles", run_name=f"ensemble-top{','.join(map(str, args.top_k))}"):
        ranked = selection.rank_versions(registry.CLASSIFIER_MODEL, key, tags={"data_fingerprint": data_print})
        if args.distinct == "loss":
            ranked = selection.distinct_by_tag(ranked, "loss")
        largest = args.top_k[-1]
        if len(ranked) < largest:
            raise SystemExit(f"ensemble: top_k {largest} needs {largest} {registry.CLASSIFIER_MODEL} versions trained "
                             f"on {data} (fingerprint {data_print[:12]}) with a {key} score; found {len(ranked)}")
        chosen = ranked[:largest]
        sizes = {r.version.tags.get("img_size") for r in chosen}
        if len(sizes) != 1:
            raise SystemExit(f"ensemble: the chosen members were trained at different img_size tags {sorted(sizes)}")
        img_size = int(sizes.pop())
        names = [f"{r.version.tags.get('loss', '?')} (v{r.version.version})" for r in chosen]
        tracking.log_params({"top_k": ",".join(map(str, args.top_k)), "metric": args.metric, "select_on": args.select_on,
                             "selection_key": key, "data": str(data), "distinct": args.distinct, "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience, "seed": args.seed,
                             "ci_method": args.ci_method, "img_size": img_size,
                             "members": ",".join(str(r.version.version) for r in chosen)})
        mlflow.set_tags({"stage": "ensemble", "select_on": args.select_on, "data_fingerprint": data_print,
                         "test_selected": str(args.select_on == "test").lower()})
        for position, r in enumerate(chosen, start=1):
            print(f"ensemble: member {position}: {names[position - 1]}, {key} = {r.value:.4f}")

        run_ids = [r.version.run_id for r in chosen]
        val, test = member_predictions(run_ids, "val"), member_predictions(run_ids, "test")
        singles = [Ensemble(name, "single", [name], val.probs[i], test.probs[i]) for i, name in enumerate(names)]
        members = [registry.load_keras(f"models:/{registry.CLASSIFIER_MODEL}/{r.version.version}") for r in chosen]
        val_paths = set(val.paths)
        train = frame[(frame.split == "train") & ~frame["path"].astype(str).isin(val_paths)]

        ensembles, levels = [], []
        for k in args.top_k:
            sub = lambda s: type(s)(s.paths, s.labels, s.probs[:k])  # noqa: E731
            ensembles += prediction_level(names[:k], sub(val), sub(test), seed=args.seed)
            level = model_level(names[:k], members[:k], train_paths=train["path"].astype(str).tolist(),
                                train_labels=train["label"].tolist(), val=sub(val), test=sub(test), img_size=img_size,
                                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                                seed=args.seed, metric_prefix=f"model_level_top{k}.")
            levels.append(level)
        ensembles += levels
        if len(levels) > 1:
            ensembles.append(weighted_model_level(levels, val, seed=args.seed))

        table = score_table(singles, ensembles, test.labels, val.labels, reference=singles[0],
                            ci_method=args.ci_method, seed=args.seed)
        score, select_labels = key.split("_", 1)[1], val.labels if args.select_on == "val" else test.labels
        best, _ = choose_best(ensembles, score, select_labels, on=args.select_on,
                              higher_is_better=selection.higher_is_better(key))
        for name, row in table.iterrows():
            mlflow.log_metrics({f"{slug(name)}.{m}": float(row[m]) for m in ("mcc", "accuracy", "f1", "auroc_micro",
                                                                              "ece", "val_mcc")})
        headline = table.loc[best.name]
        mlflow.log_metrics({f"test_{m}": float(headline[m]) for m in ("mcc", "mcc_low", "mcc_high", "accuracy", "f1",
                                                                       "auroc_micro", "auprc_micro", "ece", "brier", "nll")})
        mlflow.log_metric("val_mcc", float(headline["val_mcc"]))

        level_uris = {}
        for level in levels:
            info = mlflow.tensorflow.log_model(registry.inference_copy(level.parts[0].full),
                                               name=f"model_level_top{len(level.members)}",
                                               pip_requirements=registry.pip_requirements())
            level_uris[level.name] = info.model_uri
        best_level, _ = choose_best(levels, score, select_labels, on=args.select_on,
                                    higher_is_better=selection.higher_is_better(key))
        mlflow.set_tag("model_level_uri", level_uris[best_level.name])
        mlflow.set_tag("best_ensemble", best.name)

        with tempfile.TemporaryDirectory() as tmp:
            write_table(table, tmp, "ensemble_scores")
            polar_scores(table[["f1", "mcc"]].T, list(table.index), Path(tmp) / "ensemble_polar.png",
                         "Test F1 and MCC per model")
            split_figures(tmp, "test", test.labels, best.test_probs, best.name)
            predictions_frame(test.paths, test.labels, best.test_probs).to_csv(
                Path(tmp) / "best_test_predictions.csv", index=False)
            mlflow.log_artifacts(tmp)

        segmenters = [registry.load_keras(f"models:/{registry.SEGMENTATION_MODEL}/{v}") for v in crop["members"]]
        config = serving.pipeline_config(crop, img_size, frame["path"])
        parts, combiner = serving_parts(best, members)
        info = serving.log_pipeline(segmenters=segmenters, parts=parts, combiner=combiner, config=config,
                                    weights=best.weights, stacker=best.stacker, name="model",
                                    registered_model_name=registry.ENSEMBLE_MODEL,
                                    pip_requirements=registry.pip_requirements())
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        member_versions = [str(r.version.version) for r in chosen[:len(best.members)]] if best.kind != "model_level_weighted" \
            else [str(r.version.version) for r in chosen]
        tags = {"ensemble": best.name, "kind": best.kind, "k": len(best.members), "members": ",".join(member_versions),
                "segmenters": ",".join(crop["members"]), "select_on": args.select_on, "data_fingerprint": data_print,
                "img_size": img_size, "val_mcc": round(float(headline["val_mcc"]), 6),
                **{f"test_{m}": round(float(headline[m]), 6) for m in ("mcc", "accuracy", "ece", "auroc_micro")}}
        for tag, value in tags.items():
            client.set_model_version_tag(registry.ENSEMBLE_MODEL, version, tag, str(value))

        moves = [(registry.ENSEMBLE_MODEL, "champion", version)]
        moves += [(registry.CLASSIFIER_MODEL, "champion", str(chosen[0].version.version))]
        moves += [(registry.CLASSIFIER_MODEL, f"top{i}", str(r.version.version)) for i, r in enumerate(chosen, start=1)]
        for model_name, alias, target in moves:
            before = registry.set_alias(model_name, alias, target)
            if before != target:
                print(f"ensemble: {model_name}@{alias} -> version {target} (was {before})")
        registry.delete_aliases_beyond(registry.CLASSIFIER_MODEL, "top", len(chosen))

        print(markdown_table(table[["kind", "k", "accuracy", "auroc_micro", "f1", "mcc", "mcc_low", "mcc_high", "ece",
                                    "val_mcc", "mcnemar_p", "bootstrap_p"]]))
        print(f"ensemble: best on {args.select_on} ({key.split('_', 1)[1]}): {best.name}; registered "
              f"{registry.ENSEMBLE_MODEL} version {version} (test MCC {headline['mcc']:.4f} "
              f"[{headline['mcc_low']:.3f}, {headline['mcc_high']:.3f}])")


if __name__ == "__main__":
    main()
