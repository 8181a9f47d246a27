"""Entry point ``ablation``: the paper as published beside the corrected suite on a prepared data
set and encoder. Every loss a flaw of the published code acts on is trained published and corrected
under the same seeds, with the base loss it should collapse to; then the ensembles of each variant
and the corrected sweeps of the paper's grids; the report compares them with paired tests."""

from __future__ import annotations

import argparse

from multiloss.ablation.plan import touched
from multiloss.ablation.run import AblationSettings, check, crop_encoder, run_ablation
from multiloss.classification.sweeps.study import PRUNERS
from multiloss.classification.train import pin_encoder
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.pipeline import profiles
from multiloss.stages.classify import check_data
from multiloss.stages.cli import StageParser, boolean, integer
from multiloss.stages.main import seed_list
from multiloss.tracking import store


def loss_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CLASSIFICATION_LOSSES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown loss {', '.join(unknown)}; choose from {', '.join(CLASSIFICATION_LOSSES)}")
    return chosen


def parser() -> StageParser:
    stage = StageParser("ablation", __doc__)
    stage.parameter("profile", help="experiments/<profile>.yaml: the classify and ensemble settings, the crop's output")
    stage.parameter("data", help="the cropped dataset; empty: the profile's crop output")
    stage.parameter("encoder", help="model URI of the U-Net whose encoder every classifier starts from; empty: the "
                                    "best U-Net of the crop (what main gave the crop's classifiers)")
    stage.parameter("seeds", type=seed_list, help="each training once per seed")
    stage.parameter("losses", type=loss_list, help="losses to ablate; empty: every profile loss a flaw acts on")
    stage.parameter("sweep_losses", type=loss_list, help="losses swept (corrected) over the paper's grids")
    stage.parameter("corrections", choices=("both", "each"),
                    help="ensembles: published and corrected; each: also one flaw corrected at a time")
    stage.parameter("pruner", choices=PRUNERS)
    stage.parameter("workers", type=integer("workers", 0), help="trainings at once; 0: the profile's")
    stage.parameter("fresh", type=boolean("fresh"), help="true: train everything again, reusing nothing")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        profile = profiles.load_profile(args.profile)
        workers = profiles.workers(profile, args.workers, args.profile)
    except ValueError as err:
        raise SystemExit(f"ablation: parameter profile: {err}") from None
    data = profiles.home_path(args.data or profile["crop"]["out"])
    check_data("ablation", str(data))
    losses = touched(args.losses or profile["classify"]["losses"])
    if not losses:
        raise SystemExit(f"ablation: parameter losses: no flaw of the published code acts on "
                         f"{', '.join(args.losses or profile['classify']['losses'])}")
    store.configure()
    try:
        encoder, described = pin_encoder(args.encoder or crop_encoder(data))
        settings = AblationSettings(profile=profile, data=data, encoder=encoder, seeds=args.seeds, losses=losses,
                                    sweep_losses=args.sweep_losses, corrections=args.corrections,
                                    pruner=args.pruner, workers=workers, fresh=args.fresh)
        check(settings)
    except ValueError as err:
        raise SystemExit(f"ablation: {err}") from None
    print(f"ablation: {len(losses)} losses ({', '.join(losses)}) x {len(args.seeds)} seeds on {data}, "
          f"encoder {described}", flush=True)
    params = {"profile": args.profile, "data": str(data), "encoder": args.encoder, "encoder_version": encoder,
              "seeds": ",".join(map(str, args.seeds)), "losses": ",".join(losses),
              "sweep_losses": ",".join(args.sweep_losses), "corrections": args.corrections, "pruner": args.pruner,
              "workers": workers, "fresh": str(args.fresh).lower()}
    done = run_ablation(settings, f"ablation-{args.profile}", params)
    print(done.markdown)
    print(f"ablation: done in {done.seconds:.0f} s: {done.ran} steps ran, {done.reused} reused "
          f"(parent run {done.parent_run_id})", flush=True)


if __name__ == "__main__":
    main()
