"""Entry point ``sweep``: an Optuna search of one classification loss's parameters over the paper's
grids (or TPE over the same values), each trial a classify training nested under this sweep's run.
Start it several times with the same study and storage to add workers: they share the trials."""

from __future__ import annotations

import argparse

from multiloss import names
from multiloss.classification.sweeps.grid import load_grid, search_space
from multiloss.classification.sweeps.storage import storage_label
from multiloss.classification.sweeps.study import (
    PRUNERS,
    SAMPLERS,
    SweepSettings,
    check_existing_study,
    pin_inputs,
)
from multiloss.classification.sweeps.worker import run_sweep
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.stages import classify
from multiloss.stages.cli import StageParser, integer
from multiloss.tracking import store


def parser() -> StageParser:
    parser = StageParser("sweep", description=__doc__)
    parser.parameter("loss", required=True, choices=list(CLASSIFICATION_LOSSES))
    parser.parameter("n_trials", type=integer("n_trials", 0),
                     help="trials in all, across workers; 0 = the whole grid (sampler=grid only)")
    parser.parameter("sampler", choices=SAMPLERS)
    parser.parameter("storage", help="empty: a journal file under the tracking store; an RDB URL (postgresql://...) "
                                     "for workers on several machines; else a journal file path")
    parser.parameter("study", help="empty: sweep-<loss>-<hash of the data, encoder version and settings>")
    parser.parameter("pruner", choices=PRUNERS)
    parser.parameter("grid", help="YAML file replacing some of the paper's grids (sweep_grids.yaml)")
    parser.parameter("heartbeat", type=integer("heartbeat", 1),
                     help="seconds between a running trial's heartbeats; silent for twice that = crashed, requeued")
    classify.add_training_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def settings_from(args: argparse.Namespace) -> SweepSettings:
    """The worker's settings, pinned (data fingerprinted, encoder fixed to one version) and checked
    against an existing study of its name, before any run: errors name the parameter or the study."""
    store.configure()                  # the registry the encoder is read from is this store's
    try:
        grid = load_grid(args.grid or None)
    except (OSError, ValueError) as err:
        raise SystemExit(f"sweep: parameter grid: {err}") from None
    try:
        settings = pin_inputs(SweepSettings(
            loss=args.loss, space=search_space(args.loss, grid), training=classify.training_arguments(args),
            sampler=args.sampler, n_trials=args.n_trials, pruner=args.pruner, seed=args.seed, study=args.study,
            storage=args.storage, heartbeat=args.heartbeat))
        check_existing_study(settings)
    except ValueError as err:
        raise SystemExit(f"sweep: {err}") from None
    return settings


def main(argv=None) -> None:
    args = parse_args(argv)
    classify.check_variant("sweep", args.variant, args.loss)
    settings = settings_from(args)
    with store.stage_run(names.SWEEPS_EXPERIMENT, run_name=settings.study_name):
        store.log_params({"loss": args.loss, "n_trials": args.n_trials, "sampler": args.sampler,
                          "storage": storage_label(args.storage), "study": settings.study_name,
                          "pruner": args.pruner, "grid": args.grid, "heartbeat": args.heartbeat,
                          "search_space": settings.space, **settings.training,
                          "data_fingerprint": settings.data_fingerprint, "encoder_version": settings.encoder_version})
        outcome = run_sweep(settings)
    print(f"sweep: this worker ran {len(outcome.trials_run)} trial(s) of study {settings.study_name!r}"
          + (f"; registered version {outcome.registered_version}" if outcome.registered_version else ""))


if __name__ == "__main__":
    main()
