"""Pruning benchmark: one loss's full grid without pruning, then with each pruner, on synthetic
data; epochs spent and best validation NLL found, against the grid's epoch budget.

Everything goes to a throw-away store (``--home``, a fresh temporary folder by default): synthetic
data, a briefly trained U-Net whose encoder the classifiers start from, and one study per pruner.
Trials run with patience = epochs, so an unpruned trial always runs every epoch and the grid's
budget is exactly points × epochs. Target: the pruned sweeps reach the grid's best value with
≤ 40 % of that budget.

    .venv/bin/python bench/sweep_pruning.py --loss ls_focal --epochs 20 --img-size 64 --lr 0.01 \
        --n-cls 120 --val-fraction 0.2 --home /tmp/sweep-bench

At 32 px and lr 1e-3 the classifiers barely learn and the grid's "best" is noise; at 64 px and lr
0.01 every trial sits near ln 3 for its first ~4 epochs, so a pruner can only tell trials apart
after that, and the share of the grid it saves grows with the epochs per trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from multiloss import names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="cal_cce", help="a loss with parameters (its grid is swept)")
    parser.add_argument("--grid", default="", help="YAML replacing some of the paper's grids")
    parser.add_argument("--pruners", default="none,median,hyperband", help="'none' first: it defines the grid's best")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bn-momentum", type=float, default=0.9,
                        help="BatchNorm momentum (0.99, the default, lags over a few hundred CPU steps)")
    parser.add_argument("--augment", default="none", help="classify's augment (none|paper)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the training images held out for validation (the pruned value's noise)")
    parser.add_argument("--n-cls", type=int, default=90, help="synthetic classification images per class (80 %% train, 20 %% test)")
    parser.add_argument("--n-seg", type=int, default=40, help="synthetic lung masks for the encoder's U-Net")
    parser.add_argument("--size", type=int, default=64, help="synthetic image size on disk")
    parser.add_argument("--unet-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default="", help="store and data folder (default: a new temporary folder)")
    args = parser.parse_args()
    pruners = args.pruners.split(",")
    if pruners[0] != "none":
        parser.error("--pruners must start with none (the full grid defines the best value to reach)")

    home = Path(args.home or tempfile.mkdtemp(prefix="sweep-bench-"))
    os.environ["MULTILOSS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import multiloss  # noqa: F401  (before TensorFlow)
    from multiloss.classification.sweeps.grid import load_grid, search_space
    from multiloss.classification.sweeps.study import SweepSettings
    from multiloss.classification.sweeps.worker import run_sweep
    from multiloss.data.synthetic import write_synthetic
    from multiloss.segmentation import train as unet_training
    from multiloss.stages import segment
    from multiloss.tracking import registry, store

    data = home / "synthetic"
    if not data.exists():
        write_synthetic(data, n_seg=args.n_seg, n_cls=args.n_cls, size=args.size, seed=args.seed)
    # The U-Net whose encoder the classifiers start from: the segment stage's defaults (read by its
    # parser from MLproject) but for these settings.
    unet = segment.parse_args(["--loss", "bce_dice", "--data", str(data / "lungs"),
                               "--img-size", str(max(32, args.img_size)), "--epochs", str(args.unet_epochs),
                               "--batch-size", "8", "--seed", str(args.seed), "--bn-momentum", str(args.bn_momentum)])
    prepared = unet_training.prepare(unet_training.UNetConfig.from_parameters(vars(unet)))
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name="segment-bce_dice"):
        trained = unet_training.train_unet(prepared)
        version = registry.log_and_register(trained.model, names.SEGMENTATION_MODEL, trained.registry_tags())
    encoder = registry.version_uri(names.SEGMENTATION_MODEL, version.version)

    space = search_space(args.loss, load_grid(args.grid or None))
    training = {"data": str(data / "chest_xray"), "encoder": encoder, "img_size": args.img_size,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "bn_momentum": args.bn_momentum, "augment": args.augment, "val_fraction": args.val_fraction,
                "ci_method": "wald", "patience": args.epochs}
    rows = []
    for pruner in pruners:
        settings = SweepSettings(args.loss, space, training, pruner=pruner, seed=args.seed,
                                        study=f"bench-{args.loss}-{pruner}", heartbeat=600)
        start = time.perf_counter()
        with store.stage_run(names.SWEEPS_EXPERIMENT, run_name=settings.study_name):
            study = run_sweep(settings).study
        trials = sorted(study.get_trials(), key=lambda t: t.datetime_start)
        rows.append({"pruner": pruner, "trials": trials, "seconds": time.perf_counter() - start,
                     "grid_epochs": settings.n_points * args.epochs})

    grid_best = min(t.value for t in rows[0]["trials"] if t.value is not None and t.state.name == "COMPLETE")
    print()
    print(f"{args.loss}: {len(rows[0]['trials'])} grid points × {args.epochs} epochs = {rows[0]['grid_epochs']} "
          f"grid epochs; {args.img_size} px, {args.n_cls} synthetic images per class")
    print()
    print("| pruner | complete | pruned | epochs spent | epochs / grid epochs | epochs until the best | "
          "best val NLL | best point | reaches the grid's best | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for row in rows:
        trials = row["trials"]
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        best = min(complete, key=lambda t: t.value)
        spent = sum(len(t.intermediate_values) for t in trials)
        until = 0
        for t in trials:
            until += len(t.intermediate_values)
            if t.number == best.number:
                break
        reaches = best.value <= grid_best * (1 + 1e-3)
        print(f"| {row['pruner']} | {len(complete)} | {sum(t.state.name == 'PRUNED' for t in trials)} | {spent} | "
              f"{spent / row['grid_epochs']:.2f} | {until} ({until / row['grid_epochs']:.2f}) | {best.value:.4f} | "
              f"{best.params} | {'yes' if reaches else 'no'} | {row['seconds']:.0f} |")
    print(f"\nstore: {home} (mlflow ui --backend-store-uri sqlite:///{home}/mlruns/mlflow.db)")


if __name__ == "__main__":
    main()
