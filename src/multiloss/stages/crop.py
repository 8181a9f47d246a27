"""Entry point ``crop``: AND the top-K registered U-Nets' lung masks (the versions ``members`` names,
else those aliased ``top1``..``topK``), crop, resize, stretch contrast, and write a new
Kermany-layout dataset with its masks and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from multiloss import names
from multiloss.data.fingerprint import fingerprint
from multiloss.data.readers import class_counts, read_kermany
from multiloss.segmentation import cropped_dataset
from multiloss.segmentation.crop import BOX_MARGIN
from multiloss.stages.cli import StageParser, integer
from multiloss.tracking import store


def parser() -> StageParser:
    parser = StageParser("crop", description=__doc__)
    parser.parameter("data", required=True, help="Kermany-layout dataset to crop")
    parser.parameter("out", required=True, help="new folder for the cropped dataset")
    parser.parameter("top_k", type=integer("top_k", 1))
    parser.parameter("img_size", type=integer("img_size", 16))
    parser.parameter("seg_size", type=integer("seg_size", 0),
                     help="size the U-Nets run at (default: the img_size tag of the top model)")
    parser.parameter("members", help="comma-separated cxr-lung-seg versions, best first, top_k of them "
                                     "(default: those aliased top1..topK)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def choose_members(args: argparse.Namespace) -> list:
    """The member versions, best first, or an error naming the parameter (before any run is opened)."""
    store.configure()
    try:
        if args.members.strip():
            return cropped_dataset.given_members(args.members, args.top_k)
        return cropped_dataset.top_members(args.top_k)
    except (LookupError, ValueError) as err:
        raise SystemExit(f"crop: {err}") from err


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    frame = read_kermany(args.data)
    members = choose_members(args)
    try:
        seg_size = cropped_dataset.segmentation_size(members, args.seg_size, args.img_size)
        cropped_dataset.check_out_free(out)
    except ValueError as err:
        raise SystemExit(f"crop: {err}") from err
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name="crop"):
        store.log_params({"data": str(Path(args.data).resolve()), "out": str(out), "top_k": args.top_k,
                          "img_size": args.img_size, "seg_size": seg_size, "margin": BOX_MARGIN,
                          "members": ",".join(str(m.version) for m in members)})
        mlflow.set_tag(names.STAGE_TAG, "crop")

        crop = cropped_dataset.crop_or_reuse(frame, args.data, out, members, seg_size=seg_size,
                                             img_size=args.img_size)
        if crop.reused:
            mlflow.set_tag(names.REUSED_DATA_TAG, "true")
        n_empty = int(crop.manifest["empty_mask"].sum())
        mlflow.log_metrics({"n_images": len(crop.manifest), "n_empty_masks": n_empty})
        mlflow.set_tag(names.DATA_FINGERPRINT_TAG, fingerprint(crop.cropped["path"], root=out))
        mlflow.log_artifact(str(out / "manifest.csv"))
        mlflow.log_artifact(str(out / "crop.json"))
        print(f"crop: wrote {len(crop.manifest)} images to {out} ({n_empty} left uncropped: empty mask)")
        print(class_counts(crop.cropped).to_string())


if __name__ == "__main__":
    main()
