"""Entry point ``sweep``: an Optuna search of one classification loss's parameters over the paper's
grids (or TPE over the same values), each trial a classify training nested under this sweep's run.
Start it several times with the same study and storage to add workers (SPEC §13)."""

from __future__ import annotations

import argparse

from multiloss import names
from multiloss.classification import sweeps
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.stages.classify import TRAINING_ARGUMENTS, add_training_arguments
from multiloss.stages.cli import integer
from multiloss.tracking import store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__)
    parser.add_argument("--loss", required=True, choices=list(CLASSIFICATION_LOSSES))
    parser.add_argument("--n-trials", type=integer("n_trials", 0), default=0,
                        help="trials in all, across workers; 0 = the whole grid (sampler=grid only)")
    parser.add_argument("--sampler", choices=sweeps.SAMPLERS, default="grid")
    parser.add_argument("--storage", default="",
                        help="empty: a journal file under the tracking store; an RDB URL (postgresql://...) "
                             "for workers on several machines; else a journal file path")
    parser.add_argument("--study", default="", help="empty: sweep-<loss>")
    parser.add_argument("--pruner", choices=sweeps.PRUNERS, default="none")
    parser.add_argument("--grid", default="", help="YAML file replacing some of the paper's grids (sweep_grids.yaml)")
    parser.add_argument("--heartbeat", type=integer("heartbeat", 1), default=60,
                        help="seconds between a running trial's heartbeats; silent for twice that = crashed, requeued")
    add_training_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = sweeps.SweepSettings(
        loss=args.loss, space=sweeps.search_space(args.loss, sweeps.load_grid(args.grid or None)),
        training={k: getattr(args, k) for k in TRAINING_ARGUMENTS}, sampler=args.sampler, n_trials=args.n_trials,
        pruner=args.pruner, seed=args.seed, study=args.study, storage=args.storage, heartbeat=args.heartbeat)
    with store.stage_run(names.SWEEPS_EXPERIMENT, run_name=settings.study_name):
        store.log_params({"loss": args.loss, "n_trials": args.n_trials, "sampler": args.sampler,
                             "storage": sweeps.storage_label(args.storage), "study": settings.study_name,
                             "pruner": args.pruner, "grid": args.grid, "heartbeat": args.heartbeat,
                             "search_space": settings.space, **settings.training})
        outcome = sweeps.run_sweep(settings)
    print(f"sweep: this worker ran {len(outcome.trials_run)} trial(s) of study {settings.study_name!r}"
          + (f"; registered version {outcome.registered_version}" if outcome.registered_version else ""))


if __name__ == "__main__":
    main()
