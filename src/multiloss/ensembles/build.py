"""Every ensemble over chosen members, prediction level and model level, scored beside the single models.

Fitting uses validation data only: SLSQP weights and the stacking learner are fitted on the
members' validation predictions; the model-level heads train on the training split and stop on
validation loss. Each ensemble also carries validation predictions for choosing the best one
without the test set: out of fold for SLSQP and stacking (scored on the images they were fitted on,
they would always win). The model-level heads' are only nearly honest: their checkpoint was chosen
on the validation loss, a mild optimism shared by every early-stopped model, members included.

A variant's ensemble flaws (:mod:`multiloss.variants`) reproduce the published code instead:
``head_dense_only`` freezes the model-level heads' 1×1 convolution at its seeded initial weights
and trains their last Dense layer only; ``stacking_on_train`` fits the stacking learner on the
members' predictions on the images they were trained on; ``test_selection`` fits the SLSQP weights
(and so picks their restarts) on the test predictions, and the members and the best ensemble are
chosen on test (:func:`selection_split`). A combiner fitted on other images than validation needs
no folds: its validation predictions are out of sample as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from multiloss import variants
from multiloss.classification.scoring import read_predictions, score_split
from multiloss.data.classes import CLASSES
from multiloss.data.datasets import (
    image_dataset,
    label_indices,
    one_hot,
    without_autotune,
)
from multiloss.ensembles.combiners import (
    majority_probs,
    mean_probs,
    optimize_weights,
    out_of_fold,
    weighted_mean,
)
from multiloss.metrics.classification import (
    classification_scores,
    mcnemar_exact,
    paired_bootstrap_mcc_difference,
)
from multiloss.models.ensemble_heads import ModelLevel, fit_stacking, stacking_predict
from multiloss.names import ensemble_metric_prefix
from multiloss.training import fit_keeping_best, momentum_sgd

# Feature caches above this size train the model-level head through the full model instead.
MAX_FEATURE_CACHE_BYTES = 2 * 1024**3


@dataclass
class SplitPredictions:
    """The members' predictions on one split, aligned on the same images."""
    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray                  # (members, images, classes)

    def top(self, k: int) -> SplitPredictions:
        """The predictions of the first ``k`` members (the best, as members come best first)."""
        return SplitPredictions(self.paths, self.labels, self.probs[:k])


@dataclass
class Ensemble:
    name: str
    kind: str                          # majority, mean, weighted, stacking, model_level, model_level_weighted
    members: list[str]                 # member names, best first
    val_probs: np.ndarray              # honest: out of fold where the combiner was fitted on validation
    test_probs: np.ndarray
    weights: np.ndarray | None = None
    stacker: tf_keras.Model | None = None
    parts: list = field(default_factory=list)   # model-level ensembles: their ModelLevel objects
    fitted_on: str | None = None       # the split a fitted combiner learnt from: val (train, test: a flaw)


def selection_split(variant: variants.Variant | str | None) -> str:
    """The split members and the best ensemble are chosen on: test under the flaw ``test_selection``."""
    return "test" if variants.parse(variant).has("test_selection") else "val"


def member_predictions(run_ids: list[str], split: str) -> SplitPredictions:
    """Read ``<split>_predictions.csv`` of every member run and align them on the image paths."""
    frames = []
    for run_id in run_ids:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{split}_predictions.csv")
        frames.append(read_predictions(local))
    first = frames[0][0]
    order = first["path"].tolist()
    probs = []
    for run_id, (frame, labels, member_probs) in zip(run_ids, frames):
        if sorted(frame["path"]) != sorted(order):
            raise ValueError(f"run {run_id}: its {split} predictions cover other images than run {run_ids[0]}'s; "
                             "members must be scored on the same data")
        position = {p: i for i, p in enumerate(frame["path"])}
        index = [position[p] for p in order]
        if not np.array_equal(labels[index], frames[0][1]):
            raise ValueError(f"run {run_id}: its {split} labels differ from run {run_ids[0]}'s")
        probs.append(member_probs[index])
    return SplitPredictions(order, frames[0][1], np.stack(probs))


def layout_key(path: str) -> str:
    """``split/CLASS/file`` — what names an image in a Kermany layout wherever the copy lives."""
    return "/".join(Path(path).parts[-3:])


def rebase(predictions: SplitPredictions, frame: pd.DataFrame, split: str, subset: str) -> SplitPredictions:
    """The members' predictions re-keyed onto the images of ``frame``, the data the ensemble uses.

    ``frame`` comes from read_kermany of that data: members may have been trained on another copy of
    the same data (the fingerprint ignores location). Every image must be found in ``frame``'s
    ``subset`` split (validation images inside train, test images as the test split)."""
    where = {layout_key(p): p for p in frame.loc[frame["split"] == subset, "path"].astype(str)}
    missing = [p for p in predictions.paths if layout_key(p) not in where]
    if missing:
        raise ValueError(f"{len(missing)} of the members' {split} images are not in the data's {subset} split "
                         f"(first: {missing[0]}); were the members trained on other data?")
    if split == "test" and len(where) != len(predictions.paths):
        raise ValueError(f"the members were tested on {len(predictions.paths)} images, the data's test split has "
                         f"{len(where)}; were the members trained on other data?")
    return SplitPredictions([where[layout_key(p)] for p in predictions.paths], predictions.labels, predictions.probs)


def prediction_level(names: list[str], val: SplitPredictions, test: SplitPredictions, *, seed: int = 0,
                     stacking_epochs: int = 300, weights_on: str = "val",
                     stacking_on: SplitPredictions | None = None) -> list[Ensemble]:
    """Majority vote, mean, SLSQP-weighted mean and stacking of the given members.

    The weights are fitted on validation, or with ``weights_on="test"`` on the test predictions
    (flaw ``test_selection``); the stacking learner on validation, or on the predictions
    ``stacking_on`` (flaw ``stacking_on_train``: the members' on their own training images).
    Fitted on validation, a combiner's validation predictions are out of fold; fitted elsewhere,
    they are its predictions on validation."""
    if weights_on not in ("val", "test"):
        raise ValueError(f"weights_on must be val or test, got {weights_on!r}")
    k = len(names)
    v, t, y = val.probs, test.probs, val.labels
    label = f"top-{k}"
    if stacking_on is not None and stacking_on.probs.shape[0] != k:
        raise ValueError(f"stacking_on holds {stacking_on.probs.shape[0]} members' predictions, not {k}")

    def weighted_fit_predict(train_probs, train_labels, held_probs):
        return weighted_mean(held_probs, optimize_weights(train_probs, train_labels, seed=seed))

    def stacking_fit_predict(train_probs, train_labels, held_probs):
        return stacking_predict(fit_stacking(train_probs, train_labels, epochs=stacking_epochs, seed=seed), held_probs)

    if weights_on == "val":
        weights = optimize_weights(v, y, seed=seed)
        weighted_val = out_of_fold(weighted_fit_predict, v, y, seed=seed)
    else:
        weights = optimize_weights(t, test.labels, seed=seed)
        weighted_val = weighted_mean(v, weights)
    if stacking_on is None:
        stacker = fit_stacking(v, y, epochs=stacking_epochs, seed=seed)
        stacking_val = out_of_fold(stacking_fit_predict, v, y, seed=seed)
    else:
        stacker = fit_stacking(stacking_on.probs, stacking_on.labels, epochs=stacking_epochs, seed=seed)
        stacking_val = stacking_predict(stacker, v)
    return [
        Ensemble(f"majority {label}", "majority", names, majority_probs(v), majority_probs(t)),
        Ensemble(f"mean {label}", "mean", names, mean_probs(v), mean_probs(t)),
        Ensemble(f"weighted {label}", "weighted", names, weighted_val, weighted_mean(t, weights), weights=weights,
                 fitted_on=weights_on),
        Ensemble(f"stacking {label}", "stacking", names, stacking_val, stacking_predict(stacker, t), stacker=stacker,
                 fitted_on="val" if stacking_on is None else "train"),
    ]


def _features(model: tf_keras.Model, paths: list[str], img_size: int, batch_size: int) -> np.ndarray:
    return model.predict(image_dataset(paths, img_size=img_size, batch_size=batch_size, cache=False), verbose=0)


def predict_split(members: list[tf_keras.Model], paths: list[str], labels: list[str], *, img_size: int,
                  batch_size: int) -> SplitPredictions:
    """The members' predictions on the images ``paths`` (labels: class names), as :func:`member_predictions`
    reads those the members logged."""
    probs = np.stack([_features(member, paths, img_size, batch_size) for member in members])
    return SplitPredictions(list(paths), label_indices(labels), probs)


def model_level(names: list[str], members: list[tf_keras.Model], *, train_paths: list[str], train_labels: list[str],
                val: SplitPredictions, test: SplitPredictions, img_size: int, epochs: int, batch_size: int,
                lr: float, patience: int, seed: int = 0, metric_prefix: str = "",
                max_cache_bytes: int = MAX_FEATURE_CACHE_BYTES,
                feature_cache: dict[tuple[str, str, int], np.ndarray] | None = None,
                freeze_conv: bool = False) -> Ensemble:
    """Train the model-level ensemble's new layers on the training split; the members stay frozen.
    ``freeze_conv`` (flaw ``head_dense_only``): its 1×1 convolution keeps its seeded initial
    weights and only the last Dense layer trains.

    SGD with momentum, as the classifiers, keeping the lowest-validation-loss weights. Frozen
    members' features never change, so when they fit in ``max_cache_bytes`` each member's are
    computed once per split, kept in ``feature_cache`` (keyed by member name, split and image size,
    so the top-3 and top-5 ensembles share them), and the head trains and predicts on them. The
    limit counts the cache and the concatenated copy; past it the cache is emptied."""
    tf_keras.utils.set_random_seed(seed)
    ensemble = ModelLevel(members, names, freeze_conv=freeze_conv)
    classes = [str(c) for c in np.asarray(train_labels)]
    val_labels = [CLASSES[i] for i in val.labels]
    ensemble.head.compile(optimizer=momentum_sgd(lr, 0.9), loss="categorical_crossentropy")
    if len(set(names)) != len(names):
        raise ValueError(f"model_level: member names must be unique (they key the feature cache), got {names}")
    cache = {} if feature_cache is None else feature_cache
    probe = ensemble.features.predict(np.zeros((1, img_size, img_size, 3), np.float32), verbose=0)
    n_images = len(train_paths) + len(val.paths) + len(test.paths)
    held = sum(a.nbytes for key, a in cache.items() if key[0] not in names)     # other members' features
    if held + 2 * probe.nbytes * n_images > max_cache_bytes:                    # the members' and the concatenation
        cache.clear()
        train = image_dataset(train_paths, classes, img_size=img_size, batch_size=batch_size, shuffle=True, seed=seed)
        val_ds = image_dataset(val.paths, val_labels, img_size=img_size, batch_size=batch_size)
        ensemble.full.compile(optimizer=momentum_sgd(lr, 0.9), loss="categorical_crossentropy")
        fit_keeping_best(ensemble.full, train, val_ds, epochs=epochs, images_per_epoch=len(train_paths),
                         patience=patience, metric_prefix=metric_prefix)
        predict = lambda paths: _features(ensemble.full, paths, img_size, batch_size)  # noqa: E731
        return Ensemble(f"model-level top-{len(names)}", "model_level", names, predict(val.paths), predict(test.paths),
                        parts=[ensemble], fitted_on="train")

    def features(split: str, paths: list[str]) -> np.ndarray:
        for name, member in zip(names, ensemble.member_feature_models):
            key = (name, split, img_size)
            if key not in cache:
                cache[key] = _features(member, paths, img_size, batch_size)
            elif len(cache[key]) != len(paths):
                raise ValueError(f"model_level: cached {split} features of {name} are for {len(cache[key])} "
                                 f"images, not {len(paths)} (one cache serves one set of splits)")
        return np.concatenate([cache[(name, split, img_size)] for name in names], axis=-1)

    x_train, x_val, x_test = features("train", train_paths), features("val", val.paths), features("test", test.paths)
    train = without_autotune(tf.data.Dataset.from_tensor_slices((x_train, one_hot(classes)))
                             .shuffle(len(x_train), seed=seed).batch(batch_size))
    val_ds = without_autotune(tf.data.Dataset.from_tensor_slices((x_val, one_hot(val_labels))).batch(batch_size))
    fit_keeping_best(ensemble.head, train, val_ds, epochs=epochs, images_per_epoch=len(train_paths), patience=patience,
                     metric_prefix=metric_prefix)
    predict = lambda x: ensemble.head.predict(x, batch_size=batch_size, verbose=0)  # noqa: E731
    return Ensemble(f"model-level top-{len(names)}", "model_level", names, predict(x_val), predict(x_test),
                    parts=[ensemble], fitted_on="train")


def weighted_model_level(levels: list[Ensemble], val: SplitPredictions, test: SplitPredictions, *, seed: int = 0,
                         weights_on: str = "val") -> Ensemble:
    """The SLSQP-weighted mean of model-level ensembles (the paper's top-3 + top-5), its weights
    fitted on the ensembles' validation predictions, or with ``weights_on="test"`` on their test
    predictions (flaw ``test_selection``); ``val`` and ``test`` give the labels."""
    if weights_on not in ("val", "test"):
        raise ValueError(f"weights_on must be val or test, got {weights_on!r}")
    v = np.stack([e.val_probs for e in levels])
    t = np.stack([e.test_probs for e in levels])

    def fit_predict(train_probs, train_labels, held_probs):
        return weighted_mean(held_probs, optimize_weights(train_probs, train_labels, seed=seed))

    if weights_on == "val":
        weights = optimize_weights(v, val.labels, seed=seed)
        honest_val = out_of_fold(fit_predict, v, val.labels, seed=seed)
    else:
        weights = optimize_weights(t, test.labels, seed=seed)
        honest_val = weighted_mean(v, weights)
    sizes = "+".join(str(len(e.members)) for e in levels)
    members = list(dict.fromkeys(m for e in levels for m in e.members))
    return Ensemble(f"weighted model-level top-{sizes}", "model_level_weighted", members, honest_val,
                    weighted_mean(t, weights), weights=weights, parts=[p for e in levels for p in e.parts],
                    fitted_on=weights_on)


def score_table(singles: list[Ensemble], ensembles: list[Ensemble], test_labels: np.ndarray, val_labels: np.ndarray, *,
                reference: Ensemble, ci_method: str = "bootstrap", seed: int = 0) -> pd.DataFrame:
    """One row per model: test scores, the honest validation MCC, and p-values against ``reference``.

    The test scores carry the MCC interval; the p-values are McNemar's and the paired bootstrap's,
    against the best single model, so a row says whether it beats that model beyond chance."""
    rows = {}
    reference_pred = reference.test_probs.argmax(1)
    for entry in [*singles, *ensembles]:
        scores = score_split(test_labels, entry.test_probs, ci_method, seed=seed)
        row = {"kind": entry.kind, "k": len(entry.members), "members": ";".join(entry.members), **scores,
               "val_mcc": classification_scores(val_labels, entry.val_probs)["mcc"]}
        if entry is reference:
            row.update(mcnemar_p=np.nan, bootstrap_p=np.nan)
        else:
            predicted = entry.test_probs.argmax(1)
            row["mcnemar_p"] = mcnemar_exact(test_labels, predicted, reference_pred)
            row["bootstrap_p"] = paired_bootstrap_mcc_difference(test_labels, predicted, reference_pred, seed=seed)["p_value"]
        rows[entry.name] = row
    table = pd.DataFrame(rows).T
    table.index.name = "name"
    numeric = [c for c in table.columns if c not in ("kind", "members")]
    table[numeric] = table[numeric].astype(float)
    table["k"] = table["k"].astype(int)
    return table


def choose_best(entries: list[Ensemble], score: str, labels: np.ndarray, *, on: str = "val",
                higher_is_better: bool = True) -> tuple[Ensemble, dict[str, float]]:
    """The best entry by ``score`` (a classification_scores key), and every entry's value.

    Scored on its honest validation predictions (``on="val"``) or, reproducing the paper, on the
    test split. Small validation sets tie often (several ensembles at MCC 1.0): the lower log-loss
    wins a tie."""
    scores = {e.name: classification_scores(labels, e.val_probs if on == "val" else e.test_probs) for e in entries}
    sign = 1.0 if higher_is_better else -1.0
    best = max(entries, key=lambda e: (sign * scores[e.name][score], -scores[e.name]["nll"]))
    return best, {name: s[score] for name, s in scores.items()}


def serving_parts(best: Ensemble, members: list[tf_keras.Model]) -> tuple[list[tf_keras.Model], str]:
    """The image → probabilities models of ``best`` and the combiner over their outputs."""
    if best.kind == "model_level":
        return [best.parts[0].full], "mean"
    if best.kind == "model_level_weighted":
        return [p.full for p in best.parts], "weighted"
    return members[:len(best.members)], best.kind


def build_all(names: list[str], members: list[tf_keras.Model], frame: pd.DataFrame, val: SplitPredictions,
              test: SplitPredictions, *, top_k: list[int], img_size: int, epochs: int, batch_size: int, lr: float,
              patience: int, seed: int = 0, variant: variants.Variant | str | None = None,
              ) -> tuple[list[Ensemble], list[Ensemble], list[Ensemble]]:
    """Singles, every ensemble for each K in ``top_k``, and the model-level ones among them.

    Members are best first, so the top-K are a prefix. The model-level heads train on the training
    split minus the validation images: the images the members were trained on, which the flaw
    ``stacking_on_train`` of ``variant`` fits the stacking learner on too (``members`` predict
    them). ``variant``'s other ensemble flaws: see the module's doc (corrected: none)."""
    variant = variants.parse(variant)
    weights_on = selection_split(variant)
    val_keys = {layout_key(p) for p in val.paths}
    train = frame[(frame["split"] == "train") & ~frame["path"].astype(str).map(layout_key).isin(val_keys)]
    train_paths, train_labels = train["path"].astype(str).tolist(), train["label"].tolist()
    own_training = (predict_split(members[:max(top_k)], train_paths, train_labels, img_size=img_size,
                                  batch_size=batch_size) if variant.has("stacking_on_train") else None)
    singles = [Ensemble(name, "single", [name], val.probs[i], test.probs[i]) for i, name in enumerate(names)]
    ensembles, levels, feature_cache = [], [], {}
    for k in top_k:
        top_val, top_test = val.top(k), test.top(k)
        ensembles += prediction_level(names[:k], top_val, top_test, seed=seed, weights_on=weights_on,
                                      stacking_on=None if own_training is None else own_training.top(k))
        levels.append(model_level(names[:k], members[:k], train_paths=train_paths, train_labels=train_labels,
                                  val=top_val, test=top_test, img_size=img_size, epochs=epochs,
                                  batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                                  metric_prefix=f"{ensemble_metric_prefix('model_level', [k])}.",
                                  feature_cache=feature_cache,
                                  freeze_conv=variant.has("head_dense_only")))
    ensembles += levels
    if len(levels) > 1:
        ensembles.append(weighted_model_level(levels, val, test, seed=seed, weights_on=weights_on))
    return singles, ensembles, levels


def level_slug(k: int) -> str:
    return f"model_level_top{k}"


def describe(entries: list[Ensemble]) -> dict:
    """Every ensemble's kind, members, fitted weights and the split it was fitted on, for an auditable
    JSON artifact."""
    return {e.name: {"kind": e.kind, "members": e.members, "fitted_on": e.fitted_on,
                     "weights": None if e.weights is None else [float(w) for w in e.weights]} for e in entries}
