"""Entry point ``crop``: AND the top-K registered U-Nets' lung masks, crop, resize, stretch contrast,
and write a new Kermany-layout dataset with its masks and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd

from multiloss import names
from multiloss.data.fingerprint import fingerprint
from multiloss.data.readers import class_counts, find_kermany_root, read_kermany
from multiloss.models.unet import check_size
from multiloss.segmentation.crop import BOX_MARGIN
from multiloss.segmentation.cropped_dataset import (
    check_out_free,
    crop_dataset,
    read_crop_summary,
)
from multiloss.stages.cli import integer
from multiloss.tracking import registry, store


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crop", description=__doc__)
    parser.add_argument("--data", required=True, help="Kermany-layout dataset to crop")
    parser.add_argument("--out", required=True, help="new folder for the cropped dataset")
    parser.add_argument("--top-k", type=integer("top_k", 1), default=3)
    parser.add_argument("--img-size", type=integer("img_size", 16), default=128)
    parser.add_argument("--seg-size", type=integer("seg_size", 0), default=0,
                        help="size the U-Nets run at (default: the img_size tag of the top model)")
    parser.add_argument("--margin", type=float, default=BOX_MARGIN)
    parser.add_argument("--batch-size", type=integer("batch_size", 1), default=8)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    frame = read_kermany(args.data)
    with store.stage_run(names.SEGMENTATION_EXPERIMENT, run_name="crop"):
        members = []
        for k in range(1, args.top_k + 1):
            try:
                members.append(mlflow.MlflowClient().get_model_version_by_alias(names.SEGMENTATION_MODEL, names.top_alias(k)))
            except mlflow.exceptions.MlflowException as err:
                raise SystemExit(f"crop: {names.SEGMENTATION_MODEL} has no alias top{k}; run segment_eval "
                                 f"with top_k >= {args.top_k} first") from err
        seg_size = args.seg_size or int(members[0].tags.get("img_size", 0)) or args.img_size
        check_size("seg_size", seg_size)
        store.log_params({"data": str(Path(args.data).resolve()), "out": str(out), "top_k": args.top_k,
                             "img_size": args.img_size, "seg_size": seg_size, "margin": args.margin,
                             "members": ",".join(str(m.version) for m in members)})
        mlflow.set_tag(names.STAGE_TAG, "crop")
        provenance = {"members": [str(m.version) for m in members], "source_fingerprint": fingerprint(frame["path"], root=find_kermany_root(args.data))}
        earlier = read_crop_summary(out)
        settings = {"seg_size": seg_size, "img_size": args.img_size, "margin": args.margin, **provenance}
        if earlier is not None and all(earlier.get(k) == v for k, v in settings.items()):
            print(f"crop: {out} already holds this crop (same members, settings and source); reusing it")
            mlflow.set_tag("reused_existing_data", "true")
            manifest = pd.read_csv(out / "manifest.csv")
        else:
            check_out_free(out)
            if earlier is not None:
                changed = sorted(k for k, v in settings.items() if earlier.get(k) != v)
                print(f"crop: {out} holds an earlier crop with other {', '.join(changed)}; replacing it")
            models = [registry.load_keras(f"models:/{names.SEGMENTATION_MODEL}/{m.version}") for m in members]
            manifest = crop_dataset(frame, args.data, out, models, seg_size=seg_size, img_size=args.img_size,
                                    margin=args.margin, batch_size=args.batch_size, provenance=provenance)

        cropped = read_kermany(out)
        if not class_counts(cropped).equals(class_counts(frame)):
            raise RuntimeError(f"cropped dataset {out} reads back with other counts than its source")
        mlflow.log_metrics({"n_images": len(manifest), "n_empty_masks": int(manifest["empty_mask"].sum())})
        mlflow.set_tag(names.DATA_FINGERPRINT_TAG, fingerprint(cropped["path"], root=out))
        mlflow.log_artifact(str(out / "manifest.csv"))
        mlflow.log_artifact(str(out / "crop.json"))
        print(f"crop: wrote {len(manifest)} images to {out} ({int(manifest['empty_mask'].sum())} left uncropped: empty mask)")
        print(class_counts(cropped).to_string())


if __name__ == "__main__":
    main()
