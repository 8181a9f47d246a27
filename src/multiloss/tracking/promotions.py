"""Promotions that compare and remember: a candidate for an alias is compared with the version
holding it on the same images (paired bootstrap of the ranking score on that split, where both
logged their per-image predictions), and every move is recorded, in a run of the ``promotions``
experiment and as a tag on both versions (from, to, metric, values, p, who, when)."""

from __future__ import annotations

import getpass
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion

from multiloss import names
from multiloss.tracking import ranking, store

# The tags a move leaves on the versions, one per alias: the JSON record of the move.
PROMOTED_PREFIX = "promotion.to."          # on the version that took the alias
DEMOTED_PREFIX = "promotion.from."         # on the version that held it


@dataclass(frozen=True)
class Comparison:
    """The candidate against the holder on ``key`` (``val_mcc``: MCC on validation)."""

    key: str
    holder_value: float
    candidate_value: float
    difference: float           # candidate − holder
    low: float                  # the paired bootstrap's interval of the difference (NaN: values only)
    high: float
    p_value: float
    method: str                 # how it was compared, in words

    def better(self) -> bool:
        """Whether the candidate is better than the holder on ``key`` (strictly)."""
        sign = 1.0 if ranking.higher_is_better(self.key) else -1.0
        return sign * self.difference > 0

    def describe(self) -> str:
        values = f"{self.key} {self.candidate_value:.4g} vs {self.holder_value:.4g}"
        if math.isnan(self.p_value):
            return f"{values} ({self.method})"
        return (f"{values}, difference {self.difference:+.4g} [{self.low:+.4g}, {self.high:+.4g}], "
                f"p {self.p_value:.3g} ({self.method})")


def _predictions(version: ModelVersion, split: str):
    """(image keys, labels, probabilities) of the split as the version's run logged them, or None."""
    from multiloss.classification.scoring import read_predictions
    from multiloss.ensembles.build import layout_key

    if not version.run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                                        artifact_path=f"{split}_predictions.csv", dst_path=tmp)
            frame, labels, probs = read_predictions(local)
    except (OSError, ValueError, mlflow.exceptions.MlflowException):
        return None
    keys = [layout_key(p) for p in frame["path"].astype(str)]
    order = np.argsort(keys)
    return [keys[i] for i in order], labels[order], probs[order]


def compare(key: str, holder: ModelVersion, candidate: ModelVersion, seed: int = 0) -> Comparison:
    """The candidate against the holder on ``key``: paired over the split's images where both
    versions logged predictions of the same images and the score is one the bootstrap knows, else
    their values alone."""
    from multiloss.metrics.significance import STATISTICS, paired_bootstrap

    values = [ranking.version_value(v, key) for v in (holder, candidate)]
    if any(v is None for v in values):
        missing = [str(v.version) for v, value in zip((holder, candidate), values) if value is None]
        raise ValueError(f"version {', '.join(missing)} has no {key} to compare on")
    holder_value, candidate_value = (float(v) for v in values)
    split, score = key.partition("_")[0], ranking.base_score(key)
    if split in ranking.SPLITS and score in STATISTICS:
        held, new = _predictions(holder, split), _predictions(candidate, split)
        if held is not None and new is not None and held[0] == new[0] and np.array_equal(held[1], new[1]):
            result = paired_bootstrap(new[1], new[2], held[2], score, seed=seed)
            return Comparison(key, holder_value, candidate_value, candidate_value - holder_value,
                              result["low"], result["high"], result["p_value"],
                              f"paired bootstrap over the {len(new[1])} {split} images")
        why = "not on the same images" if held is not None and new is not None else "no per-image predictions"
    else:
        why = f"no per-image test for {key}"
    return Comparison(key, holder_value, candidate_value, candidate_value - holder_value, math.nan, math.nan,
                      math.nan, f"values only: {why}")


def who() -> str:
    """Who moves an alias: the tracking server's user when one is set, else the login name."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def record(model: str, alias: str, before: ModelVersion | None, after: ModelVersion, reason: str,
           comparison: Comparison | None, forced: bool) -> str:
    """Record one alias move: a run in the promotions experiment and a tag on both versions.
    Returns the run's id."""
    entry = {"model": model, "alias": alias, "from": str(before.version) if before is not None else "",
             "to": str(after.version), "reason": reason, "forced": forced, "who": who(),
             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             **({"comparison": asdict(comparison)} if comparison is not None else {})}
    client = mlflow.MlflowClient()
    run = client.create_run(store.ensure_experiment(names.PROMOTIONS_EXPERIMENT),
                            run_name=f"{model}@{alias}: {entry['from'] or 'unset'} -> {entry['to']}",
                            tags={names.STAGE_TAG: "promote", "model": model, "alias": alias,
                                  "from_version": entry["from"], "to_version": entry["to"], "who": entry["who"],
                                  "forced": str(forced).lower()})
    entry["run_id"] = run.info.run_id
    if comparison is not None:
        client.log_param(run.info.run_id, "metric", comparison.key)
        for name in ("holder_value", "candidate_value", "difference", "low", "high", "p_value"):
            value = getattr(comparison, name)
            if not math.isnan(value):
                client.log_metric(run.info.run_id, name, value)
    client.log_dict(run.info.run_id, entry, "promotion.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    text = json.dumps(entry, sort_keys=True)[:5000]
    client.set_model_version_tag(model, str(after.version), f"{PROMOTED_PREFIX}{alias}", text)
    if before is not None and str(before.version) != str(after.version):
        client.set_model_version_tag(model, str(before.version), f"{DEMOTED_PREFIX}{alias}", text)
    return run.info.run_id
