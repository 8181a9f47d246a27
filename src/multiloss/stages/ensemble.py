"""Entry point ``ensemble``: every ensemble of the top-K registered classifiers, and the best one served.

The comparison table carries significance tests against the best single model; the best ensemble
is registered as ``cxr-ensemble``, an end-to-end pyfunc (raw image → segment → crop → members →
combine), so serving needs neither the crop stage nor the registry it came from.

``variant`` reproduces flaws of the published code (multiloss.variants): its ensemble flaws act in
the ensembles (``test_selection`` also chooses the members and the best ensemble on test), its loss
flaws choose the members (classifiers trained with exactly the flaws it prescribes for their loss).
"""

from __future__ import annotations

import argparse
import dataclasses

import mlflow

from multiloss import names, variants
from multiloss.ensembles.members import POOLS, EnsembleInputError
from multiloss.ensembles.run import EnsembleSettings, build_and_register, prepare
from multiloss.metrics.classification import CI_METHODS, MCC_INTERVAL_LABELS
from multiloss.stages.cli import StageParser, boolean, integer, variant, version_list
from multiloss.tracking import ranking, store


def top_k_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"top_k must be comma-separated integers such as 3,5, got {text!r}") from None
    if not values or values[0] < 2:
        raise argparse.ArgumentTypeError(f"top_k needs sizes of at least 2, got {text!r}")
    return values


def parser() -> StageParser:
    stage = StageParser("ensemble", __doc__)
    stage.parameter("top_k", type=top_k_list, help="ensemble sizes, e.g. 3,5")
    stage.parameter("metric",
                    help="score to rank members on (mcc, auroc_micro, ece, ...) on validation (on test under the "
                         "flaw test_selection)")
    stage.parameter("data", required=True, help="the cropped dataset the members were trained on")
    stage.parameter("distinct", choices=("loss", "none"),
                    help="loss: at most one member per loss (the best version of each)")
    stage.parameter("epochs", type=integer("epochs", 1), help="model-level head training")
    stage.parameter("batch_size", type=integer("batch_size", 1))
    stage.parameter("lr", type=float)
    stage.parameter("patience", type=integer("patience", 1))
    stage.parameter("seed", type=integer("seed", 0))
    stage.parameter("ci_method", choices=CI_METHODS)
    stage.parameter("pool", choices=POOLS,
                    help="same_data: members share the best version's encoder (and always its data and image size); "
                         "any_encoder: any U-Net encoder")
    stage.parameter("include_degenerate", type=boolean("include_degenerate"),
                    help="true: classifiers flagged degenerate on validation may be members")
    stage.parameter("set_aliases", type=boolean("set_aliases"),
                    help="false: move no alias (champion, top<k>, test_selected), e.g. for an ablation's ensembles")
    stage.parameter("versions", type=version_list("versions"),
                    help="cxr-classifier versions the members are chosen from (empty: every version of the data)")
    stage.parameter("variant", type=variant,
                    help="corrected, published, or flaws of the published code to reproduce: "
                         + ", ".join(variants.BY_NAME) + "; members are classifiers trained with the loss flaws "
                         "it names for their loss")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = EnsembleSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EnsembleSettings)})
    try:
        inputs = prepare(settings, args.data)
    except EnsembleInputError as err:
        raise SystemExit(f"ensemble: {err}") from None
    select_on = settings.select_on
    if args.metric != inputs.key:
        print(f"ensemble: ranking on {inputs.key} (metric {args.metric!r} on {select_on}, variant {args.variant.name})")
    print(f"ensemble: {inputs.members.pool.describe()}")

    sizes = ",".join(map(str, args.top_k))
    suffix = "" if args.variant.name == variants.CORRECTED else f"-{args.variant.name}"
    with store.stage_run(names.ENSEMBLES_EXPERIMENT, run_name=f"ensemble-top{sizes}{suffix}"):
        store.log_params({"top_k": sizes, "metric": args.metric, "variant": args.variant.name,
                          "selection_key": inputs.key, "data": str(inputs.data), "distinct": args.distinct,
                          "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                          "patience": args.patience, "seed": args.seed, "ci_method": args.ci_method,
                          "pool": args.pool, "include_degenerate": str(args.include_degenerate).lower(),
                          "versions": ",".join(args.versions), "set_aliases": str(args.set_aliases).lower(),
                          "img_size": inputs.members.img_size,
                          "members": ",".join(inputs.members.versions)})
        mlflow.set_tags({names.STAGE_TAG: "ensemble", names.SELECT_ON_TAG: select_on,
                         names.DATA_FINGERPRINT_TAG: inputs.data_print,
                         names.TEST_SELECTED_TAG: str(select_on == "test").lower(),
                         names.MCC_INTERVAL_TAG: MCC_INTERVAL_LABELS[args.ci_method], **variants.tags(args.variant)})
        ranking.log_pool(inputs.members.pool)
        build_and_register(inputs)


if __name__ == "__main__":
    main()
