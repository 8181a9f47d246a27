"""Entry point ``report``: our segmentation, classification and ensemble scores beside the paper's
Tables 1–5, logged as ``comparison.md`` and ``comparison.html`` and printed."""

from __future__ import annotations

import argparse
import tempfile

import mlflow

from multiloss import names
from multiloss.report import comparison
from multiloss.tracking import store


def run_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="report", description=__doc__)
    parser.add_argument("--segment-eval-run", default="", help="segment_eval run id (default: the latest finished)")
    parser.add_argument("--classify-runs", default="",
                        help="comma-separated classify run ids (default: the finished runs of the latest batch)")
    parser.add_argument("--ensemble-run", default="", help="ensemble run id (default: the latest finished)")
    parser.add_argument("--dataset-label", choices=("", *comparison.DATASET_LABELS), default="",
                        help="the data set our numbers come from (default: inferred from the runs' data paths)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with store.stage_run(names.ENSEMBLES_EXPERIMENT, run_name="report"):
        mlflow.set_tag(names.STAGE_TAG, "report")
        try:
            ours = comparison.collect(args.segment_eval_run.strip() or None, run_ids(args.classify_runs) or None,
                                      args.ensemble_run.strip() or None, args.dataset_label or None)
        except ValueError as err:
            raise SystemExit(f"report: {err}") from err
        used = {stage: ",".join(ids) for stage, ids in ours.runs.items()}
        store.log_params({"segment_eval_run": used.get("segment_eval", ""),
                             "classify_runs": used.get("classify", ""),
                             "ensemble_run": used.get("ensemble", ""), "dataset_label": ours.dataset})
        mlflow.set_tag("dataset", ours.dataset)
        with tempfile.TemporaryDirectory() as tmp:
            markdown = comparison.write_report(tmp, ours)
            mlflow.log_artifacts(tmp)
            print(markdown.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
