"""The ablation's tables on predictions whose scores are known."""

import math

import numpy as np
import pandas as pd
import pytest

from multiloss.ablation import report, tables
from multiloss.ablation.plan import BASE, CORRECTED, PUBLISHED, Training
from multiloss.ablation.results import Split, Trained
from multiloss.metrics.classification import classification_scores
from multiloss.report.comparison import to_html, to_markdown

N = 120
RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 3, N)
KEYS = [f"test/C/{i:03d}.png" for i in range(N)]


def probs_of(labels, sharpness: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, noise, (len(labels), 3)) + 2.0 * np.eye(3)[labels]
    z = sharpness * logits
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def trained(loss, variant, seed, role, rows, probs, degenerate=None) -> Trained:
    split = Split(KEYS, LABELS, probs)
    return Trained(Training(loss, variant, seed, role, rows), f"run-{loss}-{variant}-{seed}", split, split, degenerate)


def found_runs():
    runs = []
    for seed in (0, 1):
        good = probs_of(LABELS, 1.0, 1.0, seed)
        runs += [trained("cal_cce", "published", seed, PUBLISHED, ("cal_cce",), good),
                 trained("cal_cce", "corrected", seed, CORRECTED, ("cal_cce",), np.full((N, 3), 1 / 3),
                         degenerate="mean confidence 0.333"),
                 trained("cce", "corrected", seed, BASE, ("cal_cce",), good)]
    return runs


def test_scores_per_role_are_the_mean_and_std_over_seeds():
    roles = tables.by_role(found_runs())
    assert list(roles.index) == [("cal_cce", PUBLISHED), ("cal_cce", CORRECTED), ("cal_cce", BASE)]
    mccs = [classification_scores(LABELS, probs_of(LABELS, 1.0, 1.0, s))["mcc"] for s in (0, 1)]
    published = roles.loc[("cal_cce", PUBLISHED)]
    assert published["mcc_mean"] == pytest.approx(np.mean(mccs))
    assert published["mcc_std"] == pytest.approx(np.std(mccs, ddof=1))
    corrected = roles.loc[("cal_cce", CORRECTED)]
    assert corrected["degenerate"] == 2 and corrected["nll_mean"] == pytest.approx(math.log(3))
    assert roles.loc[("cal_cce", BASE), "trained_as"] == "cce"


def test_paired_differences_pair_published_with_corrected_per_seed_and_adjust_by_holm():
    runs = found_runs()
    same = [trained(t.training.loss, t.training.variant, t.training.seed, t.training.role, t.training.rows,
                    runs[0].test.probs) for t in runs]
    identical = tables.paired_differences(same, n_resamples=200)
    assert list(identical.index) == [("cal_cce", 0), ("cal_cce", 1)]
    assert (identical["mcc_difference"] == 0).all() and (identical["mcc_p"] == 1).all()
    apart = tables.paired_differences(runs, n_resamples=500)
    assert (apart["mcc_difference"] > 0.3).all() and (apart["mcc_p"] < 0.01).all()
    assert (apart["mcc_p_holm"] >= apart["mcc_p"]).all()


def test_temperature_scaling_of_cce_keeps_its_predictions_and_fixes_its_overconfidence():
    overconfident = probs_of(LABELS, 4.0, 1.0, 5)
    runs = [trained("cce", "corrected", 0, BASE, ("cal_cce",), overconfident)]
    (row,) = tables.temperature_scaled_cce(runs)
    before = classification_scores(LABELS, overconfident)
    assert row["temperature"] > 1.5
    assert row["mcc"] == before["mcc"] and row["nll"] < before["nll"]


def test_the_calibration_table_sets_the_calibrated_losses_beside_temperature_scaling():
    runs = found_runs()
    roles = tables.by_role(runs)
    table = tables.calibration(runs, roles)
    assert list(table.index) == ["cce", tables.TEMPERATURE, "cal_cce (published)", "cal_cce (corrected)"]
    # Uniform predictions are calibrated (confidence 1/3, accuracy ~1/3): a collapsed model "wins" on ECE
    # alone, which is why the table carries its degenerate seeds beside it.
    assert table.loc["cal_cce (corrected)", "beats_temperature_scaling_on"] == "ece"
    assert table.loc["cal_cce (corrected)", "degenerate"] == 2


def test_ensemble_gains_and_the_share_that_survives():
    def scores(single, proposed):
        return pd.DataFrame({"kind": ["single", "single", "mean", "model_level_weighted"],
                             "mcc": [single, single - 0.1, proposed - 0.01, proposed],
                             "mcnemar_p": [np.nan, 0.5, 0.2, 0.04], "bootstrap_p": [np.nan, 0.4, 0.3, 0.03]},
                            index=["a", "b", "mean top-2", "weighted model-level top-2+3"])
    gains = tables.ensemble_gains({"published": scores(0.8, 0.9), "corrected": scores(0.8, 0.85)})
    assert gains.loc["published", "gain"] == pytest.approx(0.1)
    assert gains.loc["corrected", "gain_surviving"] == pytest.approx(0.5)
    assert gains.loc["corrected", "best_single"] == "a"


def test_the_sweep_summary_sets_the_best_grid_point_beside_the_papers_choice():
    trials = pd.DataFrame({"state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"], "lam": [1.0, 10.0, 20.0, 2.0],
                           "val_nll": [0.22, 1.09, np.nan, 0.37], "test_mcc": [0.83, 0.0, np.nan, 0.84]})
    summary = tables.sweep_summary("cal_cce", trials)
    assert summary["best"] == "lam = 1" and summary["paper"] == "lam = 10"
    assert summary["paper_val_nll"] == 1.09 and summary["best_test_mcc"] == 0.83
    assert (summary["complete"], summary["pruned"]) == (3, 1)


def test_the_report_renders_every_table_and_names_the_flaws():
    runs = found_runs()
    roles = tables.by_role(runs)
    blocks = report.build(["Data: x"], roles, tables.paired_differences(runs, n_resamples=100),
                          tables.calibration(runs, roles), pd.DataFrame(), [])
    markdown = to_markdown(blocks)
    assert markdown.startswith(f"# {report.TITLE}")
    assert "calibration_no_gradient (loss)" in markdown and "2/2" in markdown         # degenerate seeds
    assert "cce + temperature scaling" in markdown
    assert "<table" in to_html(blocks)
    metrics = report.metrics(roles, pd.DataFrame(), [])
    assert metrics["cce.base.test_nll_mean"] == pytest.approx(roles.loc[("cal_cce", BASE), "nll_mean"])
    assert not any("_v" in name for name in metrics)


def test_the_tables_logged_on_a_run_give_the_same_report_again(tmp_path):
    import mlflow

    runs = found_runs()
    roles = tables.by_role(runs)
    logged = report.AblationTables(["Data: x"], roles, tables.paired_differences(runs, n_resamples=100),
                                   tables.calibration(runs, roles), pd.DataFrame(),
                                   [{"loss": "cal_cce", "paper": "lam = 10", "paper_val_nll": 1.09,
                                     "paper_test_mcc": 0.0, "trials": 2, "complete": 2, "pruned": 0}])
    with mlflow.start_run() as run:
        logged.save(tmp_path)
        mlflow.log_artifacts(str(tmp_path))
    again = report.AblationTables.load(run.info.run_id)
    assert to_markdown(again.blocks(level=2)) == to_markdown(logged.blocks(level=2))
    assert to_markdown(logged.blocks(level=2)).startswith(f"## {report.TITLE}")
