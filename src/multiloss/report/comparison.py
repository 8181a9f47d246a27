"""The paper-comparison report: our scores beside the paper's Tables 1–5, in Markdown and HTML.

Segmentation, classification and ensemble scores, each beside the paper's table, in one Markdown
document and its HTML twin: the last step of a pipeline.

The paper's numbers live in one data file, ``experiments/paper_results.yaml``. Ours come from the
MLflow store (:func:`collect`: the latest finished runs, or run ids a caller names). The builder
(:func:`build_report`) needs only pandas frames, so it is tested without a store. The header names
the data set our numbers come from, so that demo numbers on phantoms are never read as a
reproduction.

A classifier row of a model flagged degenerate on validation (its run's ``degenerate`` tag: one
class predicted, or confidence pinned at 1/C) carries a marker and the reason; so, separately, does
one whose test predictions are all one class (read from its ``test_predicted_<class>`` scores, or
its ``test_predictions.csv`` for a run logged before those), which is reported only, never used to
choose.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from multiloss import names, paths, variants
from multiloss.classification.scoring import (
    MEAN_CONFIDENCE,
    PREDICTED_PREFIX,
    PROBABILITY_COLUMNS,
    degenerate_from_scores,
    one_class_reason,
    prediction_summary,
)
from multiloss.files import replacing
from multiloss.metrics.classification import MCC_INTERVAL_LABELS, proportion_ci
from multiloss.report.tables import markdown_table
from multiloss.tracking import store

PAPER_TABLES = ("segmentation", "classification", "prediction_ensembles", "model_ensembles", "literature")
REPORT_MARKDOWN, REPORT_HTML = "comparison.md", "comparison.html"

SYNTHETIC, REAL, UNKNOWN = "synthetic phantoms", "real data", "unknown data set"
DATASET_LABELS = {"synthetic": SYNTHETIC, "real": REAL}

# (header, our score, the paper's column). AUROC/AUPRC: the micro averages are the paper's headline.
SEGMENTATION_COLUMNS = (("IoU (lung+background)", "mean_iou", "iou"), ("IoU (lung)", "lung_iou", None),
                        ("Dice", "dice", "dice"), ("Pixel accuracy", "pixel_accuracy", "accuracy"))
CLASSIFICATION_COLUMNS = (("Accuracy", "accuracy", "accuracy"), ("AUROC", "auroc_micro", "auroc"),
                          ("AUPRC", "auprc_micro", "auprc"), ("Precision", "precision", "precision"),
                          ("Recall", "recall", "recall"), ("F1", "f1", "f_score"), ("MCC", "mcc", "mcc"))
# Ours only: the paper proposes calibrated losses and never measures calibration.
CALIBRATION_COLUMNS = (("ECE", "ece"), ("Brier", "brier"), ("NLL", "nll"))
CLASSIFICATION_SCORES = tuple(c[1] for c in CLASSIFICATION_COLUMNS) + tuple(c[1] for c in CALIBRATION_COLUMNS)

# The stage tag and experiment of each run the collector reads.
SOURCES = {"segment_eval": names.SEGMENTATION_EXPERIMENT, "classify": names.CLASSIFICATION_EXPERIMENT,
           "ensemble": names.ENSEMBLES_EXPERIMENT}
# A paper interval further than this from the Wald recomputation is flagged (its digits are rounded to 4).
INTERVAL_TOLERANCE = 5e-4
NOT_RUN = "not run"
DASH = "—"
# Where the combiners were fitted: on validation predictions, unless a published flaw says otherwise.
FITTED_ON = "SLSQP weights and stacking were fitted on the validation split."


def fitted_on(flaws: tuple[str, ...]) -> str:
    """Where an ensemble run of these flaws fitted its SLSQP weights and its stacking learner."""
    if not set(flaws) & {"test_selection", "stacking_on_train"}:
        return FITTED_ON
    weights = "the TEST split" if "test_selection" in flaws else "the validation split"
    stacking = ("the members' predictions on their own training images" if "stacking_on_train" in flaws
                else "the validation split")
    return f"As the published code: SLSQP weights were fitted on {weights}, stacking on {stacking}."
# The markers of a classifier row: flagged degenerate on validation (left out of pools), and all
# test predictions one class (test is for reporting only: this flags nothing anywhere else).
DEGENERATE_MARK = "⚠ degenerate"
TEST_ONE_CLASS_MARK = "one class on test"
FLAGS_COLUMN = "Flags"


# ---------------------------------------------------------------------------------------------
# The paper's numbers.

def load_paper(path: str | os.PathLike = paths.PAPER_RESULTS) -> dict:
    """The paper's tables and notes; a missing table or row field is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"paper results file {path} not found")
    paper = yaml.safe_load(path.read_text(encoding="utf-8"))
    tables = paper.get("tables", {}) if isinstance(paper, dict) else {}
    missing = [name for name in PAPER_TABLES if name not in tables]
    if missing or "test_images" not in paper:
        raise ValueError(f"{path}: missing {', '.join(missing) or 'test_images'}")
    for name in PAPER_TABLES:
        needed = {"label", *(tables[name]["columns"])}
        for row in tables[name]["rows"]:
            if needed - set(row):
                raise ValueError(f"{path}: table {name} row {row.get('label')!r} lacks {sorted(needed - set(row))}")
    return paper


def interval_checks(paper: Mapping) -> pd.DataFrame:
    """Every printed MCC interval beside the Wald interval recomputed from its MCC and the test images.

    The Wald interval is what the paper prints, whatever its captions say; a row that differs is
    flagged in the report.
    """
    n = int(paper["test_images"])
    rows = []
    for name in PAPER_TABLES[1:]:
        table = paper["tables"][name]
        for row in table["rows"]:
            if row.get("mcc") is None:
                continue
            low, high = proportion_ci(row["mcc"], n, "wald")
            rows.append({"table": table["number"], "label": _paper_row_name(row), "mcc": row["mcc"],
                         "printed_low": row["mcc_low"], "printed_high": row["mcc_high"],
                         "wald_low": low, "wald_high": high,
                         "agrees": abs(low - row["mcc_low"]) <= INTERVAL_TOLERANCE
                         and abs(high - row["mcc_high"]) <= INTERVAL_TOLERANCE})
    return pd.DataFrame(rows)


def iou_checks(paper: Mapping) -> pd.DataFrame:
    """Table 1's IoU against the bounds its Dice sets on a mean lung IoU.

    Per image IoU = D/(2 − D) ≤ D, and that function is convex, so mean IoU ∈ [mean D/(2 − mean D),
    mean D]; a row outside is noted in the report."""
    rows = []
    for row in paper["tables"]["segmentation"]["rows"]:
        dice = row["dice"]
        lowest = dice / (2 - dice)
        rows.append({"label": row["label"], "iou": row["iou"], "dice": dice, "iou_lowest": lowest,
                     "consistent": lowest <= row["iou"] <= dice})
    return pd.DataFrame(rows)


def _paper_row_name(row: Mapping) -> str:
    """Table 3 repeats its method labels under Top-3 and Top-5; the K makes them unique."""
    label = row["label"]
    return f"Top-{row['k']} {label}" if row.get("k") and not label.startswith("Top-") else label


# ---------------------------------------------------------------------------------------------
# Our numbers.

@dataclass
class OurResults:
    """Our side of the report; ``None`` where a stage has not run.

    ``segmentation``: segment_eval's ``holdout_scores.csv`` (index: model, e.g. "v3 bce_dice" and
    "AND top-3"; columns ``<score>_mean``/``<score>_std``). ``classification``: one row per classify
    run with ``loss``, ``seed``, optional ``variant`` (the loss with its parameters),
    ``ci_method`` and ``mcc_interval`` (what that method's MCC interval is, in words), the test
    scores (``CLASSIFICATION_SCORES``, ``mcc_low``, ``mcc_high``), and optionally ``degenerate``
    (why validation flagged the model, or None), ``degenerate_checked`` (False: the run records
    nothing to decide it by) and ``test_one_class`` (why its test predictions are one class, or
    None). ``ensembles``: the ensemble
    stage's ``ensemble_scores.csv``; ``ensemble_interval``: what its MCC intervals are.
    """

    dataset: str
    segmentation: pd.DataFrame | None = None
    classification: pd.DataFrame | None = None
    ensembles: pd.DataFrame | None = None
    select_on: str | None = None
    ensemble_flaws: tuple[str, ...] = ()       # the published flaws the ensemble run reproduced
    ensemble_interval: str | None = None
    segmentation_size: str | None = None
    classification_size: str | None = None
    test_images: str | None = None
    runs: dict[str, list[str]] = field(default_factory=dict)


def aggregate_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (a loss and its parameters): each score's mean and sample std over its runs.

    With the run count and the seeds. The MCC interval is kept only for a single run: with several
    seeds, their spread is the interval that tells a real difference from noise.
    """
    missing = [c for c in ("loss", "seed") if c not in runs.columns]
    if missing:
        raise ValueError(f"classification runs lack the columns {missing}")
    runs = runs.assign(variant=runs["variant"] if "variant" in runs.columns else runs["loss"])
    scores = [s for s in CLASSIFICATION_SCORES if s in runs.columns]
    rows = {}
    for variant, group in runs.groupby("variant", sort=False):
        single = len(group) == 1
        row = {"loss": group["loss"].iloc[0], "runs": len(group),
               "seeds": ",".join(str(s) for s in sorted(group["seed"].tolist()))}
        for score in scores:
            values = group[score].astype(float)
            row[f"{score}_mean"] = values.mean()
            row[f"{score}_std"] = math.nan if single else values.std(ddof=1)
        for end in ("mcc_low", "mcc_high"):
            row[end] = float(group[end].iloc[0]) if single and end in group else math.nan
        for flag in FLAGS:
            row[flag] = _flagged_seeds(group, flag)
        row["unchecked"] = int((~group["degenerate_checked"].astype(bool)).sum()) \
            if "degenerate_checked" in group else 0
        rows[variant] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# Per-run flag columns the collector fills (a reason, or None), and what each means in the report.
FLAGS = {"degenerate": (DEGENERATE_MARK, "degenerate on validation, so left out of promote and ensemble "
                                         "pools unless include_degenerate=true"),
         "test_one_class": (TEST_ONE_CLASS_MARK, "all test predictions one class (reported only: test "
                                                 "never decides; this flags nothing elsewhere)")}


def _flagged_seeds(group: pd.DataFrame, flag: str) -> list[tuple[int, str]]:
    """(seed, reason) of each run in ``group`` whose ``flag`` column holds a reason."""
    if flag not in group:
        return []
    return sorted((int(seed), str(reason)) for seed, reason in zip(group["seed"], group[flag])
                  if isinstance(reason, str) and reason)


def is_synthetic(path: str | os.PathLike) -> bool | None:
    """Whether ``path`` is (a crop of) data written by the synth stage; None if it is not here.

    It is when its folder or an ancestor holds synth's ``synth.json``, or its ``crop.json`` names
    such a source."""
    path = Path(path)
    for _ in range(8):                       # a crop of a crop of ... ends somewhere
        if not path.exists():
            return None
        if any((folder / "synth.json").is_file() for folder in (path, *path.parents)):
            return True
        crop = path / "crop.json"            # written by segmentation.cropped_dataset; read here without TF
        if not crop.is_file():
            return False
        source = json.loads(crop.read_text()).get("source")
        if not source:
            return False
        path = Path(source)
    return False


def infer_dataset(paths: Iterable[str]) -> str:
    """SYNTHETIC if any data path is synthetic, REAL if every one exists and none is, else UNKNOWN."""
    found = [is_synthetic(p) for p in paths if p]
    if any(found):
        return SYNTHETIC
    return REAL if found and all(f is False for f in found) else UNKNOWN


def _client() -> mlflow.MlflowClient:
    store.configure()
    return mlflow.MlflowClient()


def _finished_runs(stage: str) -> list:
    """Finished runs tagged ``stage`` in its experiment, newest first."""
    client = _client()
    experiment = client.get_experiment_by_name(SOURCES[stage])
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.{names.STAGE_TAG} = '{stage}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])


def _given_run(run_id: str, stage: str, parameter: str):
    """The run a caller named, checked to be a finished run of ``stage``."""
    try:
        run = _client().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"{parameter}: no run {run_id!r} in {store.tracking_uri()}") from err
    tag = run.data.tags.get(names.STAGE_TAG)
    if tag != stage:
        raise ValueError(f"{parameter}: run {run_id} is a {tag or 'untagged'} run, not a {stage} run")
    if run.info.status != "FINISHED":
        raise ValueError(f"{parameter}: run {run_id} is {run.info.status}, not FINISHED")
    return run


def _artifact_csv(run, name: str, **read_csv) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError) as err:
            raise ValueError(f"run {run.info.run_id} ({run.data.tags.get(names.STAGE_TAG)}) has no artifact {name}") from err
        return pd.read_csv(local, **read_csv)


def _param(run, key: str) -> str | None:
    params = run.data.params
    return params.get(f"resolved.{key}") or params.get(key)


def _data_path(run) -> str:
    return _param(run, "data") or ""


def _interval_label(run) -> str | None:
    """What the run's MCC interval is: its own tag, else the label of the ci_method it logged."""
    method = _param(run, "ci_method")
    return run.data.tags.get(names.MCC_INTERVAL_TAG) or MCC_INTERVAL_LABELS.get(method or "", method)


def _classification_row(run) -> dict:
    params, metrics = run.data.params, run.data.metrics
    loss = _param(run, "loss") or "?"
    settings = sorted((k.removeprefix("loss_"), v) for k, v in params.items() if k.startswith("loss_"))
    named = f"{loss} ({', '.join(f'{k}={v}' for k, v in settings)})" if settings else loss
    flaws = variants.tagged_flaws(run.data.tags)            # published and corrected never pool their seeds
    row = {"run_id": run.info.run_id, "loss": loss, "seed": int(float(_param(run, "seed") or 0)),
           "variant": f"{named}, published: {'+'.join(flaws)}" if flaws else named,
           "ci_method": _param(run, "ci_method"), "mcc_interval": _interval_label(run),
           "img_size": _param(run, "img_size"),
           "n_test": _param(run, "n_test"), "data": _data_path(run)}
    for key in (*CLASSIFICATION_SCORES, "mcc_low", "mcc_high"):
        row[key] = metrics.get(f"test_{key}", math.nan)
    row["degenerate"], row["degenerate_checked"] = _validation_flag(run)
    test = _prediction_summary(run, "test")
    row["test_one_class"] = one_class_reason(test, "test") if test else None
    return row


def _prediction_summary(run, split: str) -> dict[str, float] | None:
    """What the run's model predicts on ``split`` (scoring.prediction_summary's keys): its
    ``<split>_predicted_<class>`` and ``<split>_mean_confidence`` scores, else its logged
    ``<split>_predictions.csv``; None if it has neither."""
    prefix = f"{split}_"
    metrics = run.data.metrics
    summary = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix + PREDICTED_PREFIX)}
    if len(summary) >= 2 and prefix + MEAN_CONFIDENCE in metrics:
        return {**summary, MEAN_CONFIDENCE: metrics[prefix + MEAN_CONFIDENCE]}
    name = f"{split}_predictions.csv"
    if name not in {a.path for a in _client().list_artifacts(run.info.run_id)}:
        return None
    try:
        frame = _artifact_csv(run, name)
    except ValueError:
        return None
    if frame.empty or any(c not in frame.columns for c in PROBABILITY_COLUMNS):
        return None
    return prediction_summary(frame[PROBABILITY_COLUMNS].to_numpy(float))


def _validation_flag(run) -> tuple[str | None, bool]:
    """(why the run's model is degenerate, or None; whether that could be decided): its
    ``degenerate`` tag, else (a run from before the tag) the same decision on its validation
    predictions. Never its test predictions."""
    tags = run.data.tags
    if tags.get(names.DEGENERATE_TAG) == "true":
        return tags.get(names.DEGENERATE_REASON_TAG) or "flagged on validation", True
    if tags.get(names.DEGENERATE_TAG) == "false":
        return None, True
    val = _prediction_summary(run, "val")
    return (degenerate_from_scores(val), True) if val else (None, False)


def _latest_batch(runs: list) -> list:
    """The runs that share the newest run's data fingerprint and image size.

    One experiment's worth, not every classifier ever trained in this store."""
    if not runs:
        return []
    newest = runs[0]
    key = (newest.data.tags.get(names.DATA_FINGERPRINT_TAG), _param(newest, "img_size"))
    return [r for r in runs if (r.data.tags.get(names.DATA_FINGERPRINT_TAG), _param(r, "img_size")) == key]


def _distinct(values: Iterable) -> str | None:
    found = sorted({str(v) for v in values if v is not None and str(v) != ""})
    return ", ".join(found) or None


def collect(segment_eval_run: str | None = None, classify_runs: list[str] | None = None,
            ensemble_run: str | None = None, dataset_label: str | None = None) -> OurResults:
    """Our numbers from the store: the runs named, else the latest finished ones.

    A run id not given means the latest finished segment_eval and ensemble runs and the finished classify runs of the latest batch (same data fingerprint and
    image size), newest first, one run per loss variant and seed. ``dataset_label``: "synthetic",
    "real" or None to infer it from the runs' data paths."""
    if dataset_label and dataset_label not in DATASET_LABELS:
        raise ValueError(f"dataset_label must be one of {sorted(DATASET_LABELS)} or empty, got {dataset_label!r}")
    runs = {}
    seg = _given_run(segment_eval_run, "segment_eval", "segment_eval_run") if segment_eval_run \
        else next(iter(_finished_runs("segment_eval")), None)
    ens = _given_run(ensemble_run, "ensemble", "ensemble_run") if ensemble_run \
        else next(iter(_finished_runs("ensemble")), None)
    if classify_runs:
        cls = sorted((_given_run(r, "classify", "classify_runs") for r in classify_runs),
                     key=lambda r: r.info.start_time or 0, reverse=True)
    else:
        cls = _latest_batch(_finished_runs("classify"))

    segmentation = classification = ensembles = None
    if seg is not None:
        segmentation = _artifact_csv(seg, "holdout_scores.csv", index_col="model")
        runs["segment_eval"] = [seg.info.run_id]
    if cls:
        classification = pd.DataFrame([_classification_row(r) for r in cls])
        classification = classification.drop_duplicates(["variant", "seed"], keep="first").reset_index(drop=True)
        runs["classify"] = classification["run_id"].tolist()
    if ens is not None:
        ensembles = _artifact_csv(ens, "ensemble_scores.csv")
        runs["ensemble"] = [ens.info.run_id]

    if dataset_label:
        dataset = DATASET_LABELS[dataset_label]
    else:
        paths = classification["data"].tolist() if classification is not None else []
        dataset = infer_dataset(paths or ([_data_path(seg)] if seg is not None else []))
    return OurResults(
        dataset=dataset, segmentation=segmentation, classification=classification, ensembles=ensembles,
        select_on=ens.data.tags.get(names.SELECT_ON_TAG) if ens is not None else None,
        ensemble_flaws=variants.tagged_flaws(ens.data.tags) if ens is not None else (),
        ensemble_interval=_interval_label(ens) if ens is not None else None,
        segmentation_size=_param(seg, "img_size") if seg is not None else None,
        classification_size=_distinct(classification["img_size"]) if classification is not None else None,
        test_images=_distinct(classification["n_test"]) if classification is not None else None,
        runs=runs)


# ---------------------------------------------------------------------------------------------
# The document: a few block types, rendered to Markdown and to HTML from the same list.

@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Table:
    frame: pd.DataFrame    # string cells; the index is the first column


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{float(value):.{digits}f}"


def _spread(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    return _number(mean) if std is None or math.isnan(std) else f"{_number(mean)} ± {_number(std)}"


def _interval(low, high, flag: str = "") -> str:
    if low is None or high is None or math.isnan(float(low)) or math.isnan(float(high)):
        return DASH
    return f"({_number(low)}, {_number(high)}){flag}"


def _p_value(value) -> str:
    if value is None or pd.isna(value) or str(value).strip() == "":
        return DASH
    return f"{float(value):.3g}"


def _classification_cells(values: Mapping[str, tuple[float, float]], interval: str, paper: bool) -> dict[str, str]:
    """Metric cells from ``{our score: (mean, std)}``; the paper has no calibration columns."""
    cells = {header: _spread(*values.get(ours, (math.nan, math.nan))) for header, ours, _ in CLASSIFICATION_COLUMNS}
    cells["MCC 95% CI"] = interval
    for header, ours in CALIBRATION_COLUMNS:
        cells[header] = "n/a" if paper else _spread(*values.get(ours, (math.nan, math.nan)))
    return cells


def _paper_cells(table: Mapping, row: Mapping, flagged: set[tuple[int, str]]) -> dict[str, str]:
    values = {ours: (row.get(theirs), math.nan) for _, ours, theirs in CLASSIFICATION_COLUMNS}
    flag = "†" if (table["number"], _paper_row_name(row)) in flagged else ""
    return _classification_cells(values, _interval(row.get("mcc_low"), row.get("mcc_high"), flag), paper=True)


def _ensemble_cells(row: Mapping) -> dict[str, str]:
    values = {key: (row.get(key), math.nan) for key in CLASSIFICATION_SCORES}
    return _classification_cells(values, _interval(row.get("mcc_low"), row.get("mcc_high")), paper=False)


def _aggregate_cells(row: Mapping) -> dict[str, str]:
    values = {key: (row.get(f"{key}_mean"), row.get(f"{key}_std")) for key in CLASSIFICATION_SCORES}
    return _classification_cells(values, _interval(row.get("mcc_low"), row.get("mcc_high")), paper=False)


def _frame(rows: list[dict], index: str) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(index)


def _caption(table: Mapping) -> Text:
    return Text(f"Paper, Table {table['number']}: {table['caption']} ({table['data']})")


def _header(ours: OurResults, paper: Mapping) -> list:
    statements = {
        SYNTHETIC: "Our numbers come from SYNTHETIC PHANTOMS (the built-in generator), not chest X-rays: "
                   "they show that the pipeline runs and learns; they do not reproduce the paper.",
        REAL: "Our numbers come from REAL DATA (chest X-rays, not the synthetic phantoms).",
    }
    statement = statements.get(ours.dataset, f"Our numbers come from: {ours.dataset.upper()}. "
                               + ("The data set could not be determined from the runs: do not read these "
                                  "numbers as a reproduction." if ours.dataset == UNKNOWN else ""))
    size = paper["image_size"]
    if ours.select_on is None:
        selection = "Ensembles: not run."
    elif ours.select_on == "test":
        selection = ("Ensemble members and the best ensemble were selected on the TEST split, as the paper did: "
                     "the ensemble rows are optimistic. " + fitted_on(ours.ensemble_flaws))
    else:
        selection = (f"Ensemble members and the best ensemble were selected on the {ours.select_on} split. "
                     + fitted_on(ours.ensemble_flaws))
    runs = "; ".join(f"{stage} {', '.join(ids)}" for stage, ids in ours.runs.items()) or "none"
    return [
        Heading(f"Our results beside the paper's tables ({ours.dataset})", 1),
        Text(statement, strong=True),
        Bullets((
            f"Data set: {ours.dataset}.",
            f"Image size: segmentation {ours.segmentation_size or NOT_RUN} px, classification "
            f"{ours.classification_size or NOT_RUN} px (paper: {size} px for both).",
            f"Test images: {ours.test_images or NOT_RUN} (paper: {paper['test_images']}).",
            selection,
            f"Paper: {paper['paper'].strip()} Numbers from experiments/paper_results.yaml.",
            f"MLflow runs read: {runs}.",
        )),
    ]


def _segmentation_loss(model: str) -> str:
    """segment_eval names rows "v<version> <loss>" and the ensemble "AND top-<k>"."""
    return "and_ensemble" if model.startswith("AND ") else model.split()[-1]


def _segmentation_section(ours: OurResults, paper: Mapping) -> list:
    table = paper["tables"]["segmentation"]
    blocks = [Heading("1. Lung segmentation (paper Table 1)"), _caption(table)]
    scores = ours.segmentation
    if scores is None:
        blocks.append(Text(f"Ours: {NOT_RUN} (no finished segment_eval run)."))
    else:
        blocks.append(Text("Ours: mean ± std over the holdout images, one row per registered U-Net version "
                           "and the AND of the top-K. The paper's IoU is compared with our lung/background "
                           "average (its definition, §2.2.2); our lung IoU is beside it."))
    rows, matched = [], set()
    for row in table["rows"]:
        rows.append({"Loss / method": row["label"], "Row": "paper",
                     **{header: _spread(row[theirs], row[f"{theirs}_std"]) if theirs else "n/a"
                        for header, _, theirs in SEGMENTATION_COLUMNS}})
        if scores is None:
            continue
        mine = [m for m in scores.index if _segmentation_loss(str(m)) == row["loss"]]
        matched.update(mine)
        rows += [_segmentation_row(row["label"], f"ours: {m}", scores.loc[m]) for m in mine] or \
            [{"Loss / method": row["label"], "Row": f"ours: {NOT_RUN}"}]
    if scores is not None:
        rows += [_segmentation_row(_segmentation_loss(str(m)), f"ours: {m}", scores.loc[m])
                 for m in scores.index if m not in matched]
    blocks.append(Table(_frame(rows, "Loss / method").fillna(DASH)))
    return blocks


def _segmentation_row(label: str, source: str, scores: pd.Series) -> dict:
    return {"Loss / method": label, "Row": source,
            **{header: _spread(scores.get(f"{ours}_mean"), scores.get(f"{ours}_std"))
               for header, ours, _ in SEGMENTATION_COLUMNS}}


def _flagged(paper: Mapping) -> set[tuple[int, str]]:
    """(table number, row name) of the paper's intervals that differ from the Wald recomputation."""
    checks = interval_checks(paper)
    return {(r.table, r.label) for r in checks.itertuples() if not r.agrees}


def _classification_section(ours: OurResults, paper: Mapping) -> list:
    table = paper["tables"]["classification"]
    blocks = [Heading("2. Classification, one model per loss (paper Table 2)"), _caption(table)]
    flagged = _flagged(paper)
    aggregated = aggregate_seeds(ours.classification) if ours.classification is not None else None
    if aggregated is None:
        blocks.append(Text(f"Ours: {NOT_RUN} (no finished classify run)."))
    else:
        methods = _interval_methods(ours.classification)
        blocks.append(Text(
            "Ours: test split. Where a loss ran under several seeds, mean ± sample std over seeds, with the "
            "seed list; the MCC interval is shown for single runs only (" + methods + "). "
            "ECE (15 bins), Brier and NLL are ours only: the paper does not measure calibration. "
            "† marks a paper interval that differs from the Wald recomputation (see the notes). "
            f"{FLAGS_COLUMN}: {DEGENERATE_MARK} = {FLAGS['degenerate'][1]}; {TEST_ONE_CLASS_MARK} = "
            f"{FLAGS['test_one_class'][1]}; reasons under the table."))
    flags = _classifier_flags(aggregated, paper)
    rows, matched = [], set()
    for row in table["rows"]:
        rows.append({"Loss": row["label"], "Row": "paper", **_paper_cells(table, row, flagged), "Runs (seeds)": "1"})
        if aggregated is None:
            continue
        mine = aggregated[aggregated["loss"] == row["loss"]]
        matched.update(mine.index)
        rows += [_our_classifier_row(row["label"], variant, r, flags) for variant, r in mine.iterrows()] or \
            [{"Loss": row["label"], "Row": f"ours: {NOT_RUN}"}]
    if aggregated is not None:
        rows += [_our_classifier_row(r["loss"], variant, r, flags)
                 for variant, r in aggregated.iterrows() if variant not in matched]
    frame = _frame(rows, "Loss")
    if aggregated is not None:
        frame[FLAGS_COLUMN] = frame[FLAGS_COLUMN] if FLAGS_COLUMN in frame else math.nan
    blocks.append(Table(frame.fillna(DASH)))
    blocks += _flag_notes(flags, aggregated)
    return blocks


@dataclass(frozen=True)
class RowFlags:
    """A classifier row's markers (the Flags cell) and the numbered notes that give the reasons."""

    cell: str
    notes: tuple[str, ...]


def _classifier_flags(aggregated: pd.DataFrame | None, paper: Mapping) -> dict[str, RowFlags]:
    """Variant -> its markers and notes, for the variants with a flagged run (notes numbered [1],
    [2], ... in the order Table 2 shows the variants: by the paper's rows, then the others)."""
    if aggregated is None:
        return {}
    losses = [row["loss"] for row in paper["tables"]["classification"]["rows"]]
    order = sorted(range(len(aggregated)), key=lambda i: (losses.index(aggregated["loss"].iloc[i])
                                                          if aggregated["loss"].iloc[i] in losses else len(losses), i))
    found, number = {}, 0
    for variant, row in aggregated.iloc[order].iterrows():
        marks, notes = [], []
        for flag, (mark, meaning) in FLAGS.items():
            seeds = row.get(flag)
            if not isinstance(seeds, list) or not seeds:
                continue
            number += 1
            share = f", {len(seeds)} of {row['runs']} seeds" if row["runs"] > 1 else ""
            marks.append(f"{mark} [{number}]{share}")
            notes.append(f"[{number}] {variant}: {meaning}: "
                         + "; ".join(f"seed {seed}: {reason}" for seed, reason in seeds) + ".")
        if marks:
            found[str(variant)] = RowFlags("; ".join(marks), tuple(notes))
    return found


def _our_classifier_row(label: str, variant: str, row: pd.Series, flags: Mapping[str, RowFlags]) -> dict:
    cells = {"Loss": label, "Row": f"ours: {variant}", **_aggregate_cells(row),
             "Runs (seeds)": f"{row['runs']} ({row['seeds']})"}
    if str(variant) in flags:
        cells[FLAGS_COLUMN] = flags[str(variant)].cell
    return cells


def _flag_notes(flags: Mapping[str, RowFlags], aggregated: pd.DataFrame | None) -> list:
    """The notes of the flagged rows, and a line on runs that record nothing the degeneracy could
    be decided by."""
    blocks = [Bullets(tuple(note for f in flags.values() for note in f.notes))] if flags else []
    unchecked = int(aggregated["unchecked"].sum()) if aggregated is not None and "unchecked" in aggregated else 0
    if unchecked:
        blocks.append(Text(f"{unchecked} classify run(s) carry no {names.DEGENERATE_TAG} tag and no validation "
                           "predictions: whether they are degenerate is not known."))
    return blocks


def _interval_methods(runs: pd.DataFrame) -> str:
    """``method: what its MCC interval is`` for each CI method the runs used ("; " between them)."""
    if "ci_method" not in runs.columns:
        return "method: as logged"
    labels = runs["mcc_interval"] if "mcc_interval" in runs.columns else pd.Series([None] * len(runs), runs.index)
    found = {}
    for method, label in zip(runs["ci_method"], labels):
        if method is None or pd.isna(method) or str(method) == "":
            continue
        label = label if isinstance(label, str) and label else MCC_INTERVAL_LABELS.get(str(method))
        found.setdefault(str(method), label)
    if not found:
        return "method: as logged"
    return "; ".join(f"{m}: {label}" if label else f"method: {m}" for m, label in sorted(found.items()))


def _ensembles_matching(ensembles: pd.DataFrame | None, kind: str | None, k) -> pd.DataFrame:
    if ensembles is None or kind is None:
        return pd.DataFrame()
    found = ensembles[ensembles["kind"] == kind]
    if k is not None:
        found = found[pd.to_numeric(found["k"], errors="coerce") == int(k)]
    return found


def _members(text) -> str:
    return DASH if text is None or pd.isna(text) else ", ".join(str(text).split(";"))


def _best_single(ensembles: pd.DataFrame) -> str | None:
    singles = ensembles[(ensembles["kind"] == "single") & ensembles["mcnemar_p"].isna()]
    return str(singles["name"].iloc[0]) if len(singles) else None


def _ensemble_section(ours: OurResults, paper: Mapping, name: str, title: str) -> list:
    table = paper["tables"][name]
    blocks = [Heading(title), _caption(table)]
    ensembles = ours.ensembles
    if ensembles is None:
        blocks.append(Text(f"Ours: {NOT_RUN} (no finished ensemble run)."))
    else:
        best = _best_single(ensembles)
        interval = f" MCC interval: {ours.ensemble_interval}." if ours.ensemble_interval else ""
        blocks.append(Text("Ours: test split. McNemar and bootstrap p compare each ensemble with the best single "
                           f"model{f' ({best})' if best else ''}.{interval}"))
    weights = table.get("slsqp_weights") or {}
    if weights:
        blocks.append(Text("Paper's SLSQP weights: " + "; ".join(
            f"{key if isinstance(key, str) else f'top-{key}'}: {values}" for key, values in weights.items()) + "."))
    members = table.get("members") or {}
    flagged = _flagged(paper)
    rows, matched = [], set()
    for row in table["rows"]:
        label = _paper_row_name(row)
        rows.append({"Ensemble": label, "Row": "paper", **_paper_cells(table, row, flagged),
                     "Members": ", ".join(members.get(row.get("k"), [])) or DASH, "McNemar p": DASH,
                     "Bootstrap p": DASH})
        if ensembles is None:
            continue
        mine = _ensembles_matching(ensembles, row["kind"], row.get("k"))
        matched.update(mine.index)
        rows += [_ensemble_row(label, r) for _, r in mine.iterrows()] or [{"Ensemble": label, "Row": f"ours: {NOT_RUN}"}]
    if ensembles is not None:
        kinds = {row["kind"] for row in table["rows"]}
        rows += [_ensemble_row(str(r["name"]), r) for i, r in ensembles.iterrows()
                 if r["kind"] in kinds and i not in matched]
    blocks.append(Table(_frame(rows, "Ensemble").fillna(DASH)))
    return blocks


def _ensemble_row(label: str, row: pd.Series) -> dict:
    return {"Ensemble": label, "Row": f"ours: {row['name']}", **_ensemble_cells(row),
            "Members": _members(row.get("members")), "McNemar p": _p_value(row.get("mcnemar_p")),
            "Bootstrap p": _p_value(row.get("bootstrap_p"))}


def _best_section(ours: OurResults, paper: Mapping) -> list:
    table = paper["tables"]["literature"]
    blocks = [Heading("5. Best results (paper Table 5)"), _caption(table)]
    flagged = _flagged(paper)
    rows = [{"Study / model": row["label"], "Row": "paper", **_paper_cells(table, row, flagged)} for row in table["rows"]]
    candidates = []          # (test MCC, row label, cells, a classifier's flags or None)
    if ours.ensembles is not None:
        for _, r in _ensembles_matching(ours.ensembles, "model_level_weighted", None).iterrows():
            rows.append({"Study / model": "Proposed (same method)", "Row": f"ours: {r['name']}", **_ensemble_cells(r)})
        candidates += [(float(r["mcc"]), str(r["name"]), _ensemble_cells(r), None)
                       for _, r in ours.ensembles.iterrows()]
    if ours.classification is not None:
        aggregated = aggregate_seeds(ours.classification)
        flags = _classifier_flags(aggregated, paper)
        candidates += [(float(r["mcc_mean"]), str(variant), _aggregate_cells(r), flags.get(str(variant)))
                       for variant, r in aggregated.iterrows()]
    candidates = [c for c in candidates if not math.isnan(c[0])]
    notes = []
    if candidates:
        _, name, cells, flagged = max(candidates, key=lambda c: c[0])
        best = {"Study / model": "Best of ours by test MCC", "Row": f"ours: {name}", **cells}
        if flagged is not None:
            best[FLAGS_COLUMN] = flagged.cell
            notes = [Bullets(flagged.notes)]
        rows.append(best)
        blocks.append(Text("Ours: the counterpart of the paper's proposed method, and our best single model or "
                           "ensemble by test MCC (a choice made on the test split, so optimistic, like the paper's)."))
    else:
        blocks.append(Text(f"Ours: {NOT_RUN} (no finished classify or ensemble run)."))
    blocks.append(Table(_frame(rows, "Study / model").fillna(DASH)))
    return blocks + notes


def _notes_section(paper: Mapping) -> list:
    intervals, ious = interval_checks(paper), iou_checks(paper)
    found = [f"Table {r.table}, {r.label}: printed MCC interval ({_number(r.printed_low)}, {_number(r.printed_high)}), "
             f"Wald with n = {paper['test_images']}: ({_number(r.wald_low)}, {_number(r.wald_high)})."
             for r in intervals.itertuples() if not r.agrees]
    found.append(f"{int(intervals['agrees'].sum())} of {len(intervals)} printed MCC intervals equal the Wald interval "
                 f"within {INTERVAL_TOLERANCE}.")
    found += [f"Table 1, {r.label}: IoU {_number(r.iou)} outside [{_number(r.iou_lowest)}, {_number(r.dice)}], the range "
              f"a mean lung IoU can take with mean Dice {_number(r.dice)}." for r in ious.itertuples() if not r.consistent]
    return [Heading("6. Notes on the paper's numbers"),
            Bullets(tuple(" ".join(str(n).split()) for n in paper.get("notes", []))),
            Text("Recomputed from the tables above:"), Bullets(tuple(found))]


def build_report(ours: OurResults, paper: Mapping) -> list:
    """The report's blocks: header, Tables 1–5 each beside ours, notes on the paper's numbers."""
    return [*_header(ours, paper), *_segmentation_section(ours, paper), *_classification_section(ours, paper),
            *_ensemble_section(ours, paper, "prediction_ensembles", "3. Prediction-level ensembles (paper Table 3)"),
            *_ensemble_section(ours, paper, "model_ensembles", "4. Model-level ensembles (paper Table 4)"),
            *_best_section(ours, paper), *_notes_section(paper)]


def to_markdown(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            parts.append(f"**{block.text}**" if block.strong else block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        else:
            parts.append(markdown_table(block.frame).rstrip("\n"))
    return "\n\n".join(parts) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;max-width:110em;margin:2em auto;padding:0 1em}"
              "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}"
              "th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:right}"
              "td:first-child,td:nth-child(2),th:first-child{text-align:left}"
              ".warning{background:#fff3cd;padding:0.5em;border:1px solid #e0c36c}")


def to_html(blocks: list) -> str:
    """A standalone HTML page of the same blocks (tables via pandas, text escaped)."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "Paper comparison")
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f'<p class="warning"><strong>{html.escape(block.text)}</strong></p>' if block.strong
                         else f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        else:
            parts.append(block.frame.reset_index().to_html(index=False, border=0, na_rep=DASH))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(out_dir: str | os.PathLike, ours: OurResults | None = None, *, segment_eval_run: str | None = None,
                 classify_runs: list[str] | None = None, ensemble_run: str | None = None,
                 dataset_label: str | None = None, paper_file: str | os.PathLike = paths.PAPER_RESULTS,
                 appendix: list = ()) -> Path:
    """Write ``comparison.md`` and ``comparison.html`` into ``out_dir``; returns the Markdown path.

    ``ours`` defaults to :func:`collect` with the given run ids and label (None = latest / infer);
    ``appendix``: blocks appended after the paper's tables (the ablation's section).
    """
    if ours is None:
        ours = collect(segment_eval_run, classify_runs, ensemble_run, dataset_label)
    blocks = [*build_report(ours, load_paper(paper_file)), *appendix]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((REPORT_MARKDOWN, to_markdown(blocks)), (REPORT_HTML, to_html(blocks))):
        with replacing(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return out_dir / REPORT_MARKDOWN
