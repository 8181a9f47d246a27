"""Entry point ``report``: our segmentation, classification and ensemble scores beside the paper's tables.

Logged as ``comparison.md`` and ``comparison.html`` and printed, so a pipeline ends with the
comparison on screen and the same text in the store.
"""

from __future__ import annotations

import argparse
import tempfile

import mlflow

from multiloss import names
from multiloss.ablation.report import AblationTables
from multiloss.ablation.results import latest_ablation
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
    stage.parameter("ablation_run", help="ablation run id whose section ends the report; empty: the latest finished "
                                         "ablation of the classifiers' data, if any; none: no section")
    return stage


def ablation_run(given: str, classify_runs: list[str]) -> str | None:
    """The ablation run whose section the report shows: ``given``, else the newest finished one of
    the data the classify runs were trained on (None when there is none, or ``given`` is none)."""
    if given == "none":
        return None
    client = mlflow.MlflowClient()
    if given:
        run = client.get_run(given)
        if run.data.tags.get(names.STAGE_TAG) != "ablation":
            raise ValueError(f"parameter ablation_run: run {given} is not an ablation run")
        return given
    prints = {client.get_run(r).data.tags.get(names.DATA_FINGERPRINT_TAG) for r in classify_runs}
    if len(prints) != 1 or None in prints:
        return None
    return latest_ablation(prints.pop())


def parse_args(argv=None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with store.stage_run(names.ENSEMBLES_EXPERIMENT, run_name="report"):
        mlflow.set_tag(names.STAGE_TAG, "report")
        try:
            ours = comparison.collect(args.segment_eval_run.strip() or None, run_ids(args.classify_runs) or None,
                                      args.ensemble_run.strip() or None, args.dataset_label or None)
            ablation = ablation_run(args.ablation_run.strip(), ours.runs.get("classify", []))
        except ValueError as err:
            raise SystemExit(f"report: {err}") from err
        used = {stage: ",".join(ids) for stage, ids in ours.runs.items()}
        store.log_params({"segment_eval_run": used.get("segment_eval", ""),
                          "classify_runs": used.get("classify", ""),
                          "ensemble_run": used.get("ensemble", ""), "dataset_label": ours.dataset,
                          "ablation_run": ablation or ""})
        mlflow.set_tag("dataset", ours.dataset)
        appendix = AblationTables.load(ablation).blocks(level=2) if ablation else []
        with tempfile.TemporaryDirectory() as tmp:
            markdown = comparison.write_report(tmp, ours, appendix=appendix)
            mlflow.log_artifacts(tmp)
            print(markdown.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
