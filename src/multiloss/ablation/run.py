"""An ablation run: its trainings, ensembles and sweeps as steps of one parent run (each a child
run of the classify, ensemble or sweep entry point, reused when already done, on the profile's
workers), then the report, logged on the parent."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from multiloss import names, variants
from multiloss.ablation import report, results, tables
from multiloss.ablation.plan import (
    Training,
    ensemble_step,
    ensemble_variants,
    trainings,
)
from multiloss.data.fingerprint import kermany_fingerprint
from multiloss.pipeline import chain
from multiloss.pipeline.engine import Pipeline, Step
from multiloss.pipeline.profiles import stage_settings
from multiloss.report.comparison import to_html, to_markdown
from multiloss.tracking import registry

REPORT_FILE = "ablation"               # ablation.md and ablation.html on the parent run


@dataclass(frozen=True)
class AblationSettings:
    profile: dict                      # classify, ensemble and sweep settings come from it
    data: Path                         # a crop stage's output
    encoder: str                       # models:/cxr-lung-seg/N, pinned
    seeds: list[int]
    losses: list[str]                  # the touched losses to ablate
    sweep_losses: list[str]
    corrections: str                   # both | each (see plan.ensemble_variants)
    pruner: str
    workers: int
    fresh: bool
    n_resamples: int = 2000


@dataclass(frozen=True)
class Finished:
    parent_run_id: str
    markdown: str
    ran: int
    reused: int
    seconds: float


def crop_encoder(data: Path) -> str:
    """``models:/cxr-lung-seg/N``: the best of the U-Nets that cropped ``data`` (crop.json, checked
    to be still the model that cropped it): the encoder ``main`` gave the classifiers of that crop."""
    from multiloss.ensembles.members import EnsembleInputError
    from multiloss.ensembles.run import crop_segmenters
    from multiloss.segmentation.cropped_dataset import read_crop_summary

    crop = read_crop_summary(data)
    if not crop or not crop.get("members"):
        raise ValueError(f"{data} is not a crop stage output (no crop.json naming its U-Nets)")
    try:
        crop_segmenters(crop, data)
    except EnsembleInputError as err:
        raise ValueError(str(err)) from None
    return registry.version_uri(names.SEGMENTATION_MODEL, str(crop["members"][0]))


def check(settings: AblationSettings) -> None:
    """What would otherwise fail after the trainings, refused before any run: ensembles that would
    lack members, sweeps of losses without parameters."""
    from multiloss.losses import CLASSIFICATION_LOSSES
    from multiloss.project import declared_parameters

    top_k = str(stage_settings(settings.profile, "ensemble").get("top_k", declared_parameters("ensemble")["top_k"]["default"]))
    largest = max(int(k) for k in top_k.split(",") if k.strip())
    distinct = {t.loss for t in trainings(settings.losses, settings.seeds)}
    if len(distinct) < largest:
        raise ValueError(f"parameter losses: the ensembles (top_k {top_k}) need {largest} distinct losses, the "
                         f"ablation of {', '.join(settings.losses)} trains {len(distinct)} ({', '.join(sorted(distinct))})")
    empty = [loss for loss in settings.sweep_losses if not CLASSIFICATION_LOSSES[loss]]
    if empty:
        raise ValueError(f"parameter sweep_losses: {', '.join(empty)} has no parameter to sweep")


def training_step(settings: AblationSettings, training: Training, data_print: str) -> Step:
    classify = stage_settings(settings.profile, "classify")
    return Step(training.step, "classify", {**classify, "loss": training.loss, "data": settings.data,
                                            "seed": training.seed, "encoder": settings.encoder,
                                            "variant": training.variant},
                chain.training_input(data_print, settings.encoder), output_intact=chain.registered_run)


def run_ablation(settings: AblationSettings, run_name: str, params: dict[str, object]) -> Finished:
    with chain.parent_run(names.ABLATION_EXPERIMENT, run_name, "ablation", params, settings.profile) as parent:
        started = time.monotonic()
        pipeline = Pipeline(parent, fresh=settings.fresh, workers=settings.workers)
        with registry.models_kept_in_memory():
            try:
                markdown = _run(pipeline, settings, parent)
            finally:
                pipeline.close()
        ran, reused, seconds = chain.log_counts(pipeline, parent, started)
        return Finished(parent, markdown, ran, reused, seconds)


def _run(pipeline: Pipeline, settings: AblationSettings, parent: str) -> str:
    data_print = kermany_fingerprint(settings.data)
    planned = trainings(settings.losses, settings.seeds)
    run_ids = pipeline.run_steps([training_step(settings, t, data_print) for t in planned])
    versions = [chain.registered_version(run_id, names.CLASSIFIER_MODEL) for run_id in run_ids]

    ensemble = stage_settings(settings.profile, "ensemble")
    chosen = ensemble_variants(settings.corrections)
    ensemble_runs = dict(zip(chosen, pipeline.run_steps([
        Step(ensemble_step(label), "ensemble", {**ensemble, "data": settings.data, "seed": settings.seeds[0],
                                                "variant": variant, "versions": ",".join(versions),
                                                "set_aliases": "false"},
             chain.ensemble_input(data_print, versions)) for label, variant in chosen.items()])))

    classify = stage_settings(settings.profile, "classify")
    sweep_runs = dict(zip(settings.sweep_losses, pipeline.run_steps([
        Step(f"sweep.{loss}", "sweep", {**classify, **stage_settings(settings.profile, "sweep"), "loss": loss,
                                        "data": settings.data, "encoder": settings.encoder,
                                        "seed": settings.seeds[0], "pruner": settings.pruner,
                                        "variant": variants.CORRECTED},
             chain.training_input(data_print, settings.encoder)) for loss in settings.sweep_losses])))

    found = results.collect_trainings(planned, run_ids)
    roles = tables.by_role(found)
    paired = tables.paired_differences(found, n_resamples=settings.n_resamples, seed=settings.seeds[0])
    calibration = tables.calibration(found, roles)
    gains = tables.ensemble_gains({label: results.ensemble_scores(run_id)
                                   for label, run_id in ensemble_runs.items() if run_id})
    sweeps = [tables.sweep_summary(loss, results.sweep_trials(run_id)) for loss, run_id in sweep_runs.items() if run_id]
    header = [f"Data: {settings.data} (fingerprint {data_print[:12]})", f"Encoder: {settings.encoder}",
              f"Seeds: {', '.join(map(str, settings.seeds))}; ensembles and sweeps with seed {settings.seeds[0]}",
              f"Ablation run: {parent}"]
    found_tables = report.AblationTables(header, roles, paired, calibration, gains, sweeps, settings.pruner)
    blocks = found_tables.blocks()
    client = mlflow.MlflowClient()
    markdown = to_markdown(blocks)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{REPORT_FILE}.md").write_text(markdown, encoding="utf-8")
        (Path(tmp) / f"{REPORT_FILE}.html").write_text(to_html(blocks), encoding="utf-8")
        found_tables.save(tmp)
        client.log_artifacts(parent, tmp)
    client.set_tag(parent, names.DATA_FINGERPRINT_TAG, data_print)
    for key, value in report.metrics(roles, gains, sweeps).items():
        client.log_metric(parent, key, value)
    return markdown
