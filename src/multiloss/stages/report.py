"""Entry point ``report``: our segmentation, classification and ensemble scores beside the paper's tables.

Logged as ``comparison.md`` and ``comparison.html`` and printed, so a pipeline ends with the
comparison on screen and the same text in the store.
"""

from __future__ import annotations

import argparse
import tempfile

import mlflow

from multiloss import names
from multiloss.report import comparison
from multiloss.stages.cli import StageParser
from multiloss.tracking import store


def run_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> StageParser:
    stage = StageParser("report", __doc__)
    stage.parameter("segment_eval_run", help="segment_eval run id (default: the latest finished)")
    stage.parameter("classify_runs",
                    help="comma-separated classify run ids (default: the finished runs of the latest batch)")
    stage.parameter("ensemble_run", help="ensemble run id (default: the latest finished)")
    stage.parameter("dataset_label", choices=("", *comparison.DATASET_LABELS),
                    help="the data set our numbers come from (default: inferred from the runs' data paths)")
    return stage


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


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
