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
import time

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from multiloss import names
from multiloss.pipeline import engine, reuse
from multiloss.stages.cli import integer
from multiloss.tracking import store

EXPERIMENT = names.PIPELINE_EXPERIMENT


def seed_list(text: str) -> list[int]:
    parse = integer("seeds", 0)
    seeds = [parse(part) for part in text.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"parameter seeds must be distinct integers such as 0 or 0,1,2, got {text!r}")
    return seeds


def flag(text: str) -> bool:
    if text.strip().lower() in ("true", "1", "yes"):
        return True
    if text.strip().lower() in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"parameter fresh must be true or false, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main", description=__doc__)
    parser.add_argument("--profile", default="demo", help="experiments/<profile>.yaml, or a path to a YAML profile")
    parser.add_argument("--data", default="",
                        help="folder holding lungs/, MontgomerySet/, chest_xray/; 'synthetic'; empty: the profile's")
    parser.add_argument("--img-size", type=integer("img_size", 0), default=0,
                        help="every image size of the chain (U-Net, crop, classifier); 0: the profile's")
    parser.add_argument("--epochs", type=integer("epochs", 0), default=0,
                        help="most epochs of each U-Net and classifier; 0: the profile's")
    parser.add_argument("--seeds", type=seed_list, default=[0], help="each classifier is trained once per seed")
    parser.add_argument("--seg-losses", default="", help="comma-separated subset of the profile's U-Net losses")
    parser.add_argument("--cls-losses", default="", help="comma-separated subset of the profile's classifier losses")
    parser.add_argument("--until", choices=engine.STAGES, default=engine.STAGES[-1],
                        help="the last stage to run (default: all, ending with the report)")
    parser.add_argument("--fresh", type=flag, default=False, help="true: run every step again, reusing nothing")
    parser.add_argument("--workers", type=integer("workers", 0), default=0,
                        help="steps run at once (the U-Nets, the classifiers), this process and workers - 1 "
                             "worker processes; 0: the profile's (1 where it sets none)")
    return parser.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _parent_run(client: mlflow.MlflowClient, run_id: str | None) -> str:
    """The run ``mlflow run`` created for us, or a new one in the pipeline experiment."""
    if run_id:
        return run_id
    experiment_id = store.ensure_experiment(EXPERIMENT)
    return client.create_run(experiment_id, run_name="main").info.run_id


def _log_new_params(client: mlflow.MlflowClient, run_id: str, params: dict[str, object]) -> None:
    logged = client.get_run(run_id).data.params
    fresh = [mlflow.entities.Param(k, str(v)) for k, v in params.items() if k not in logged]
    if fresh:
        client.log_batch(run_id, params=fresh)


def main(argv=None) -> None:
    args = parse_args(argv)
    profile = engine.with_overrides(engine.load_profile(args.profile), img_size=args.img_size,
                                      epochs=args.epochs, seg_losses=args.seg_losses, cls_losses=args.cls_losses)
    workers = args.workers or profile.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise ValueError(f"profile {args.profile}: workers must be a whole number of processes, got {workers!r}")
    signal.signal(signal.SIGTERM, _interrupt)
    store.configure()
    client = mlflow.MlflowClient()
    reuse.end_dead_pipelines()
    launched = os.environ.pop("MLFLOW_RUN_ID", None)      # steps set it for their own runs
    parent = _parent_run(client, launched)
    client.set_tag(parent, MLFLOW_RUN_NAME, f"main-{args.profile}")
    client.set_tag(parent, names.STAGE_TAG, "main")
    for key, value in reuse.process_tags().items():
        client.set_tag(parent, key, value)
    _log_new_params(client, parent, {"profile": args.profile, "data": args.data, "img_size": args.img_size,
                                     "epochs": args.epochs, "seeds": ",".join(map(str, args.seeds)),
                                     "seg_losses": args.seg_losses, "cls_losses": args.cls_losses,
                                     "until": args.until, "fresh": str(args.fresh).lower(),
                                     "workers": workers})
    client.log_dict(parent, profile, "profile.json")
    started = time.monotonic()
    pipeline = engine.Pipeline(parent, fresh=args.fresh, workers=workers)
    try:
        runs = engine.run_chain(pipeline, profile, args.data, args.seeds, args.until)
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")
        print("main: interrupted; the next run redoes only the unfinished steps", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    reused = sum(step["how"] == "reused" for step in pipeline.steps.values())
    ran = sum(step["how"] == "ran" for step in pipeline.steps.values())
    seconds = time.monotonic() - started
    for name, value in {"steps_ran": ran, "steps_reused": reused, "pipeline_seconds": seconds}.items():
        client.log_metric(parent, name, value)
    report = engine.report_text(runs.get("report"))
    if report:
        print(report)
    print(f"main: done in {seconds:.0f} s: {ran} steps ran, {reused} reused "
          f"(parent run {parent})", flush=True)
    if not launched:
        client.set_terminated(parent, "FINISHED")


if __name__ == "__main__":
    main()
