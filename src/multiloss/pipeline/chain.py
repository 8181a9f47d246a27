"""The chain of stages a pipeline runs, each stage one or more steps of a :class:`Pipeline`, and the
parent run that holds them.

synth (no data) → segment ×losses → segment_eval → crop → classify ×losses ×seeds → ensemble →
gradcam (champion classifier, model-level ensemble) → report. Each step's input fingerprint names
the data and the model versions it reads, so a step is reused only while those are unchanged.

Later steps get the exact versions earlier steps chose, read from those steps' runs (segment_eval's
top-versions tag, the ensemble run's members and logged model), never an alias: aliases are shared
by every process on the store and may move between two steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from multiloss import names, variants
from multiloss.ablation.results import latest_ablation
from multiloss.data.fingerprint import (
    fingerprint,
    kermany_fingerprint,
    mask_set_fingerprint,
)
from multiloss.data.readers import read_kermany, read_mask_set
from multiloss.pipeline import recovery
from multiloss.pipeline.engine import Pipeline, Step
from multiloss.pipeline.profiles import data_layout, home_path, stage_settings
from multiloss.tracking import registry, store

STAGES = ("synth", "segment", "segment_eval", "crop", "classify", "ensemble", "gradcam", "report")


@dataclasses.dataclass(frozen=True)
class Finished:
    """What a pipeline did: its parent run, how many steps ran and were reused, its wall time, and
    the report's Markdown ('' when the chain stopped before the report)."""
    parent_run_id: str
    ran: int
    reused: int
    seconds: float
    report: str


def run_pipeline(profile: dict, run_name: str, params: dict[str, object], *, data: str, seeds: list[int],
                 until: str, fresh: bool, workers: int,
                 variant: variants.Variant | None = None) -> Finished:
    """Run the chain under one parent run (see :func:`parent_run`)."""
    with parent_run(names.PIPELINE_EXPERIMENT, run_name, "main", params, profile) as parent:
        started = time.monotonic()
        pipeline = Pipeline(parent, fresh=fresh, workers=workers)
        runs = run_chain(pipeline, profile, data, seeds, until, variant)
        ran, reused, seconds = log_counts(pipeline, parent, started)
        report = report_text(runs.get("report"))
        publish_results(parent, runs, report, ran, reused)
        return Finished(parent, ran, reused, seconds, report)


# The steps' final scores a pipeline's own run repeats (step -> its metrics), as <step>.<metric>.
HEADLINE_METRICS = {"segment_eval": ("champion_dice_mean",),
                    "ensemble": ("test_mcc", "test_mcc_low", "test_mcc_high", "test_accuracy", "test_ece", "val_mcc")}


def publish_results(parent: str, runs: dict[str, str | None], report: str, ran: int, reused: int) -> None:
    """Put the report (``report.md``), the headline scores and a description on the pipeline's own
    run, so the run a reader opens first answers what the pipeline found, without its children."""
    client = mlflow.MlflowClient()
    metrics = {}
    for step, keys in HEADLINE_METRICS.items():
        if runs.get(step):
            logged = client.get_run(runs[step]).data.metrics
            metrics.update({f"{step}.{key}": logged[key] for key in keys if key in logged})
    if metrics:
        client.log_batch(parent, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                                          for k, v in metrics.items()])
    if report:
        client.log_text(parent, report, "report.md")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith(("mcc", "dice_mean")))
    client.set_tag(parent, names.NOTE_TAG, f"{ran} steps ran, {reused} reused" + (f"; {shown}" if shown else "")
                   + ("; the report is this run's report.md" if report else ""))


@contextlib.contextmanager
def parent_run(experiment: str, run_name: str, stage: str, params: dict[str, object], profile: dict):
    """The parent run of a pipeline's steps: the run ``mlflow run`` made for us, else a new one in
    ``experiment``; yields its id.

    The runs of pipelines that died are marked KILLED first, so that only what they did not
    finish is redone. The parent ends KILLED on an interrupt, FAILED on an error.
    """
    store.configure()
    client = mlflow.MlflowClient()
    recovery.end_dead_pipelines()
    launched = os.environ.pop("MLFLOW_RUN_ID", None)      # steps set it for their own runs
    # MLflow's own source, user and git tags, as mlflow.start_run would set: the steps repeat them
    parent = launched or client.create_run(store.ensure_experiment(experiment), run_name=stage,
                                           tags=resolve_tags()).info.run_id
    client.set_tag(parent, MLFLOW_RUN_NAME, run_name)
    client.set_tag(parent, names.STAGE_TAG, stage)
    for key, value in store.process_tags().items():
        client.set_tag(parent, key, value)
    _log_new_params(client, parent, params)
    client.log_dict(parent, profile, "profile.json")
    try:
        yield parent
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")
        raise
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    if not launched:
        client.set_terminated(parent, "FINISHED")


def log_counts(pipeline: Pipeline, parent: str, started: float) -> tuple[int, int, float]:
    """Log on the parent how many steps ran and were reused and the wall time; returns them."""
    reused = sum(step["how"] == "reused" for step in pipeline.steps.values())
    ran = sum(step["how"] == "ran" for step in pipeline.steps.values())
    seconds = time.monotonic() - started
    client = mlflow.MlflowClient()
    for name, value in {"steps_ran": ran, "steps_reused": reused, "pipeline_seconds": seconds}.items():
        client.log_metric(parent, name, value)
    return ran, reused, seconds


def _log_new_params(client: mlflow.MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log the parameters ``mlflow run`` has not logged already (it refuses a second value)."""
    logged = client.get_run(run_id).data.params
    fresh = [mlflow.entities.Param(k, str(v)) for k, v in params.items() if k not in logged]
    if fresh:
        client.log_batch(run_id, params=fresh)


def run_chain(pipeline: Pipeline, profile: dict, data: str, seeds: list[int],
              until: str = STAGES[-1], variant: variants.Variant | None = None) -> dict[str, str | None]:
    """Every stage of :data:`STAGES` up to ``until``, as steps of ``pipeline``. Returns the run ids
    of segment_eval, ensemble and report (None if not run). Models stay in memory between steps
    (:func:`registry.models_kept_in_memory`), and the pipeline's workers stop at the end.
    ``variant``: what the classifiers and the ensemble reproduce of the published code."""
    with registry.models_kept_in_memory():
        try:
            return _run_chain(pipeline, profile, data, seeds, until, variant or variants.parse(variants.CORRECTED))
        finally:
            pipeline.close()


def _run_chain(pipeline: Pipeline, profile: dict, data: str, seeds: list[int], until: str,
               variant: variants.Variant) -> dict[str, str | None]:
    runs = dict.fromkeys(("segment_eval", "ensemble", "report"))

    def stop_after(stage: str) -> bool:
        return STAGES.index(until) <= STAGES.index(stage)
    data = data or profile.get("data") or "synthetic"
    layout = data_layout(profile, synthetic=data == "synthetic")
    root = data_root(profile, data)
    if root is None:
        root = home_path(profile["synth"]["out"])
        synth = {**profile["synth"], "out": root}
        pipeline.step("synth", "synth", synth, output_intact=_tag_matches(
            lambda: fingerprint(read_kermany(root / layout["kermany"])["path"], root=root)))
    if stop_after("synth"):
        return runs
    lungs, holdout, kermany = (root / layout[k] for k in ("lungs", "holdout", "kermany"))

    segment = stage_settings(profile, "segment")
    seg_print = mask_set_fingerprint(read_mask_set(lungs), root=lungs)
    seg_runs = pipeline.run_steps([Step(f"segment.{loss}", "segment", {**segment, "loss": loss, "data": lungs},
                                        seg_print, output_intact=registered_run)
                                   for loss in profile["segment"]["losses"]])
    seg_versions = [registered_version(run_id, names.SEGMENTATION_MODEL) for run_id in seg_runs]
    if stop_after("segment"):
        return runs

    top_k = int(profile["segment_eval"]["top_k"])
    seg_aliases = [(names.SEGMENTATION_MODEL, a) for a in [names.CHAMPION, *(names.top_alias(k) for k in range(1, top_k + 1))]]
    eval_run = pipeline.step("segment_eval", "segment_eval", {
        **stage_settings(profile, "segment_eval"), "data": holdout, "img_size": segment["img_size"],
        "versions": ",".join(seg_versions)}, mask_set_fingerprint(read_mask_set(holdout), root=holdout),
        aliases=seg_aliases)
    runs["segment_eval"] = eval_run
    if stop_after("segment_eval"):
        return runs

    classify = stage_settings(profile, "classify")
    cropped = home_path(profile["crop"]["out"])
    chosen, crop_input = crop_inputs(eval_run, kermany_fingerprint(kermany))
    pipeline.step("crop", "crop", {**stage_settings(profile, "crop"), "out": cropped, "data": kermany, **chosen,
                                   "img_size": classify["img_size"], "seg_size": segment["img_size"]},
                  crop_input,
                  output_intact=_tag_matches(lambda: fingerprint(read_kermany(cropped)["path"], root=cropped)))
    if stop_after("crop"):
        return runs

    cropped_print = kermany_fingerprint(cropped)
    encoder = champion_encoder(eval_run)
    encoder_input = training_input(cropped_print, encoder)
    classify_runs = pipeline.run_steps([Step(f"classify.{loss}.seed{seed}", "classify", {
        **classify, "loss": loss, "data": cropped, "seed": seed, "encoder": encoder,
        "variant": variant.for_loss(loss).name}, encoder_input,
        output_intact=registered_run) for seed in seeds for loss in profile["classify"]["losses"]])
    versions = [registered_version(run_id, names.CLASSIFIER_MODEL) for run_id in classify_runs]
    if stop_after("classify"):
        return runs

    ensemble_run = pipeline.step("ensemble", "ensemble", {**stage_settings(profile, "ensemble"), "data": cropped,
                                                          "seed": seeds[0], "variant": variant.name,
                                                          "versions": ",".join(versions)},
                                 ensemble_input(cropped_print, versions),
                                 aliases=[(names.CLASSIFIER_MODEL, names.CHAMPION),
                                          (names.ENSEMBLE_MODEL, names.CHAMPION)])
    runs["ensemble"] = ensemble_run
    if stop_after("ensemble"):
        return runs

    for model_name, uri in gradcam_models(ensemble_run).items():
        if not uri:
            print(f"main: step gradcam.{model_name} skipped: no {model_name} model to explain", flush=True)
            continue
        pipeline.step(f"gradcam.{model_name}", "gradcam", {**stage_settings(profile, "gradcam"), "model": uri,
                                                           "images": cropped},
                      json.dumps({"data": cropped_print, "model": _model_reference(uri)}))
    if stop_after("gradcam"):
        return runs

    runs["report"] = pipeline.step("report", "report", {
        "segment_eval_run": eval_run, "classify_runs": ",".join(pipeline.run_ids("classify")),
        "ensemble_run": ensemble_run or "", "dataset_label": "synthetic" if data == "synthetic" else "real",
        "ablation_run": latest_ablation(cropped_print) or "none"})
    return runs


def training_input(data_print: str, encoder: str) -> str:
    """A classify (or sweep) step's input fingerprint: its data and its encoder's exact version."""
    return json.dumps({"data": data_print, "encoder": _model_reference(encoder)})


def ensemble_input(data_print: str, versions: list[str] | None = None) -> str:
    """An ensemble step's input fingerprint: its data and the classifier versions its pool may
    read (``versions``, else every version of that data)."""
    pool = [version_reference(names.CLASSIFIER_MODEL, str(v.version)) for v in registry.versions(names.CLASSIFIER_MODEL)
            if v.tags.get(names.DATA_FINGERPRINT_TAG) == data_print and (versions is None or str(v.version) in versions)]
    return json.dumps({"data": data_print, "pool": pool})


def data_root(profile: dict, data: str) -> Path | None:
    """The folder ``data`` names (None for the synthetic data synth writes), checked to hold the
    profile's layout: a mistyped path is refused before any run, naming it and what is missing.
    ``data`` empty: the profile's (a relative path lives under the project root)."""
    data = data or profile.get("data") or "synthetic"
    if data == "synthetic":
        return None
    layout = data_layout(profile, synthetic=False)
    root = home_path(data) if data == profile.get("data") else Path(data).resolve()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder (expected {', '.join(f'{n}/' for n in layout.values())} inside)")
    missing = [f"{name}/" for name in layout.values() if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{root} has no {', '.join(missing)} (expected {', '.join(f'{n}/' for n in layout.values())}; "
                         f"a profile's layout may rename them)")
    return root


def chosen_segmenters(eval_run_id: str) -> list[str]:
    """The ``cxr-lung-seg`` versions segment_eval's run chose, best first (its top-versions tag):
    what crop ANDs and whose best one's encoder classify trains from. Its ``champion`` and ``top<k>``
    aliases may have moved since, by any process on the store."""
    chosen = mlflow.MlflowClient().get_run(eval_run_id).data.tags.get(names.TOP_VERSIONS_TAG, "")
    versions = [v.strip() for v in chosen.split(",") if v.strip()]
    if not versions:
        raise RuntimeError(f"segment_eval run {eval_run_id} carries no {names.TOP_VERSIONS_TAG} tag: "
                           "no versions to crop with (run segment_eval again)")
    return versions


def crop_inputs(eval_run_id: str, source_fingerprint: str) -> tuple[dict[str, object], str]:
    """Crop's parameters that name its members (``members``, ``top_k``) and its input fingerprint
    (the source data and each member's version and run)."""
    members = chosen_segmenters(eval_run_id)
    return ({"members": ",".join(members), "top_k": len(members)},
            json.dumps({"source": source_fingerprint,
                        "members": [version_reference(names.SEGMENTATION_MODEL, v) for v in members]}))


def champion_encoder(eval_run_id: str) -> str:
    """``models:/cxr-lung-seg/N``: the U-Net segment_eval ranked best (the champion it set)."""
    return registry.version_uri(names.SEGMENTATION_MODEL, chosen_segmenters(eval_run_id)[0])


def registered_version(run_id: str, name: str) -> str:
    """The (newest) version of ``name`` that run ``run_id`` registered."""
    found = mlflow.MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        raise RuntimeError(f"run {run_id} registered no version of {name}")
    return str(max(int(v.version) for v in found))


def version_reference(name: str, version: str) -> str:
    """``name/version:source run``: unique across stores, unlike a version number."""
    return f"{name}/{version}:{mlflow.MlflowClient().get_model_version(name, version).run_id}"


def registered_run(run) -> bool:
    """A training run's model version is still in the registry."""
    return bool(mlflow.MlflowClient().search_model_versions(f"run_id='{run.info.run_id}'"))


def _tag_matches(folder_fingerprint, tag: str = names.DATA_FINGERPRINT_TAG):
    """A step's output check: the folder it wrote still has the fingerprint its run tagged."""
    def intact(run) -> bool:
        try:
            return folder_fingerprint() == run.data.tags.get(tag)
        except (OSError, ValueError):
            return False
    return intact


def gradcam_models(ensemble_run: str | None) -> dict[str, str]:
    """The models Grad-CAM explains, as the ensemble step chose them: the best member it ranked
    (``members``, best first: the version it made ``champion`` when selecting on validation) and the
    best model-level ensemble it logged (a logged model); '' for one that is not there."""
    if not ensemble_run:
        return {names.CHAMPION: "", "ensemble": ""}
    run = mlflow.MlflowClient().get_run(ensemble_run)
    members = [v.strip() for v in run.data.params.get("members", "").split(",") if v.strip()]
    return {names.CHAMPION: registry.version_uri(names.CLASSIFIER_MODEL, members[0]) if members else "",
            "ensemble": run.data.tags.get(names.MODEL_LEVEL_URI_TAG, "")}


def _model_reference(uri: str) -> str:
    if uri.startswith("models:/"):
        name, _, version = uri.removeprefix("models:/").partition("/")
        if version.isdigit():
            return version_reference(name, version)
    return uri


def report_text(run_id: str | None) -> str:
    """The Markdown report a report run logged ('' when there is none)."""
    if not run_id:
        return ""
    for artifact in mlflow.MlflowClient().list_artifacts(run_id):
        if artifact.path.endswith(".md"):
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact.path, dst_path=tmp)
                return Path(local).read_text(encoding="utf-8")
    return ""
