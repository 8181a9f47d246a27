"""An ensemble run's metric names: the same in every run (no member version in them, one spelling),
the values logged as computed."""

from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd

from multiloss.ensembles.build import Ensemble
from multiloss.ensembles.members import Members
from multiloss.ensembles.run import (
    HEADLINE_METRICS,
    ROW_METRICS,
    Scored,
    log_scores,
    member_keys,
)
from multiloss.tracking import ranking, store

KINDS = ("majority", "mean", "weighted", "stacking")


def scored_of(member_names: list[str]) -> Scored:
    """The score table of top-2 and top-3 ensembles over three members, as build_and_score makes it."""
    probs = np.full((4, 3), 1 / 3)
    ensembles, levels = [], []
    for k in (2, 3):
        ensembles += [Ensemble(f"{kind} top-{k}", kind, member_names[:k], probs, probs) for kind in KINDS]
        levels.append(Ensemble(f"model-level top-{k}", "model_level", member_names[:k], probs, probs))
    ensembles += [*levels, Ensemble("weighted model-level top-2+3", "model_level_weighted", member_names, probs, probs)]
    rows = [*member_names, *(e.name for e in ensembles)]
    columns = sorted({*ROW_METRICS, *HEADLINE_METRICS})
    values = np.random.default_rng(0).random((len(rows), len(columns)))
    table = pd.DataFrame(values, index=pd.Index(rows, name="name"), columns=columns)
    return Scored([], None, ensembles, levels, table, best=ensembles[1], best_level=levels[1])


def test_metric_names_carry_losses_and_ensemble_kinds_never_versions():
    ranked = [ranking.Ranked(SimpleNamespace(version=v, tags={"loss": loss}), 0.5)
              for loss, v in (("cal_cce", "13"), ("cce", "7"), ("cal_cce", "4"))]
    members = Members(ranked, 32, None)
    scored = scored_of(members.member_names)
    with store.stage_run("ensembles", run_name="names") as run:
        log_scores(scored, members)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data
    rows = [*(f"member.{key}" for key in ("cal_cce", "cce", "cal_cce_2")),
            *(f"top{k}.{kind}" for k in (2, 3) for kind in (*KINDS, "model_level")), "top2_3.model_level_weighted"]
    assert set(logged.metrics) == ({f"{row}.{m}" for row in rows for m in ROW_METRICS}
                                   | {f"test_{m}" for m in HEADLINE_METRICS} | {"val_mcc"})
    assert logged.params == {"member.cal_cce": "13", "member.cce": "7", "member.cal_cce_2": "4"}
    table = scored.table
    assert logged.metrics["top2_3.model_level_weighted.mcc"] == table.loc["weighted model-level top-2+3", "mcc"]
    assert logged.metrics["member.cal_cce_2.ece"] == table.loc["cal_cce (v4)", "ece"]     # not rounded
    assert logged.metrics["test_nll"] == table.loc["mean top-2", "nll"]


def test_member_keys_are_safe_metric_names():
    assert member_keys(["cce", "Focal Loss", "cce", "", "cce"]) == ["cce", "focal_loss", "cce_2", "unknown", "cce_3"]
