"""Ranking registered model versions by a metric, which the registry itself does not store.

A version's value is its source run's metric, or else a version tag of that name (segment_eval
writes holdout scores as tags on the U-Net versions). Lower-is-better scores rank ascending; ties go
to the lower validation NLL, then to the lower version number, so that the order never depends on
which of two worker processes registered first.

A pool (:class:`Pool`) is the ranked versions that share the tags a comparison needs (one data
fingerprint, one image size, ...): a score of a model trained on phantoms must not outrank one of
a model trained on X-rays unseen, so what a pool leaves out is kept with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.tracking import registry

SPLITS = ("val", "test")
# Scores where smaller is better; every other score ranks high to low.
LOWER_IS_BETTER = ("ece", "brier", "nll", "loss", "best_val_loss")
# Breaks ties of the ranked score (lower first; a version without it comes after those with it).
TIE_BREAK = "val_nll"
# The classifier tag naming the U-Net version its encoder came from.
ENCODER_TAG = "encoder_version"
# How a run records a pool: a tag listing what was left out and why, the whole pool as JSON.
LEFT_OUT_TAG = "pool.left_out"
POOL_ARTIFACT = "pool.json"
TAG_LIMIT = 5000                  # characters of LEFT_OUT_TAG kept (POOL_ARTIFACT has them all)


@dataclass(frozen=True)
class Ranked:
    version: ModelVersion
    value: float
    tie_break: float = math.inf     # the version's TIE_BREAK score


def selection_key(metric: str, select_on: str | None) -> str:
    """The metric name to rank on: ``metric``'s score on split ``select_on``.

    ``metric`` may carry a split (``val_mcc``, the documented default) or not (``mcc``); the split
    always comes from ``select_on``, so ``select_on=test`` with the default metric ranks on test_mcc.
    """
    if select_on is None:
        return metric
    if select_on not in SPLITS:
        raise ValueError(f"select_on must be one of {SPLITS}, got {select_on!r}")
    return f"{select_on}_{base_score(metric)}"


def base_score(key: str) -> str:
    """``val_mcc`` → ``mcc``; a name without a split prefix is returned as it is."""
    split, _, base = key.partition("_")
    return base if split in SPLITS and base else key


def higher_is_better(key: str) -> bool:
    return base_score(key) not in LOWER_IS_BETTER


def version_value(version: ModelVersion, key: str, client: mlflow.MlflowClient | None = None,
                  run_metrics: dict[str, float] | None = None) -> float | None:
    """The source run's metric ``key``, else the version tag ``key`` (None if neither is a number)."""
    if run_metrics is None:
        client = client or mlflow.MlflowClient()
        run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    if key in run_metrics:
        return float(run_metrics[key])
    if key in version.tags:
        try:
            return float(version.tags[key])
        except ValueError:
            return None
    return None


def scored_versions(registered_name: str, key: str) -> tuple[list[Ranked], list[ModelVersion]]:
    """Every version of ``registered_name``: those with a value for ``key``, best first (ties: the
    lower ``val_nll``, then the lower version number), and those without one, oldest first."""
    client = mlflow.MlflowClient()
    ranked, unscored = [], []
    for version in registry.versions(registered_name):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        value = version_value(version, key, run_metrics=metrics)
        if value is None or math.isnan(value):         # NaN would sort anywhere
            unscored.append(version)
            continue
        tie = version_value(version, TIE_BREAK, run_metrics=metrics)
        ranked.append(Ranked(version, value, math.inf if tie is None or math.isnan(tie) else tie))
    sign = -1.0 if higher_is_better(key) else 1.0
    return sorted(ranked, key=lambda r: (sign * r.value, r.tie_break, int(r.version.version))), unscored


def rank_versions(registered_name: str, key: str, *, tags: dict[str, str] | None = None) -> list[Ranked]:
    """Versions with a value for ``key`` (and all the given ``tags``), best first (see :func:`scored_versions`)."""
    ranked, _ = scored_versions(registered_name, key)
    if tags:
        ranked = [r for r in ranked if all(r.version.tags.get(k) == str(v) for k, v in tags.items())]
    return ranked


def distinct_by_tag(ranked: list[Ranked], tag: str) -> list[Ranked]:
    """The best version per value of ``tag`` (e.g. one model per loss), order kept."""
    seen, kept = set(), []
    for r in ranked:
        value = r.version.tags.get(tag)
        if value not in seen:
            seen.add(value)
            kept.append(r)
    return kept


def shown(tag: str, value: str | None) -> str:
    """A tag value as messages print it: fingerprints cut to 12 characters, a missing one 'untagged'."""
    if value is None:
        return "untagged"
    return value[:12] if tag.endswith("fingerprint") else value


@dataclass(frozen=True)
class Pool:
    """The ranked versions that share ``criteria`` (tag -> value; None: the tag is absent), best
    first, and every other version with the reason it was left out (version -> reason)."""

    registered_name: str
    key: str
    criteria: dict[str, str | None]
    ranked: list[Ranked]
    left_out: dict[str, str] = field(default_factory=dict)
    reference: str = ""             # where the criteria came from, in words
    rule: str = ""                  # the stage's pool parameter that chose the criteria

    @property
    def versions(self) -> list[str]:
        return [str(r.version.version) for r in self.ranked]

    def describe(self) -> str:
        """One line: what the pool holds, where that came from, and what it left out."""
        held = ", ".join(f"{tag} {shown(tag, value)}" for tag, value in self.criteria.items()) or "every version"
        source = f" ({self.reference})" if self.reference else ""
        return f"pool of {self.registered_name}: {held}{source}; {self.left_out_text()}"

    def left_out_text(self) -> str:
        if not self.left_out:
            return "nothing left out"
        return f"{len(self.left_out)} left out: " + ", ".join(f"v{v} ({why})" for v, why in self.left_out.items())

    def record(self) -> dict:
        """The pool as JSON for a run's artifact."""
        return {"model": self.registered_name, "pool": self.rule, "ranked_on": self.key, "criteria": self.criteria,
                "reference": self.reference, "ranked": self.versions, "left_out": self.left_out}


def log_pool(pool: Pool) -> None:
    """Record ``pool`` in the active run: what it left out (tag) and all of it (artifact)."""
    mlflow.set_tag(LEFT_OUT_TAG, pool.left_out_text()[:TAG_LIMIT])
    mlflow.log_dict(pool.record(), POOL_ARTIFACT)


def mismatch(version: ModelVersion, criteria: dict[str, str | None]) -> str | None:
    """Why ``version`` is not in a pool of ``criteria`` (the first tag that differs), or None."""
    for tag, wanted in criteria.items():
        value = version.tags.get(tag)
        if value != wanted:
            return f"{tag} {shown(tag, value)}, not {shown(tag, wanted)}"
    return None


def degenerate(version: ModelVersion) -> str | None:
    """Why ``version`` is flagged degenerate (its validation predictions are one class, or its
    confidence there stays at 1/C), or None."""
    if version.tags.get(names.DEGENERATE_TAG) != "true":
        return None
    return f"degenerate: {version.tags.get(names.DEGENERATE_REASON_TAG, 'flagged on validation')}"


def make_pool(registered_name: str, key: str, ranked: list[Ranked], criteria: dict[str, str | None], *,
              unscored: list[ModelVersion] = (), left_out: dict[str, str] | None = None,
              reference: str = "", rule: str = "", include_degenerate: bool = False) -> Pool:
    """The pool of ``criteria`` among ``ranked``; ``unscored`` versions are left out for having no
    ``key``, degenerate ones (:func:`degenerate`) unless ``include_degenerate``."""
    reasons = dict(left_out or {})
    reasons.update({str(v.version): f"no {key}" for v in unscored if str(v.version) not in reasons})
    kept = []
    for r in ranked:
        why = mismatch(r.version, criteria) or (None if include_degenerate else degenerate(r.version))
        if why is None:
            kept.append(r)
        else:
            reasons.setdefault(str(r.version.version), why)
    ordered = dict(sorted(reasons.items(), key=lambda item: int(item[0])))
    return Pool(registered_name, key, dict(criteria), kept, ordered, reference, rule)


def data_fingerprint(version: ModelVersion) -> str | None:
    return version.tags.get(names.DATA_FINGERPRINT_TAG)


def other_data(holder: ModelVersion | None, fingerprint: str | None) -> bool:
    """Whether moving an alias from ``holder`` to a version trained on data ``fingerprint`` would
    cross data sets (an alias no version holds crosses nothing)."""
    return holder is not None and data_fingerprint(holder) != fingerprint


def alias_holder(registered_name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points at, or None."""
    try:
        return registry.alias_version(registered_name, alias)
    except ValueError:
        return None
