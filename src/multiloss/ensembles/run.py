"""One run of the ensemble stage: every ensemble over the chosen members, scored, and the best one served.

:func:`prepare` checks all a run needs before anything is trained or logged: the crop stage's
output, enough members in one pool (one data set, image size and encoder), a score the ensembles
can be compared on, and the exact U-Nets that cropped the data, since the registered model repeats
that crop. :func:`build_and_register`
then works inside the stage's MLflow run: it builds and scores the ensembles, logs the table and
figures, registers the best as ``cxr-ensemble`` (an end-to-end pyfunc: raw image → segment → crop →
members → combine) and moves the aliases last, once that version is whole.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import tf_keras

from multiloss import names, variants
from multiloss.classification.scoring import predictions_frame, split_figures
from multiloss.classification.train import TAGGED_SCORES
from multiloss.data import provenance
from multiloss.data.fingerprint import kermany_fingerprint
from multiloss.data.readers import read_kermany
from multiloss.ensembles import serving
from multiloss.ensembles.build import (
    Ensemble,
    SplitPredictions,
    build_all,
    choose_best,
    describe,
    level_slug,
    member_predictions,
    rebase,
    score_table,
    selection_split,
    serving_parts,
)
from multiloss.ensembles.members import EnsembleInputError, Members, choose_members
from multiloss.metrics.classification import classification_scores
from multiloss.plots import polar_scores
from multiloss.report.tables import markdown_table, write_table
from multiloss.segmentation.cropped_dataset import read_crop_summary
from multiloss.tracking import aliases, metadata, ranking, registry, store
from multiloss.training import seed_everything

CROP_KEYS = ("members", "seg_size", "img_size", "margin")      # crop.json entries the served model repeats
ROW_METRICS = (*TAGGED_SCORES, "f1", "val_mcc")                 # logged per table row as <row>.<score>
HEADLINE_METRICS = (*TAGGED_SCORES, "mcc_low", "mcc_high", "f1", "auprc_micro", "brier", "nll")   # test_<score>
# The ensemble run's record of the aliases it set (name@alias -> version), data-qualified ones included.
ALIASES_SET_TAG = "ensemble.aliases"
PRINTED_COLUMNS = ["kind", "k", "accuracy", "auroc_micro", "f1", "mcc", "mcc_low", "mcc_high", "ece", "val_mcc",
                   "mcnemar_p", "bootstrap_p"]


@dataclass(frozen=True)
class EnsembleSettings:
    """The ensemble stage's parameters other than its data."""

    top_k: list[int]          # ensemble sizes, ascending; the largest is the number of members
    metric: str               # the score members and ensembles are chosen on; its split comes from select_on
    variant: variants.Variant  # what it reproduces of the published code (multiloss.variants); its members too
    distinct: str             # loss: at most one member per loss; none: repeats allowed
    epochs: int               # the model-level heads' training
    batch_size: int
    lr: float
    patience: int
    seed: int
    ci_method: str
    pool: str                 # same_data: one encoder among the members too; any_encoder
    include_degenerate: bool  # true: degenerate classifiers may be members
    versions: tuple[str, ...] = ()   # the classifier versions members come from; empty: all of the data's
    set_aliases: bool = True         # false: move no alias (an analysis, not a candidate for champion)

    @property
    def select_on(self) -> str:
        """The split members and the best ensemble are chosen on: val, test under flaw test_selection."""
        return selection_split(self.variant)


@dataclass(frozen=True)
class EnsembleInputs:
    """What :func:`prepare` found and checked: the data, its crop, the members and the U-Nets."""

    settings: EnsembleSettings
    key: str                  # the selection key: metric on select_on, e.g. val_mcc
    data: Path
    crop: dict                # the crop stage's crop.json
    frame: pd.DataFrame       # read_kermany of the data
    data_print: str
    members: Members
    segmenter_uris: list[str]

    @property
    def score(self) -> str:
        return ranking.base_score(self.key)


@dataclass
class Scored:
    """Every ensemble built, the score table, and the best ensemble and model-level ensemble."""

    members: list[tf_keras.Model]
    test: SplitPredictions
    ensembles: list[Ensemble]
    levels: list[Ensemble]
    table: pd.DataFrame
    best: Ensemble
    best_level: Ensemble

    @property
    def headline(self) -> pd.Series:
        return self.table.loc[self.best.name]


def prepare(settings: EnsembleSettings, data: str | Path) -> EnsembleInputs:
    """The checked inputs of an ensemble run on the cropped dataset ``data``.

    Raises :class:`EnsembleInputError` for anything that would otherwise fail after hours of
    training: so it runs before the stage opens its MLflow run.
    """
    key = ranking.selection_key(settings.metric, settings.select_on)
    data = Path(data).resolve()
    crop = read_crop_summary(data)
    if crop is None or any(k not in crop for k in CROP_KEYS):
        raise EnsembleInputError(f"{data} is not a crop stage output (no crop.json with {', '.join(CROP_KEYS)}); "
                                 "the end-to-end model repeats that crop")
    frame = read_kermany(data)
    data_print = kermany_fingerprint(data, frame)
    store.configure()
    members = choose_members(key, data_print, data, settings.top_k[-1], settings.distinct, settings.pool,
                             settings.variant, settings.include_degenerate, settings.versions)
    if ranking.base_score(key) not in classification_scores(np.array([0, 1, 2]), np.eye(3)):
        raise EnsembleInputError(f"metric {settings.metric!r} ranks the members, but the ensembles are compared on "
                                 f"the classification scores; use one of them (mcc, auroc_micro, ece, ...)")
    segmenter_uris = crop_segmenters(crop, data)
    return EnsembleInputs(settings, key, data, crop, frame, data_print, members, segmenter_uris)


def crop_segmenters(crop: dict, data: Path) -> list[str]:
    """The U-Nets that cropped ``data``, as the URIs of the exact models, checked to be still there.

    A crop that recorded its members' sources (``member_sources``: name, version, run id, logged
    model) is matched by run id too: a store made anew reuses version numbers for other U-Nets.
    An older crop names version numbers only."""
    sources = crop.get("member_sources")
    if not sources:
        try:
            registry.versions(names.SEGMENTATION_MODEL, only=[str(v) for v in crop["members"]])
        except ValueError as err:
            raise EnsembleInputError(f"the U-Nets that cropped {data} are gone from the registry: {err}") from None
        return [registry.version_uri(names.SEGMENTATION_MODEL, v) for v in crop["members"]]
    client = mlflow.MlflowClient()
    uris = []
    for entry in sources:
        name, number, run_id = entry.get("name", names.SEGMENTATION_MODEL), str(entry["version"]), entry["run_id"]
        try:
            found = client.get_model_version(name, number)
        except mlflow.exceptions.MlflowException:
            raise EnsembleInputError(f"the U-Nets that cropped {data} are gone from the registry: {name} has no "
                                     f"version {number} (crop.json names run {run_id})") from None
        if found.run_id != run_id:
            raise EnsembleInputError(f"the U-Nets that cropped {data} are gone from the registry: {name} version "
                                     f"{number} is now the model of run {found.run_id}, not of run {run_id} that "
                                     "crop.json names (crop the data again)")
        uris.append(entry.get("source") or registry.version_uri(name, number))
    return uris


def build_and_register(inputs: EnsembleInputs) -> str:
    """Build, score, log and register, in the active run; returns the registered ``cxr-ensemble`` version."""
    seed_everything(inputs.settings.seed)
    for position, (r, name) in enumerate(zip(inputs.members.ranked, inputs.members.member_names), start=1):
        print(f"ensemble: member {position}: {name}, {inputs.key} = {r.value:.4f}")
    scored = build_and_score(inputs)
    log_scores(scored, inputs.members)
    log_models_and_figures(scored)
    version = register_best(inputs, scored)
    headline = scored.headline
    print(markdown_table(scored.table[PRINTED_COLUMNS]))
    print(f"ensemble: best on {inputs.settings.select_on} ({inputs.score}): {scored.best.name}; registered "
          f"{names.ENSEMBLE_MODEL} version {version} (test MCC {headline['mcc']:.4f} "
          f"[{headline['mcc_low']:.3f}, {headline['mcc_high']:.3f}])")
    moved = move_aliases(inputs.settings, version, inputs.members.versions, inputs.data_print)
    mlflow.set_tag(ALIASES_SET_TAG, json.dumps(moved, sort_keys=True))
    return version


def build_and_score(inputs: EnsembleInputs) -> Scored:
    """Every ensemble for each size in ``top_k``, scored on test beside the single members.

    The best ensemble (and the best model-level one, which Grad-CAM explains) is chosen on
    ``select_on``'s predictions, out of fold where a combiner was fitted on validation. The
    variant's ensemble flaws act in :func:`build_all`.
    """
    settings, members = inputs.settings, inputs.members
    run_ids = [r.version.run_id for r in members.ranked]
    val = rebase(member_predictions(run_ids, "val"), inputs.frame, "val", "train")
    test = rebase(member_predictions(run_ids, "test"), inputs.frame, "test", "test")
    models = [registry.load_keras(registry.version_uri(names.CLASSIFIER_MODEL, v), shared=True)
              for v in members.versions]
    singles, ensembles, levels = build_all(members.member_names, models, inputs.frame, val, test,
                                           top_k=settings.top_k, img_size=members.img_size, epochs=settings.epochs,
                                           batch_size=settings.batch_size, lr=settings.lr,
                                           patience=settings.patience, seed=settings.seed,
                                           variant=settings.variant)
    table = score_table(singles, ensembles, test.labels, val.labels, reference=singles[0],
                        ci_method=settings.ci_method, seed=settings.seed)
    select_labels = val.labels if settings.select_on == "val" else test.labels
    higher = ranking.higher_is_better(inputs.key)
    best, _ = choose_best(ensembles, inputs.score, select_labels, on=settings.select_on, higher_is_better=higher)
    best_level, _ = choose_best(levels, inputs.score, select_labels, on=settings.select_on, higher_is_better=higher)
    return Scored(models, test, ensembles, levels, table, best, best_level)


def member_keys(losses: list[str]) -> list[str]:
    """Each member's name in metric and param names: its loss, ``<loss>_2`` for the second member of
    a loss already taken (``distinct=none``); never its version, so runs compare."""
    seen: Counter[str] = Counter()
    keys = []
    for loss in losses:
        key = re.sub(r"[^a-z0-9_]+", "_", loss.lower()).strip("_") or "unknown"
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}_{seen[key]}")
    return keys


def metric_prefixes(scored: Scored, members: Members) -> dict[str, str]:
    """Each score table row's metric prefix (:func:`multiloss.names.ensemble_metric_prefix`,
    :func:`multiloss.names.member_metric_prefix`), keyed by the row's name."""
    losses = [r.version.tags.get(names.LOSS_TAG, "") for r in members.ranked]
    prefixes = {name: names.member_metric_prefix(key)
                for name, key in zip(members.member_names, member_keys(losses))}
    level_sizes = [len(level.members) for level in scored.levels]
    for entry in scored.ensembles:
        sizes = level_sizes if entry.kind == "model_level_weighted" else [len(entry.members)]
        prefixes[entry.name] = names.ensemble_metric_prefix(entry.kind, sizes)
    if sorted(prefixes) != sorted(scored.table.index) or len(set(prefixes.values())) != len(prefixes):
        raise ValueError(f"the score table's rows {list(scored.table.index)} do not map one to one onto metric "
                         f"prefixes {prefixes}")
    return prefixes


def log_scores(scored: Scored, members: Members) -> None:
    """Each row's scores as ``<prefix>.<score>`` (:func:`metric_prefixes`), each member's version as
    the param ``member.<loss>``; the best ensemble's scores as ``test_<score>`` and ``val_mcc``.
    Values are logged as computed: rounding is the table's and the UI's, not the store's."""
    prefixes = metric_prefixes(scored, members)
    store.log_params({prefixes[name]: version for name, version in zip(members.member_names, members.versions)})
    metrics = {f"{prefixes[name]}.{m}": float(row[m]) for name, row in scored.table.iterrows() for m in ROW_METRICS}
    headline = scored.headline
    metrics.update({f"test_{m}": float(headline[m]) for m in HEADLINE_METRICS}, val_mcc=float(headline["val_mcc"]))
    mlflow.log_metrics(metrics)      # one call: MLflow batches them, a row at a time was a round trip each


def log_models_and_figures(scored: Scored) -> None:
    """The model-level ensembles as logged models, the table, the ensembles' weights and the figures.

    The best model-level ensemble is tagged ``model_level_uri`` and kept in memory: the pipeline's
    Grad-CAM step loads it next.
    """
    for level in scored.levels:
        info = registry.log_keras(level.parts[0].full, name=level_slug(len(level.members)),
                                  keep_in_memory=level is scored.best_level)
        if level is scored.best_level:
            mlflow.set_tag(names.MODEL_LEVEL_URI_TAG, info.model_uri)
    mlflow.set_tag(names.BEST_ENSEMBLE_TAG, scored.best.name)

    table, best, test = scored.table, scored.best, scored.test
    with tempfile.TemporaryDirectory() as tmp:
        write_table(table, tmp, "ensemble_scores")
        (Path(tmp) / "ensembles.json").write_text(json.dumps(describe(scored.ensembles), indent=2))
        polar_scores(table[["f1", "mcc"]].T, list(table.index), Path(tmp) / "ensemble_polar.png",
                     "Test F1 and MCC per model")
        split_figures(tmp, "test", test.labels, best.test_probs, best.name)
        predictions_frame(test.paths, test.labels, best.test_probs).to_csv(
            Path(tmp) / "best_test_predictions.csv", index=False)
        mlflow.log_artifacts(tmp)


def register_best(inputs: EnsembleInputs, scored: Scored) -> str:
    """The best ensemble as a new ``cxr-ensemble`` version, tagged with what it is and how it scored.

    It carries the U-Nets that cropped the data, so it serves raw X-rays without the registry.
    """
    best, members = scored.best, inputs.members
    segmenters = [registry.load_keras(uri, shared=True) for uri in inputs.segmenter_uris]
    parts, combiner = serving_parts(best, scored.members)
    synthetic = provenance.is_synthetic(inputs.data)
    info = serving.log_pipeline(segmenters=segmenters, parts=parts, combiner=combiner,
                                config=serving.pipeline_config(inputs.crop, members.img_size, inputs.frame["path"],
                                                               synthetic),
                                weights=best.weights, stacker=best.stacker, name="model",
                                pip_requirements=registry.pip_requirements())
    in_best = members.versions if best.kind == "model_level_weighted" else members.versions[:len(best.members)]
    headline = scored.headline
    tags = {
        "ensemble": best.name, "kind": best.kind, "k": len(best.members), "members": ",".join(in_best),
        "segmenters": ",".join(inputs.crop["members"]), names.SELECT_ON_TAG: inputs.settings.select_on,
        **variants.tags(inputs.settings.variant),
        names.DATA_FINGERPRINT_TAG: inputs.data_print, names.IMG_SIZE_TAG: members.img_size,
        "val_mcc": float(headline["val_mcc"]),
        **{f"test_{m}": float(headline[m]) for m in TAGGED_SCORES}, names.SYNTHETIC_TAG: str(synthetic).lower()}
    version = str(registry.register_with_tags(info.model_uri, names.ENSEMBLE_MODEL, tags).version)
    metadata.describe_version(names.ENSEMBLE_MODEL, version, ensemble_card(inputs, scored, in_best, synthetic))
    mlflow.set_tag(names.SYNTHETIC_TAG, str(synthetic).lower())
    metadata.describe_run(f"{best.name} ({best.kind}, {len(best.members)} members {', '.join(in_best)}) chosen on "
                          f"{inputs.settings.select_on}: test MCC {headline['mcc']:.3f} [{headline['mcc_low']:.3f}, "
                          f"{headline['mcc_high']:.3f}], val MCC {headline['val_mcc']:.3f}"
                          + (" (synthetic phantoms)" if synthetic else ""))
    return version


def ensemble_card(inputs: EnsembleInputs, scored: Scored, member_versions: list[str], synthetic: bool) -> str:
    """The ``cxr-ensemble`` version's model card."""
    best, headline, settings = scored.best, scored.headline, inputs.settings
    return (metadata.synthetic_warning(synthetic)
            + f"**{best.name}**: {best.kind} of {names.CLASSIFIER_MODEL} versions {', '.join(member_versions)}, "
              f"variant **{settings.variant.name}**"
            + f"\n\n- data: `{inputs.data}` (fingerprint `{inputs.data_print}`" + (", synthetic" if synthetic else "")
            + f"); lungs cropped by {names.SEGMENTATION_MODEL} {', '.join(inputs.crop['members'])} inside the model"
            + f"\n- input: a raw chest X-ray (base64 bytes, pixels, or a path under MULTILOSS_SERVE_ROOTS); "
              f"classifiers at {inputs.members.img_size} px; output: the three probabilities, the predicted class, "
              "and `synthetic`"
            + f"\n- chosen on {settings.select_on} by {inputs.score} among {len(scored.table)} rows"
            + f"\n- test: MCC {headline['mcc']:.4f} [{headline['mcc_low']:.4f}, {headline['mcc_high']:.4f}], "
              f"accuracy {headline['accuracy']:.4f}, AUROC {headline['auroc_micro']:.4f}, ECE {headline['ece']:.4f}; "
              f"validation MCC {headline['val_mcc']:.4f}"
            + "\n- limits: the crop and classifiers saw only this data set's images; the test split chose nothing")


def move_aliases(settings: EnsembleSettings, version: str, member_versions: list[str],
                 data_print: str) -> dict[str, str]:
    """Point the aliases at the new ensemble and its members, printing each one that moved; returns
    ``name@alias`` -> version for every alias set.

    A corrected ensemble chosen on validation: the ensemble's and the best member's ``champion``
    and the members' ``top<k>`` (older ``top<k>`` beyond them removed). Chosen on test: only
    ``test_selected``, since such a choice must not become the champion that other stages (gradcam,
    serving) pick up; any other published flaw: no alias, for the same reason. ``set_aliases``
    false (an ablation's ensembles): none. No alias is taken from a version of other data (see
    :mod:`multiloss.tracking.aliases`).
    """
    if not settings.set_aliases:
        print("ensemble: set_aliases=false: no alias moved")
        return {}
    if settings.select_on == "val" and settings.variant.flaws:
        print(f"ensemble: variant {settings.variant.name}: no alias moved (a flawed ensemble never becomes champion)")
        return {}
    if settings.select_on != "val":
        alias = aliases.own_alias("ensemble", names.ENSEMBLE_MODEL, names.TEST_SELECTED, data_print)
        return aliases.set_printing("ensemble", [(names.ENSEMBLE_MODEL, alias, version)])
    moved = {}
    for model, target in ((names.ENSEMBLE_MODEL, version), (names.CLASSIFIER_MODEL, member_versions[0])):
        moved.update(aliases.take_champion("ensemble", model, target, data_print))
    tops, qualified = aliases.planned_tops("ensemble", names.CLASSIFIER_MODEL, member_versions, data_print)
    moved.update(aliases.set_printing("ensemble", tops))
    aliases.drop_tops_beyond(names.CLASSIFIER_MODEL, len(member_versions), data_print, qualified)
    return moved

