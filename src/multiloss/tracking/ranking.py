"""Ranking registered model versions by a metric, which the registry itself does not store.

A version's value is its source run's metric, or else a version tag of that name (segment_eval
writes holdout scores as tags on the U-Net versions). Lower-is-better scores rank ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion

from multiloss.tracking import registry

SPLITS = ("val", "test")
# Scores where smaller is better; every other score ranks high to low.
LOWER_IS_BETTER = ("ece", "brier", "nll", "loss", "best_val_loss")


@dataclass(frozen=True)
class Ranked:
    version: ModelVersion
    value: float


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


def version_value(version: ModelVersion, key: str, client: mlflow.MlflowClient | None = None) -> float | None:
    client = client or mlflow.MlflowClient()
    if version.run_id:
        metrics = client.get_run(version.run_id).data.metrics
        if key in metrics:
            return float(metrics[key])
    if key in version.tags:
        try:
            return float(version.tags[key])
        except ValueError:
            return None
    return None


def rank_versions(registered_name: str, key: str, *, tags: dict[str, str] | None = None) -> list[Ranked]:
    """Versions with a value for ``key`` (and all the given ``tags``), best first.

    Ties go to the newer version."""
    client = mlflow.MlflowClient()
    ranked = []
    for version in registry.versions(registered_name):
        if tags and any(version.tags.get(k) != str(v) for k, v in tags.items()):
            continue
        value = version_value(version, key, client)
        if value is not None:
            ranked.append(Ranked(version, value))
    sign = -1.0 if higher_is_better(key) else 1.0
    return sorted(ranked, key=lambda r: (sign * r.value, -int(r.version.version)))


def distinct_by_tag(ranked: list[Ranked], tag: str) -> list[Ranked]:
    """The best version per value of ``tag`` (e.g. one model per loss), order kept."""
    seen, kept = set(), []
    for r in ranked:
        value = r.version.tags.get(tag)
        if value not in seen:
            seen.add(value)
            kept.append(r)
    return kept
