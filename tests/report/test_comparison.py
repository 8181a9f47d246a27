"""The paper-comparison report: the paper's numbers as transcribed, the checks recomputed on them,
the builder on hand-made frames, the collector on a tiny MLflow store, and the `report` stage."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from multiloss import names
from multiloss.metrics.classification import MCC_INTERVAL_LABELS
from multiloss.report import comparison
from multiloss.report.comparison import NOT_RUN, REAL, SYNTHETIC, UNKNOWN, OurResults
from multiloss.tracking import store

# the paper ships in ../shared beside the checkout (as CI lays it out)
PAPER_DIR = Path(__file__).resolve().parents[3] / "shared" / "paper"
PAPER = comparison.load_paper()
NUMBER = r"(NA|\d+(?:\.\d+)?(?:e-?\d+)?)"


def _value(text: str):
    return None if text == "NA" else float(text)


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def _section(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    return text[begin:text.index(end, begin)]


PAPER_KEYS = ("accuracy", "auroc", "auprc", "precision", "recall", "f_score", "mcc")


def _classification_rows(text: str, label: str) -> dict:
    """A row of Tables 2-5 in the preprint: seven scores, then the MCC interval in parentheses."""
    pattern = (r"(?:^|\s)" + re.escape(label) + r"\s+" + r"\s+".join([NUMBER] * 7)
               + r"(?:\s*\(\s*" + NUMBER + r",\s*" + NUMBER + r"\s*\))?")
    found = re.search(pattern, text)
    assert found, f"row {label!r} not found in the paper text"
    values = [_value(v) if v is not None else None for v in found.groups()]
    return dict(zip((*PAPER_KEYS, "mcc_low", "mcc_high"), values))


def _expected(row: dict) -> dict:
    return {key: row[key] for key in (*PAPER_KEYS, "mcc_low", "mcc_high")}


def test_table1_matches_the_clean_copy():
    """Table 1 read from the Markdown copy's LaTeX cells, a route independent of the YAML."""
    lines = (PAPER_DIR / "multiloss-ensemble-cxr.md").read_text(encoding="utf-8").splitlines()
    for row in PAPER["tables"]["segmentation"]["rows"]:
        line = next(line for line in lines if re.sub(r"</?b>", "", line).split("\t")[0] == row["label"]
                    and r"\pm" in line)
        pairs = [(float(m), float(s)) for m, s in re.findall(r"(\d\.\d+)\s*\\pm\s*(\d\.\d+)", line)]
        assert pairs == [(row[k], row[f"{k}_std"]) for k in ("iou", "dice", "accuracy")], row["label"]


def test_tables_2_to_5_match_the_preprint():
    text = _collapsed((PAPER_DIR / "multiloss-ensemble-cxr-preprint.txt").read_text(encoding="utf-8"))
    table2 = _section(text, "Table 2. Classification performance", "The top-3 (i.e.")
    table3 = _section(text, "Table 3. Performance metrics", "It is observed from Table 3")
    top3, top5 = table3.split(" Top-5 ")
    table4 = _section(text, "Table 4. Classification performance", "Table 5 shows")
    table5 = _section(text, "Table 5. Comparison", "Disease ROI localization")
    tables = PAPER["tables"]
    for row in tables["classification"]["rows"]:
        assert _classification_rows(table2, row["label"]) == _expected(row), row["label"]
    for row in tables["prediction_ensembles"]["rows"]:
        assert _classification_rows(top3 if row["k"] == 3 else top5, row["label"]) == _expected(row), row
    for row in tables["model_ensembles"]["rows"]:
        assert _classification_rows(table4, row["label"]) == _expected(row), row["label"]
    for row in tables["literature"]["rows"]:
        # the preprint numbers its references differently: [7] -> [6], [33] -> [24]
        label = row["label"].replace("[7]", "[6]").replace("[33]", "[24]")
        assert _classification_rows(table5, label) == _expected(row), row["label"]
    weights = re.search(r"optimal weights \[([^\]]+)\] calculated using the SLSQP", text).group(1)
    assert [float(w) for w in weights.split(",")] == PAPER["tables"]["prediction_ensembles"]["slsqp_weights"][5]


def test_clean_copy_agrees_on_tables_4_and_5():
    lines = (PAPER_DIR / "multiloss-ensemble-cxr.md").read_text(encoding="utf-8").splitlines()
    top3 = next(line for line in lines if line.startswith("$Top-3$")).split("\t")[1:]
    assert [float(v) for v in top3] == [PAPER["tables"]["model_ensembles"]["rows"][0][k] for k in PAPER_KEYS]
    proposed = _classification_rows(_collapsed(next(line for line in lines if line.startswith("Proposed\t"))),
                                    "Proposed")
    assert proposed == _expected(PAPER["tables"]["literature"]["rows"][2])


def test_paper_intervals_are_wald_but_for_two_typos():
    checks = comparison.interval_checks(PAPER)
    assert len(checks) == 12 + 8 + 3 + 2
    wrong = checks.loc[~checks["agrees"], ["table", "label"]].values.tolist()
    assert wrong == [[2, "Calibrated-CCE (λ = 10)"], [3, "Top-5 Weighted averaging"]]
    typo = checks.set_index("label").loc["Calibrated-CCE (λ = 10)"]
    assert typo["wald_high"] == pytest.approx(0.9232, abs=1e-4)


def test_table1_iou_below_what_its_dice_allows():
    checks = comparison.iou_checks(PAPER).set_index("label")
    assert checks.index[~checks["consistent"]].tolist() == ["BCE", "Weighted BCE-Dice", "Focal"]
    assert checks.loc["Focal", "iou_lowest"] == pytest.approx(0.9189 / (2 - 0.9189))


def test_our_score_names_are_the_metric_modules_names():
    from multiloss.metrics.classification import classification_scores
    from multiloss.metrics.segmentation import SCORES
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.7 + 0.1
    assert set(comparison.CLASSIFICATION_SCORES) <= set(classification_scores(labels, probs))
    assert {ours for _, ours, _ in comparison.SEGMENTATION_COLUMNS} <= set(SCORES)


def test_load_paper_names_the_file_and_what_is_missing(tmp_path):
    bad = tmp_path / "paper.yaml"
    bad.write_text("test_images: 624\ntables: {segmentation: {columns: {}, rows: []}}\n")
    with pytest.raises(ValueError, match=r"paper\.yaml: missing classification"):
        comparison.load_paper(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        comparison.load_paper(tmp_path / "nowhere.yaml")


# ---------------------------------------------------------------------------------------------
# The builder on hand-made frames.

SCORE_DEFAULTS = {"accuracy": 0.9, "auroc_micro": 0.95, "auroc_macro": 0.94, "auprc_micro": 0.9,
                  "auprc_macro": 0.89, "precision": 0.9, "recall": 0.9, "f1": 0.9, "mcc": 0.85,
                  "ece": 0.05, "brier": 0.15, "nll": 0.3, "mcc_low": 0.8, "mcc_high": 0.9}


def classify_runs() -> pd.DataFrame:
    rows = [{"loss": "cce", "seed": seed, **SCORE_DEFAULTS, "mcc": mcc, "ci_method": "bootstrap"}
            for seed, mcc in ((2, 1.0), (0, 0.8), (1, 0.9))]
    rows.append({"loss": "cal_cce", "seed": 0, **SCORE_DEFAULTS, "mcc": 0.7, "mcc_low": 0.6, "mcc_high": 0.75,
                 "ci_method": "bootstrap"})
    return pd.DataFrame(rows)


def segmentation_scores() -> pd.DataFrame:
    names = ["v2 focal_tversky", "v1 bce", "AND top-2"]
    frame = pd.DataFrame({f"{score}_{part}": [0.9, 0.8, 0.95] if part == "mean" else [0.01, 0.02, 0.03]
                          for score in ("pixel_accuracy", "dice", "lung_iou", "mean_iou") for part in ("mean", "std")},
                         index=pd.Index(names, name="model"))
    return frame


def ensemble_scores() -> pd.DataFrame:
    rows = [
        {"name": "cce (v1)", "kind": "single", "k": 1, "members": "cce", "mcnemar_p": None, "bootstrap_p": None},
        {"name": "majority top-3", "kind": "majority", "k": 3, "members": "cce;cal_cce;kld",
         "mcnemar_p": 0.5, "bootstrap_p": 0.25},
        {"name": "model-level top-3", "kind": "model_level", "k": 3, "members": "cce;cal_cce;kld",
         "mcnemar_p": 0.04, "bootstrap_p": 0.03},
        {"name": "weighted model-level top-3+5", "kind": "model_level_weighted", "k": 5,
         "members": "model-level top-3;model-level top-5", "mcnemar_p": 0.01, "bootstrap_p": 0.02},
    ]
    mccs = [0.8, 0.82, 0.84, 0.97]
    return pd.DataFrame([{**SCORE_DEFAULTS, **row, "mcc": mcc} for row, mcc in zip(rows, mccs)])


def table_after(blocks: list, heading_start: str) -> pd.DataFrame:
    at = next(i for i, b in enumerate(blocks) if isinstance(b, comparison.Heading) and b.text.startswith(heading_start))
    return next(b.frame for b in blocks[at:] if isinstance(b, comparison.Table))


def test_aggregate_seeds_mean_std_and_seeds():
    table = comparison.aggregate_seeds(classify_runs())
    cce = table.loc["cce"]
    assert cce["mcc_mean"] == pytest.approx(0.9)
    assert cce["mcc_std"] == pytest.approx(0.1)        # sample std of 0.8, 0.9, 1.0
    assert (cce["runs"], cce["seeds"]) == (3, "0,1,2")
    assert math.isnan(cce["mcc_low"])                  # several seeds: the spread, not one run's interval
    single = table.loc["cal_cce"]
    assert math.isnan(single["mcc_std"]) and (single["mcc_low"], single["mcc_high"]) == (0.6, 0.75)
    with pytest.raises(ValueError, match="seed"):
        comparison.aggregate_seeds(classify_runs().drop(columns="seed"))


def test_report_places_ours_beside_the_paper_rows():
    ours = OurResults(dataset=SYNTHETIC, segmentation=segmentation_scores(), classification=classify_runs(),
                      ensembles=ensemble_scores(), select_on="val", segmentation_size="64",
                      classification_size="64", test_images="150", runs={"classify": ["a", "b"]})
    blocks = comparison.build_report(ours, PAPER)
    markdown = comparison.to_markdown(blocks)
    assert "SYNTHETIC PHANTOMS" in markdown and "selected on the val split" in markdown
    assert "segmentation 64 px, classification 64 px (paper: 512 px" in markdown

    seg = table_after(blocks, "1.")
    bce = seg.loc["BCE"]
    assert bce["Row"].tolist() == ["paper", "ours: v1 bce"]
    assert bce["Dice"].tolist() == ["0.9571 ± 0.0361", "0.8000 ± 0.0200"]
    assert seg.loc["Ensemble", "Row"].tolist() == ["paper", "ours: AND top-2"]
    assert seg.loc["Focal", "Row"].tolist() == ["paper", f"ours: {NOT_RUN}"]

    cls = table_after(blocks, "2.")
    cce = cls.loc["CCE"]
    assert cce["Row"].tolist() == ["paper", "ours: cce"]
    assert cce["MCC"].tolist() == ["0.8899", "0.9000 ± 0.1000"]
    assert cce["Runs (seeds)"].tolist() == ["1", "3 (0,1,2)"]
    assert cce["MCC 95% CI"].tolist() == ["(0.8653, 0.9145)", "—"]
    assert cce["ECE"].tolist() == ["n/a", "0.0500 ± 0.0000"]
    cal = cls.loc["Calibrated-CCE (λ = 10)"]
    assert cal["MCC 95% CI"].tolist() == ["(0.8760, 0.9132)†", "(0.6000, 0.7500)"]
    assert cls.loc["KL divergence", "Row"].tolist() == ["paper", f"ours: {NOT_RUN}"]

    prediction = table_after(blocks, "3.")
    voting = prediction.loc["Top-3 Max voting"]
    assert voting["Row"].tolist() == ["paper", "ours: majority top-3"]
    assert voting["Members"].tolist() == ["cal_cce, cce_entropy, cal_neg_entropy", "cce, cal_cce, kld"]
    assert voting["McNemar p"].tolist() == ["—", "0.5"]
    assert prediction.loc["Top-5 Stacking", "Row"].tolist() == ["paper", f"ours: {NOT_RUN}"]
    assert prediction.loc["Top-5 Weighted averaging", "MCC 95% CI"].iloc[0] == "(0.8791, 0.9157)†"
    assert "(cce (v1))" in markdown           # the single model the p-values refer to

    model = table_after(blocks, "4.")
    assert model.loc["Weighted averaging", "Row"].tolist() == ["paper", "ours: weighted model-level top-3+5"]
    assert model.loc["Weighted averaging", "MCC"].tolist() == ["0.9068", "0.9700"]
    assert model.loc["Weighted averaging", "MCC 95% CI"].iloc[0] == "(0.8839, 0.9297)"   # no † outside Table 3

    best = table_after(blocks, "5.")
    assert best.loc["Best of ours by test MCC", "Row"] == "ours: weighted model-level top-3+5"
    assert best.loc["Proposed", "MCC 95% CI"] == "(0.8839, 0.9297)"

    html = comparison.to_html(blocks)
    assert html.count("<table") == 5 and "SYNTHETIC PHANTOMS" in html and "0.9000 ± 0.1000" in html


def test_the_header_says_weights_and_stacking_are_fitted_on_validation_whatever_selects():
    for select_on, chosen in (("val", "val"), ("test", "TEST")):
        markdown = comparison.to_markdown(comparison.build_report(
            OurResults(dataset=SYNTHETIC, ensembles=ensemble_scores(), select_on=select_on), PAPER))
        assert f"Ensemble members and the best ensemble were selected on the {chosen} split" in markdown
        assert "SLSQP weights and stacking were fitted on the validation split" in markdown
        assert "weights and stacking were selected" not in markdown


def test_the_report_says_what_each_mcc_interval_is():
    runs = classify_runs()
    runs.loc[3, "ci_method"] = "wilson"
    markdown = comparison.to_markdown(comparison.build_report(
        OurResults(dataset=SYNTHETIC, classification=runs, ensembles=ensemble_scores(), select_on="val",
                   ensemble_interval=MCC_INTERVAL_LABELS["clopper-pearson"]), PAPER))
    assert f"bootstrap: {MCC_INTERVAL_LABELS['bootstrap']}; wilson: {MCC_INTERVAL_LABELS['wilson']}" in markdown
    assert f"MCC interval: {MCC_INTERVAL_LABELS['clopper-pearson']}" in markdown
    # a run's own tag says what its interval was
    tagged = classify_runs().assign(mcc_interval="as the run says")
    markdown = comparison.to_markdown(comparison.build_report(
        OurResults(dataset=SYNTHETIC, classification=tagged), PAPER))
    assert "bootstrap: as the run says" in markdown


def test_missing_stages_say_not_run():
    blocks = comparison.build_report(OurResults(dataset=UNKNOWN), PAPER)
    markdown = comparison.to_markdown(blocks)
    for section in ("segment_eval", "classify", "ensemble"):
        assert f"Ours: {NOT_RUN} (no finished {section}" in markdown
    assert "Ensembles: not run." in markdown and "do not read these numbers as a reproduction" in markdown
    assert table_after(blocks, "2.")["Row"].eq("paper").all()       # the paper's table still shows
    assert "Table 2, Calibrated-CCE (λ = 10): printed MCC interval (0.8760, 0.9132)" in markdown


# ---------------------------------------------------------------------------------------------
# The collector and the stage on a tiny store.

def _fake_run(stage: str, start: int, params=None, metrics=None, tags=None, artifacts=None, status="FINISHED"):
    client = mlflow.MlflowClient()
    experiment = store.ensure_experiment(comparison.SOURCES[stage])
    run_id = client.create_run(experiment, start_time=start, tags={"stage": stage, **(tags or {})}).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, float(v), start, 0) for k, v in (metrics or {}).items()],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()])
    for name, path in (artifacts or {}).items():
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    """One store for the collector tests (a new sqlite store costs seconds): the report written while
    it was still empty, then segment_eval, classify and ensemble runs as the stages log them, on
    cropped synthetic data."""
    home = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MULTILOSS_HOME", str(home / "home"))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        store.configure()
        empty_report = comparison.write_report(home / "empty").read_text(encoding="utf-8")
        ids, paths = _populate(home)
    return home, ids, paths, empty_report


def _populate(tmp_path: Path):
    synth = tmp_path / "synthetic"
    (synth / "chest_xray").mkdir(parents=True)
    (synth / "synth.json").write_text("{}")
    cropped = tmp_path / "cropped"
    cropped.mkdir()
    (cropped / "crop.json").write_text(json.dumps({"source": str(synth / "chest_xray")}))
    real = tmp_path / "real"
    real.mkdir()

    holdout = tmp_path / "holdout_scores.csv"
    segmentation_scores().to_csv(holdout)
    ensembles = tmp_path / "ensemble_scores.csv"
    ensemble_scores().to_csv(ensembles, index=False)

    def classify(start, loss, seed, mcc, data=cropped, fingerprint="f1", **kw):
        metrics = {f"test_{k}": v for k, v in {**SCORE_DEFAULTS, "mcc": mcc}.items()}
        return _fake_run("classify", start, params={"loss": loss, "seed": seed, "data": data, "img_size": 64,
                                                    "n_test": 150, "ci_method": "bootstrap", "loss_lam": 10.0},
                         metrics=metrics, tags={"data_fingerprint": fingerprint,
                                                names.MCC_INTERVAL_TAG: "tagged bootstrap"}, **kw)

    ids = {
        "other_data": classify(1000, "cce", 0, 0.1, data=real, fingerprint="f0"),
        "old_cce0": classify(2000, "cce", 0, 0.2),
        "cce0": classify(3000, "cce", 0, 0.8),
        "cce1": classify(4000, "cce", 1, 0.9),
        "failed": classify(4500, "cce", 2, 0.0, status="FAILED"),
        "cal": classify(5000, "cal_cce", 0, 0.7),
        "seg_old": _fake_run("segment_eval", 500, params={"img_size": 32, "data": real},
                             artifacts={"h": holdout}),
        "seg": _fake_run("segment_eval", 900, params={"img_size": 64, "data": synth / "MontgomerySet"},
                         artifacts={"h": holdout}),
        "ens": _fake_run("ensemble", 6000, params={"ci_method": "wald"},
                         tags={"select_on": "test", names.MCC_INTERVAL_TAG: "tagged wald"}, artifacts={"e": ensembles}),
    }
    return ids, {"synthetic": synth, "cropped": cropped, "real": real}


@pytest.fixture
def tiny_store(store_home, monkeypatch):
    home, ids, paths, _ = store_home
    monkeypatch.setenv("MULTILOSS_HOME", str(home / "home"))
    return ids, paths


def test_is_synthetic_follows_crops_back_to_the_synth_marker(tiny_store):
    _, paths = tiny_store
    assert comparison.is_synthetic(paths["cropped"]) is True
    assert comparison.is_synthetic(paths["synthetic"] / "chest_xray") is True
    assert comparison.is_synthetic(paths["real"]) is False
    assert comparison.is_synthetic(paths["real"] / "gone") is None
    assert comparison.infer_dataset([str(paths["real"])]) == REAL
    assert comparison.infer_dataset([str(paths["real"]), str(paths["cropped"])]) == SYNTHETIC
    assert comparison.infer_dataset([str(paths["real"] / "gone")]) == UNKNOWN


def test_collect_latest_runs(tiny_store):
    ids, _ = tiny_store
    ours = comparison.collect()
    assert ours.runs["segment_eval"] == [ids["seg"]] and ours.runs["ensemble"] == [ids["ens"]]
    # newest first; the older cce seed-0 run, the failed one and the other data set's run are left out
    assert ours.runs["classify"] == [ids["cal"], ids["cce1"], ids["cce0"]]
    assert ours.classification.set_index("run_id").loc[ids["cce0"], "mcc"] == 0.8
    assert ours.classification["variant"].tolist()[0] == "cal_cce (lam=10.0)"
    assert (ours.dataset, ours.select_on, ours.segmentation_size) == (SYNTHETIC, "test", "64")
    assert (ours.classification_size, ours.test_images) == ("64", "150")
    assert ours.segmentation.index.tolist() == ["v2 focal_tversky", "v1 bce", "AND top-2"]
    assert ours.ensembles["kind"].tolist()[1] == "majority"
    assert ours.ensemble_interval == "tagged wald" and set(ours.classification["mcc_interval"]) == {"tagged bootstrap"}


def test_collect_given_runs_and_bad_ids(tiny_store):
    ids, _ = tiny_store
    ours = comparison.collect(segment_eval_run=ids["seg_old"], classify_runs=[ids["other_data"]],
                              dataset_label="real")
    assert ours.runs["classify"] == [ids["other_data"]] and ours.segmentation_size == "32"
    assert ours.dataset == REAL and ours.runs["ensemble"] == [ids["ens"]]
    with pytest.raises(ValueError, match=f"classify_runs: run {ids['seg']} is a segment_eval run, not a classify run"):
        comparison.collect(classify_runs=[ids["seg"]])
    with pytest.raises(ValueError, match="ensemble_run: no run 'nope'"):
        comparison.collect(ensemble_run="nope")
    with pytest.raises(ValueError, match="FAILED"):
        comparison.collect(classify_runs=[ids["failed"]])
    with pytest.raises(ValueError, match="dataset_label"):
        comparison.collect(dataset_label="phantoms")


def test_report_on_an_empty_store_says_nothing_ran(store_home):
    home, _, _, markdown = store_home
    assert (home / "empty" / "comparison.html").is_file()
    assert markdown.count(f"Ours: {NOT_RUN}") == 5 and UNKNOWN in markdown


def test_report_stage_logs_and_prints(tiny_store, capsys):
    from multiloss.stages import report
    ids, _ = tiny_store
    report.main(["--classify-runs", f"{ids['cce0']}, {ids['cce1']}"])
    printed = capsys.readouterr().out
    assert "SYNTHETIC PHANTOMS" in printed and "0.8500 ± 0.0707" in printed   # cce over seeds 0 and 1
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("ensembles").experiment_id],
                             filter_string="tags.stage = 'report'")[0]
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == SYNTHETIC
    assert run.data.params["classify_runs"] == f"{ids['cce1']},{ids['cce0']}"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["comparison.html", "comparison.md"]
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison.md")
    assert Path(logged).read_text(encoding="utf-8").strip() == printed.strip()


def test_report_stage_names_a_bad_run_id(tiny_store):
    from multiloss.stages import report
    with pytest.raises(SystemExit, match="report: segment_eval_run: no run 'missing'"):
        report.main(["--segment-eval-run", "missing"])


# ---------------------------------------------------------------------------------------------
# Degenerate models: every classifier row of one is marked, with its reason; so, separately, is a
# model whose test predictions are all one class.

DEGENERATE_REASON = "predicts bacterial for all 40 validation images"
TEST_REASON = "predicts normal for all 150 test images"


def flagged_runs() -> pd.DataFrame:
    runs = classify_runs().assign(degenerate=None, degenerate_checked=True, test_one_class=None)
    runs.loc[1, "degenerate"] = DEGENERATE_REASON            # cce, seed 0 of 0, 1, 2
    runs.loc[3, "test_one_class"] = TEST_REASON              # cal_cce, its only run
    return runs


def test_the_report_marks_degenerate_and_one_class_on_test_rows_with_their_reasons():
    blocks = comparison.build_report(OurResults(dataset=SYNTHETIC, classification=flagged_runs()), PAPER)
    markdown = comparison.to_markdown(blocks)
    table = table_after(blocks, "2.")
    cce = table.loc["CCE"].set_index("Row")
    assert cce.loc["ours: cce", "Flags"] == f"{comparison.DEGENERATE_MARK} [1], 1 of 3 seeds"
    assert cce.loc["paper", "Flags"] == "—"
    cal = table.loc["Calibrated-CCE (λ = 10)"].set_index("Row")
    assert cal.loc["ours: cal_cce", "Flags"] == f"{comparison.TEST_ONE_CLASS_MARK} [2]"
    assert f"- [1] cce: degenerate on validation, so left out of promote and ensemble pools unless " \
           f"include_degenerate=true: seed 0: {DEGENERATE_REASON}." in markdown
    assert "- [2] cal_cce: all test predictions one class (reported only: test never decides" in markdown
    assert f"seed 0: {TEST_REASON}." in markdown
    assert "| ours: cce | " in markdown and "⚠ degenerate [1], 1 of 3 seeds |" in markdown
    # the best of ours by test MCC is that degenerate variant here: its row says so too
    best = table_after(blocks, "5.").loc["Best of ours by test MCC"]
    assert (best["Row"], best["Flags"]) == ("ours: cce", f"{comparison.DEGENERATE_MARK} [1], 1 of 3 seeds")
    assert markdown.count(f"seed 0: {DEGENERATE_REASON}.") == 2
    html = comparison.to_html(blocks)
    assert "⚠ degenerate [1], 1 of 3 seeds" in html and DEGENERATE_REASON in html


def test_rows_without_a_flag_carry_no_marker():
    blocks = comparison.build_report(OurResults(dataset=SYNTHETIC, classification=flagged_runs().assign(
        degenerate=None, test_one_class=None)), PAPER)
    table = table_after(blocks, "2.")
    assert table["Flags"].eq("—").all()
    markdown = comparison.to_markdown(blocks)
    assert comparison.DEGENERATE_MARK not in markdown.split("reasons under the table.")[1]
    assert "not known" not in markdown


def test_collect_reads_the_degenerate_tag_and_the_test_predictions(tmp_path):
    """On a store of its own: the degenerate tag (with its reason), test scores of one class, a run
    from before the tag whose logged validation predictions are one class, and one with nothing."""
    from multiloss.classification.scoring import predictions_frame

    store.configure()
    data = tmp_path / "real"
    data.mkdir()
    one_class = tmp_path / "val_predictions.csv"
    predictions_frame([f"img{k}.png" for k in range(7)], np.arange(7) % 3,
                      np.tile([0.1, 0.2, 0.7], (7, 1))).to_csv(one_class, index=False)
    healthy_test = {"test_predicted_normal": 50, "test_predicted_bacterial": 60, "test_predicted_viral": 40,
                    "test_mean_confidence": 0.8}
    one_class_test = {"test_predicted_normal": 150, "test_predicted_bacterial": 0, "test_predicted_viral": 0,
                      "test_mean_confidence": 0.9}

    def classify(start, loss, *, tags=None, metrics=None, artifacts=None):
        return _fake_run("classify", start, params={"loss": loss, "seed": 0, "data": data, "img_size": 64,
                                                    "n_test": 150, "ci_method": "wald"},
                         metrics={**{f"test_{k}": v for k, v in SCORE_DEFAULTS.items()}, **(metrics or {})},
                         tags={names.DATA_FINGERPRINT_TAG: "f1", **(tags or {})}, artifacts=artifacts)

    ids = {
        "flagged": classify(1000, "cce", metrics=healthy_test,
                            tags={names.DEGENERATE_TAG: "true", names.DEGENERATE_REASON_TAG: DEGENERATE_REASON}),
        "test_one_class": classify(2000, "cal_cce", metrics=one_class_test, tags={names.DEGENERATE_TAG: "false"}),
        "old_one_class": classify(3000, "kld", artifacts={"v": one_class}),
        "old_unknown": classify(4000, "focal"),
    }
    ours = comparison.collect()
    found = ours.classification.set_index("run_id")
    assert found.loc[ids["flagged"], "degenerate"] == DEGENERATE_REASON
    assert pd.isna(found.loc[ids["flagged"], "test_one_class"])          # test scores of three classes
    assert pd.isna(found.loc[ids["test_one_class"], "degenerate"])        # one class on test flags nothing
    assert found.loc[ids["test_one_class"], "test_one_class"] == TEST_REASON
    assert found.loc[ids["old_one_class"], "degenerate"] == "predicts viral for all 7 validation images"
    assert pd.isna(found.loc[ids["old_unknown"], "degenerate"])
    assert not found.loc[ids["old_unknown"], "degenerate_checked"]

    markdown = comparison.to_markdown(comparison.build_report(ours, PAPER))
    table = table_after(comparison.build_report(ours, PAPER), "2.")
    marks = dict(zip(table["Row"], table["Flags"]))          # notes numbered in the table's (the paper's) order
    assert marks["ours: cce"] == f"{comparison.DEGENERATE_MARK} [1]"
    assert marks["ours: kld"] == f"{comparison.DEGENERATE_MARK} [2]"
    assert marks["ours: cal_cce"] == f"{comparison.TEST_ONE_CLASS_MARK} [3]" and marks["ours: focal"] == "—"
    assert f"seed 0: {DEGENERATE_REASON}." in markdown and f"seed 0: {TEST_REASON}." in markdown
    assert "1 classify run(s) carry no degenerate tag and no validation predictions" in markdown


def _ablation_run(fingerprint: str, tmp_path: Path) -> str:
    from multiloss.ablation.report import AblationTables
    from multiloss.tracking import store

    roles = pd.DataFrame([{"loss": "cal_cce", "role": "published", "trained_as": "cal_cce", "variant": "published",
                           "seeds": 1, "degenerate": 0, **{f"{s}_{k}": 0.5 for s in ("mcc", "ece", "nll", "brier")
                                                            for k in ("mean", "std")}}]).set_index(["loss", "role"])
    tables = AblationTables([f"Data: {fingerprint}"], roles, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), [])
    folder = tmp_path / f"ablation-{fingerprint}"
    folder.mkdir()
    tables.save(folder)
    with mlflow.start_run(experiment_id=store.ensure_experiment(names.ABLATION_EXPERIMENT)) as run:
        mlflow.set_tags({names.STAGE_TAG: "ablation", names.DATA_FINGERPRINT_TAG: fingerprint})
        mlflow.log_artifacts(str(folder))
    return run.info.run_id


def test_the_report_ends_with_the_ablation_of_its_classifiers_data(tiny_store, tmp_path, capsys):
    from multiloss.stages import report
    ids, _ = tiny_store
    _ablation_run("f1", tmp_path)                                 # the classify runs' data
    _ablation_run("f0", tmp_path)                                 # newer, other data: not this report's
    report.main(["--classify-runs", f"{ids['cce0']},{ids['cce1']}"])
    printed = capsys.readouterr().out
    assert "## What the corrections change" in printed and "- Data: f1" in printed and "Data: f0" not in printed
    report.main(["--classify-runs", ids["cce0"], "--ablation-run", "none"])
    assert "What the corrections change" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match=f"parameter ablation_run: run {ids['cce0']} is not an ablation run"):
        report.main(["--ablation-run", ids["cce0"]])


def test_published_rows_are_named_and_never_pooled_with_corrected_seeds():
    store.configure()
    metrics = {f"test_{k}": v for k, v in SCORE_DEFAULTS.items()}
    params = {"loss": "cal_cce", "seed": 0, "loss_lam": 10.0, "img_size": 64, "n_test": 150}
    corrected = _fake_run("classify", 1000, params=params, metrics=metrics)
    published = _fake_run("classify", 2000, params=params, metrics=metrics,
                          tags={names.VARIANT_TAG: "published", names.FLAWS_TAG: "calibration_no_gradient"})
    rows = comparison.collect(classify_runs=[corrected, published]).classification.set_index("run_id")
    assert rows.loc[corrected, "variant"] == "cal_cce (lam=10.0)"
    assert rows.loc[published, "variant"] == "cal_cce (lam=10.0), published: calibration_no_gradient"
    assert len(comparison.aggregate_seeds(rows.reset_index())) == 2


@pytest.mark.parametrize("flaws, says", [
    ((), "SLSQP weights and stacking were fitted on the validation split."),
    (("head_dense_only",), "SLSQP weights and stacking were fitted on the validation split."),
    (("test_selection",), "SLSQP weights were fitted on the TEST split, stacking on the validation split."),
    (("stacking_on_train",), "SLSQP weights were fitted on the validation split, stacking on the members' "
                             "predictions on their own training images."),
])
def test_the_report_says_where_the_combiners_were_fitted(flaws, says):
    assert comparison.fitted_on(flaws).endswith(says)
