"""Entry point ``main``: the whole pipeline for a profile, each stage a child run of this run, a
finished stage reused (same entry point, parameters, code version and input), then the report.

Killed midway (SIGTERM or SIGKILL), the next start marks the dead pipeline's unfinished runs KILLED
and redoes only what did not finish.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from multiloss import cpu_threads, variants
from multiloss.pipeline import chain, profiles
from multiloss.stages.cli import StageParser, boolean, integer, variant
from multiloss.team import gpus
from multiloss.tracking import urls


def seed_list(text: str) -> list[int]:
    parse = integer("seeds", 0)
    seeds = [parse(part) for part in text.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"parameter seeds must be distinct integers such as 0 or 0,1,2, got {text!r}")
    return seeds


def chain_size(text: str) -> int:
    """0 (the profile's sizes) or a size every model of the chain can take (a multiple of 32)."""
    size = integer("img_size", 0)(text)
    if size % 32:
        raise argparse.ArgumentTypeError(f"parameter img_size must be 0 (the profile's) or a multiple of 32 "
                                         f"(the U-Net halves it five times), got {size}")
    return size


def parser() -> StageParser:
    parser = StageParser("main", description=__doc__)
    parser.parameter("profile", help="experiments/<profile>.yaml, or a path to a YAML profile")
    parser.parameter("data", help="folder holding lungs/, MontgomerySet/, chest_xray/; 'synthetic'; empty: the profile's")
    parser.parameter("img_size", type=chain_size,
                     help="every image size of the chain (U-Net, crop, classifier); 0: the profile's")
    parser.parameter("epochs", type=integer("epochs", 0), help="most epochs of each U-Net and classifier; 0: the profile's")
    parser.parameter("seeds", type=seed_list, help="each classifier is trained once per seed")
    parser.parameter("seg_losses", help="comma-separated subset of the profile's U-Net losses")
    parser.parameter("cls_losses", help="comma-separated subset of the profile's classifier losses")
    parser.parameter("until", choices=chain.STAGES, help="the last stage to run (default: all, ending with the report)")
    parser.parameter("fresh", type=boolean("fresh"), help="true: run every step again, reusing nothing")
    parser.parameter("workers", type=integer("workers", 0),
                     help="steps run at once (the U-Nets, the classifiers), this process and workers - 1 "
                          "worker processes; 0: the profile's (1 where it sets none)")
    parser.parameter("system_metrics", type=boolean("system_metrics"),
                     help="true: every step's run also logs CPU, memory and GPU use (system/<host>/<process>/...)")
    parser.parameter("variant", type=variant,
                     help="corrected, published, or flaws of the published code to reproduce: "
                          + ", ".join(variants.BY_NAME) + "; each classifier gets those acting on its loss")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> None:
    args = parse_args(argv)
    profile = profiles.with_overrides(profiles.load_profile(args.profile), img_size=args.img_size,
                                      epochs=args.epochs, seg_losses=args.seg_losses, cls_losses=args.cls_losses)
    workers = profiles.workers(profile, args.workers, args.profile)
    try:
        variants.check_acts(args.variant, profile["classify"]["losses"])
    except ValueError as err:
        raise SystemExit(f"main: {err}") from None
    try:
        profiles.check_training_options(profile, args.profile)
        threads = profiles.intra_op_threads(profile, args.profile)
        cpu_threads.apply(threads, f"profile {args.profile}: {cpu_threads.PARAMETER}")   # workers inherit it
    except ValueError as err:
        raise SystemExit(f"main: {err}") from None
    try:
        gpus.worker_environments(workers, gpus.visible_gpus())     # one GPU per process, if any
    except ValueError as err:
        raise SystemExit(f"main: parameter {err}") from None
    try:
        chain.data_root(profile, args.data)
    except ValueError as err:
        raise SystemExit(f"main: parameter data: {err}") from None
    signal.signal(signal.SIGTERM, _interrupt)
    if args.system_metrics:            # MLflow's switch, read by every step's run (workers inherit it)
        os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    params = {**vars(args), "seeds": ",".join(map(str, args.seeds)), "fresh": str(args.fresh).lower(),
              "system_metrics": str(args.system_metrics).lower(),
              "workers": workers, "variant": args.variant.name, **cpu_threads.logged()}
    try:
        done = chain.run_pipeline(profile, f"main-{args.profile}", params, data=args.data, seeds=args.seeds,
                                  until=args.until, fresh=args.fresh, workers=workers, variant=args.variant)
    except KeyboardInterrupt:
        print("main: interrupted; the next run redoes only the unfinished steps", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    if done.report:
        print(done.report)
    print(f"main: done in {done.seconds:.0f} s: {done.ran} steps ran, {done.reused} reused "
          f"(parent run {done.parent_run_id})", flush=True)
    print(f"main: in the MLflow UI (`make ui`): {urls.run_url(done.parent_run_id)}", flush=True)


if __name__ == "__main__":
    main()
