"""Entry point ``synth``: write the synthetic phantom datasets, read them back with the real
readers, and log counts, the patient-grouped validation split and a preview grid."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow

from multiloss import names
from multiloss.data import layout, synthetic
from multiloss.data.fingerprint import fingerprint
from multiloss.data.readers import class_counts, read_kermany, read_mask_set
from multiloss.data.split import patient_split, write_split_csv
from multiloss.stages.cli import StageParser, integer
from multiloss.tracking import store


def parser() -> StageParser:
    parser = StageParser("synth", description=__doc__)
    parser.parameter("out", required=True,
                     help="folder to write (must be new, empty, or an earlier synth output with the same parameters)")
    parser.parameter("n_seg", type=integer("n_seg", 1))
    parser.parameter("n_cls", type=integer("n_cls", 2))
    parser.parameter("size", type=integer("size", 32, 2048))
    parser.parameter("seed", type=integer("seed", 0))
    parser.parameter("image_sizes", choices=synthetic.IMAGE_SIZES,
                     help="square: every file size x size; real: rendered at size, written at each "
                          "dataset's real pixel sizes (Kermany about 1,000-3,000 px a side, Montgomery 4020 x 4892)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def check_out(out: Path) -> None:
    """Refuse, before any run, an ``out`` synth could never write: a file, or a folder holding
    files of its own (synth writes a new or empty folder, or reuses a folder it wrote)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"synth: parameter out: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise SystemExit(f"synth: parameter out: {out} holds files synth did not write; choose a new or empty folder")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    check_out(out)
    params = {"n_seg": args.n_seg, "n_cls": args.n_cls, "size": args.size, "seed": args.seed,
              "image_sizes": args.image_sizes}
    with store.stage_run(names.DATA_EXPERIMENT, run_name="synth"):
        store.log_params({**params, "out": str(out)})
        manifest, reused = synthetic.ensure_synthetic(out, **params)
        mlflow.set_tag(names.REUSED_DATA_TAG, str(reused).lower())
        print(f"synth: {'reused' if reused else 'wrote'} {out}")
        kermany = _log_read_back(out, manifest)
        split = patient_split(kermany)
        with tempfile.TemporaryDirectory() as tmp:
            write_split_csv(split, Path(tmp) / "validation_split.csv", root=out)
            preview = synthetic.preview_grid(out, Path(tmp) / "preview.png")
            mlflow.log_artifact(str(Path(tmp) / "validation_split.csv"))
            mlflow.log_artifact(str(preview))
        sizes = split["subset"].value_counts()
        print(f"patient-grouped validation split: {sizes.get('train', 0)} train / {sizes.get('val', 0)} val")


def _log_read_back(out: Path, manifest: dict):
    """Read the written datasets with the real readers, log their counts and the data fingerprint,
    and fail if the readers see other counts than synth wrote. Returns the Kermany frame."""
    kermany = read_kermany(out / layout.KERMANY)
    counts = class_counts(kermany)
    for split, row in counts.iterrows():
        for label, count in row.items():
            mlflow.log_metric(f"n_{split}_{label}", int(count))
    lungs = read_mask_set(out / "lungs")
    holdout = read_mask_set(out / "MontgomerySet")
    mlflow.log_metrics({"n_seg_pairs": len(lungs), "n_holdout_pairs": len(holdout)})
    if counts.to_dict(orient="index") != manifest["counts"]:
        raise RuntimeError(f"Kermany reader counts {counts.to_dict(orient='index')} differ from "
                           f"what synth wrote {manifest['counts']}")
    mlflow.set_tag(names.DATA_FINGERPRINT_TAG, fingerprint(kermany["path"], root=out))
    print("Kermany reader, images per split and class:")
    print(counts.to_string())
    print(f"lung mask pairs: {len(lungs)}, Montgomery holdout pairs: {len(holdout)}")
    return kermany


if __name__ == "__main__":
    main()
