"""The ablation's tables, computed from the per-image predictions of its runs.

- per loss and role (published, corrected, base): test MCC, ECE, NLL and Brier as mean ± std over
  seeds, and how many seeds gave a degenerate model;
- per loss and seed: published minus corrected on the same test images, paired bootstrap interval
  and p-value, Holm-adjusted across the table (each score's column on its own);
- calibration: the corrected calibrated losses beside CCE with temperature scaling fitted on
  validation (one scalar, by NLL), the post-hoc baseline a calibrated loss has to beat;
- ensembles: the paper's proposed method (the weighted model-level ensemble) against the best
  single member, under each variant;
- sweeps: every grid point's validation NLL and test MCC, the best beside the paper's choice.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from multiloss.ablation.plan import BASE, CORRECTED, PUBLISHED, ROLES
from multiloss.ablation.results import Trained
from multiloss.losses import CLASSIFICATION_LOSSES
from multiloss.metrics.calibration import fit_temperature, temperature_scaled
from multiloss.metrics.classification import classification_scores
from multiloss.metrics.significance import holm, mean_std, paired_bootstrap

SCORES = ("mcc", "ece", "nll", "brier")          # per role, mean ± std over seeds
PAIRED = ("mcc", "nll")                          # published − corrected, per seed
TEMPERATURE = "cce + temperature scaling"
PROPOSED_KIND = "model_level_weighted"           # the paper's proposed method


def test_scores(trained: Trained) -> dict[str, float]:
    return classification_scores(trained.test.labels, trained.test.probs)


def by_role(found: list[Trained]) -> pd.DataFrame:
    """One row per (loss, role): mean and std of each test score over seeds, seeds, degenerate seeds.

    A base row is listed under every loss it is the base of."""
    rows = []
    for loss in dict.fromkeys(t.training.rows[0] for t in found if t.training.role != BASE):
        for role in ROLES:
            runs = [t for t in found if t.training.role == role and loss in t.training.rows]
            if not runs:
                continue
            scores = [test_scores(t) for t in runs]
            row = {"loss": loss, "role": role, "trained_as": runs[0].training.loss,
                   "variant": runs[0].training.variant, "seeds": len(runs),
                   "degenerate": sum(t.degenerate is not None for t in runs)}
            for score in SCORES:
                row[f"{score}_mean"], row[f"{score}_std"] = mean_std([s[score] for s in scores])
            rows.append(row)
    return pd.DataFrame(rows).set_index(["loss", "role"])


def paired_differences(found: list[Trained], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per touched loss and seed: published − corrected on the same test images (paired bootstrap),
    with Holm-adjusted p-values over the whole table for each score."""
    rows = []
    runs = {(t.training.rows[0], t.training.role, t.training.seed): t for t in found if t.training.role != BASE}
    for (loss, role, run_seed), published in runs.items():
        corrected = runs.get((loss, CORRECTED, run_seed))
        if role != PUBLISHED or corrected is None:
            continue
        row = {"loss": loss, "seed": run_seed}
        for score in PAIRED:
            result = paired_bootstrap(published.test.labels, published.test.probs, corrected.test.probs, score,
                                      n_resamples=n_resamples, seed=seed)
            row.update({f"{score}_difference": result["difference"], f"{score}_low": result["low"],
                        f"{score}_high": result["high"], f"{score}_p": result["p_value"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    for score in PAIRED:
        if len(table):
            table[f"{score}_p_holm"] = holm(table[f"{score}_p"].to_numpy(float))
    return table.set_index(["loss", "seed"]) if len(table) else table


def temperature_scaled_cce(found: list[Trained]) -> list[dict[str, float]]:
    """Per seed of the CCE base: its test scores after a temperature fitted on its validation
    predictions (argmax, so MCC, unchanged; ECE, NLL and Brier moved), with the temperature."""
    rows = []
    for t in found:
        if t.training.role == BASE and t.training.loss == "cce":
            temperature = fit_temperature(t.val.probs, t.val.labels)
            scores = classification_scores(t.test.labels, temperature_scaled(t.test.probs, temperature))
            rows.append({**scores, "temperature": temperature, "seed": t.training.seed})
    return rows


def calibration(found: list[Trained], roles: pd.DataFrame) -> pd.DataFrame:
    """The calibrated losses (corrected and published) beside CCE and CCE with temperature scaling:
    test ECE, Brier, NLL and MCC, mean ± std over seeds."""
    rows = []
    base = roles[(roles.index.get_level_values("role") == BASE) & (roles["trained_as"] == "cce")]
    if len(base):
        rows.append(pd.DataFrame([{**base.iloc[0].to_dict(), "model": "cce", "variant": CORRECTED}], index=["cce"]))
    scaled = temperature_scaled_cce(found)
    if scaled:
        summary = {"model": TEMPERATURE, "variant": CORRECTED, "seeds": len(scaled),
                   "degenerate": 0, "temperature": "T = " + ", ".join(f"{r['temperature']:.2f}" for r in scaled)}
        for score in SCORES:
            summary[f"{score}_mean"], summary[f"{score}_std"] = mean_std([r[score] for r in scaled])
        rows.append(pd.DataFrame([summary], index=[TEMPERATURE]))
    for (loss, role), row in roles.iterrows():
        if loss.startswith("cal_") and role in (CORRECTED, PUBLISHED):
            rows.append(pd.DataFrame([{**row.to_dict(), "model": loss, "variant": role}], index=[f"{loss} ({role})"]))
    table = pd.concat(rows) if rows else pd.DataFrame()
    if scaled and len(table):
        reference = table.loc[TEMPERATURE]
        table["beats_temperature_scaling_on"] = [
            ", ".join(s for s in ("ece", "brier", "nll", "mcc") if _better(r, reference, s)) or "none"
            if name != TEMPERATURE else "" for name, r in table.iterrows()]
    return table


def _better(row: pd.Series, reference: pd.Series, score: str) -> bool:
    """Whether ``row``'s mean beats the reference's by more than both stds together (a crude,
    stated guard against calling seed noise a gain); never with a single seed (no std)."""
    a, b = row[f"{score}_mean"], reference[f"{score}_mean"]
    if math.isnan(row[f"{score}_std"]) or math.isnan(reference[f"{score}_std"]):
        return False
    noise = row[f"{score}_std"] + reference[f"{score}_std"]
    return bool(a - b > noise) if score == "mcc" else bool(b - a > noise)


def ensemble_gains(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per ensemble variant: the best single member's and the proposed method's test MCC, the gain,
    its paired p-values, and the share of the published gain that survives."""
    rows = []
    for label, table in tables.items():
        singles = table[table["kind"] == "single"]
        proposed = table[table["kind"] == PROPOSED_KIND]
        reference = singles.iloc[0] if len(singles) else None       # the best-ranked member (the tests' reference)
        row = {"ensembles": label, "best_single": reference.name if reference is not None else "",
               "best_single_mcc": float(reference["mcc"]) if reference is not None else math.nan}
        if len(proposed):
            best = proposed.iloc[0]
            row.update({"proposed": best.name, "proposed_mcc": float(best["mcc"]),
                        "gain": float(best["mcc"]) - row["best_single_mcc"],
                        "mcnemar_p": float(best["mcnemar_p"]), "bootstrap_p": float(best["bootstrap_p"])})
        best_any = table[table["kind"] != "single"]["mcc"].astype(float)       # by test MCC: a reference only
        row["best_on_test"] = best_any.idxmax() if len(best_any) else ""
        row["best_on_test_mcc"] = float(best_any.max()) if len(best_any) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("ensembles")
    if PUBLISHED in frame.index and "gain" in frame.columns:
        published_gain = frame.loc[PUBLISHED, "gain"]
        frame["gain_surviving"] = frame["gain"] / published_gain if published_gain > 0 else math.nan
    return frame


def sweep_summary(loss: str, trials: pd.DataFrame) -> dict[str, object]:
    """The best grid point by validation NLL beside the paper's choice of the same parameters."""
    parameters = [p for p in CLASSIFICATION_LOSSES[loss] if p in trials.columns]
    complete = trials[trials["state"] == "COMPLETE"].sort_values("val_nll")
    paper = {p: CLASSIFICATION_LOSSES[loss][p] for p in parameters}
    at_paper = complete
    for p, value in paper.items():
        at_paper = at_paper[np.isclose(at_paper[p].astype(float), value)]
    summary = {"loss": loss, "paper": _point(paper), "trials": len(trials),
               "complete": len(complete), "pruned": int((trials["state"] == "PRUNED").sum())}
    if len(complete):
        best = complete.iloc[0]
        summary.update({"best": _point({p: best[p] for p in parameters}), "best_val_nll": float(best["val_nll"]),
                        "best_test_mcc": float(best["test_mcc"])})
    if len(at_paper):
        summary.update({"paper_val_nll": float(at_paper.iloc[0]["val_nll"]),
                        "paper_test_mcc": float(at_paper.iloc[0]["test_mcc"])})
    else:
        summary["paper_val_nll"] = summary["paper_test_mcc"] = math.nan     # pruned, or not in the grid
    return summary


def _point(values: dict[str, float]) -> str:
    return ", ".join(f"{p} = {float(v):g}" for p, v in values.items())
