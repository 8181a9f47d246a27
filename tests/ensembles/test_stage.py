"""The ensemble stage end to end: registry → every ensemble → table → registered end-to-end pyfunc,
which predicts raw images in a fresh process through `mlflow models predict`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.utils.environment import _PythonEnv

from multiloss import names, variants
from multiloss.classification.scoring import PROBABILITY_COLUMNS, read_predictions
from multiloss.data.synthetic import write_synthetic
from multiloss.ensembles import build
from multiloss.stages import classify, crop, ensemble
from multiloss.tracking import registry, store


@pytest.mark.slow
def test_ensemble_stage_registers_an_end_to_end_model(tmp_path, monkeypatch, register_unet):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=20, size=48, seed=3)
    register_unet({"loss": "bce", "img_size": 32}, aliases=[names.top_alias(1), names.CHAMPION], run_name="unet")
    cropped = tmp_path / "cropped"
    crop.main(["--data", str(data / "chest_xray"), "--out", str(cropped), "--top-k", "1", "--img-size", "48"])
    for seed, loss in enumerate(("cce", "focal", "kld")):
        classify.main(["--loss", loss, "--data", str(cropped), "--img-size", "32", "--epochs", "1",
                       "--batch-size", "8", "--seed", str(seed), "--ci-method", "wald"])

    seen_by_stacking = []
    real_fit = build.fit_stacking

    def spy(member_probs, labels, **kwargs):
        seen_by_stacking.append(np.array(member_probs))
        return real_fit(member_probs, labels, **kwargs)

    monkeypatch.setattr(build, "fit_stacking", spy)
    # one-epoch classifiers are flagged degenerate: the pool takes them only when asked
    common = ["--data", str(cropped), "--top-k", "2,3", "--epochs", "1", "--batch-size", "8", "--ci-method", "wald",
              "--include-degenerate", "true"]
    ensemble.main(common)

    client = mlflow.MlflowClient()
    run = mlflow.search_runs(experiment_names=["ensembles"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.tags["select_on"] == "val"
    assert run.data.tags[names.VARIANT_TAG] == "corrected" and run.data.tags[names.FLAWS_TAG] == "none"
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                            artifact_path="ensemble_scores.csv"), index_col="name")
    assert table["kind"].value_counts().to_dict() == {"single": 3, "majority": 2, "mean": 2, "weighted": 2,
                                                      "stacking": 2, "model_level": 2, "model_level_weighted": 1}
    assert (table["mcc_low"] <= table["mcc"] + 1e-12).all() and (table["mcc"] <= table["mcc_high"] + 1e-12).all()
    singles = table[table.kind == "single"]
    assert singles["mcnemar_p"].isna().sum() == 1                   # the reference: the best single model
    others = table[table["mcnemar_p"].notna()]
    assert others["mcnemar_p"].between(0, 1).all() and others["bootstrap_p"].between(0, 1).all()
    # metric names are the same in every run: the members' versions are params, never in a name
    metrics = set(run.data.metrics)
    assert not [m for m in metrics if re.search(r"_v\d|top_\d", m)]
    for version in run.data.params["members"].split(","):
        loss = client.get_model_version(names.CLASSIFIER_MODEL, version).tags[names.LOSS_TAG]
        assert run.data.params[f"member.{loss}"] == version and f"member.{loss}.mcc" in metrics
    for k in (2, 3):
        assert {f"top{k}.{kind}.mcc" for kind in ("majority", "mean", "weighted", "stacking", "model_level")} <= metrics
        assert f"{names.EPOCH_CURVE_PREFIX}top{k}.model_level.loss" in metrics
    assert run.data.metrics["top2_3.model_level_weighted.mcc"] == pytest.approx(
        table.loc["weighted model-level top-2+3", "mcc"], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ensemble_scores.md", "ensemble_polar.png", "test_confusion.png", "test_roc_pr.png",
            "best_test_predictions.csv"} <= artifacts

    # stacking was only ever fitted on validation images (whole, or folds of them), never on test ones
    member_runs = [client.get_model_version(names.CLASSIFIER_MODEL, v).run_id
                   for v in run.data.params["members"].split(",")]
    val = build.member_predictions(member_runs, "val")
    test = build.member_predictions(member_runs, "test")
    val_rows = {tuple(np.round(val.probs[:, i].ravel(), 6)) for i in range(val.probs.shape[1])}
    test_rows = {tuple(np.round(test.probs[:, i].ravel(), 6)) for i in range(test.probs.shape[1])}
    assert seen_by_stacking and len(seen_by_stacking) == 2 * (1 + min(5, len(val.paths)))
    for probs in seen_by_stacking:
        k = probs.shape[0]
        rows = {tuple(np.round(probs[:, i].ravel(), 6)) for i in range(probs.shape[1])}
        assert rows <= {r[: 3 * k] for r in val_rows}
        assert not rows & {r[: 3 * k] for r in test_rows}

    champion = client.get_model_version_by_alias(names.ENSEMBLE_MODEL, "champion")
    assert champion.tags["ensemble"] == run.data.tags["best_ensemble"]
    # `mlflow models serve --env-manager uv` builds the served model's environment from our pins
    served = Path(mlflow.artifacts.download_artifacts(champion.source))
    assert _PythonEnv.from_yaml(served / "python_env.yaml").dependencies == ["-r requirements.txt"]
    pins = (served / "requirements.txt").read_text().split()
    assert pins[:-1] == registry.pip_requirements()
    # and our code, as a wheel among the model's artifacts (the line is relative to the model folder)
    assert pins[-1].startswith("artifacts/multiloss-wheel-") and (served / pins[-1]).is_file()
    assert champion.tags[names.VARIANT_TAG] == "corrected" and champion.tags[names.FLAWS_TAG] == "none"
    # scores are stored in full on the version, the run's metrics read back exactly: rounding is display only
    for key in ("val_mcc", "test_mcc", "test_ece"):
        assert float(champion.tags[key]) == run.data.metrics[key], key
    top1 = client.get_model_version_by_alias(names.CLASSIFIER_MODEL, "top1")
    assert str(client.get_model_version_by_alias(names.CLASSIFIER_MODEL, "champion").version) == str(top1.version)

    # a fresh process serves raw (uncropped) images of a folder and matches the stage's test predictions
    frame, _, expected = read_predictions(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="best_test_predictions.csv"))
    source = Path(json.loads((cropped / "crop.json").read_text())["source"])
    raw = {str(source / Path(p).relative_to(cropped / "chest_xray")): i for i, p in enumerate(frame["path"])}
    folders = sorted({str(Path(p).parent) for p in raw})
    request = tmp_path / "request.csv"
    pd.DataFrame({"path": folders}).to_csv(request, index=False)
    out = tmp_path / "predictions.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri()}
    result = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m",
                             f"models:/{names.ENSEMBLE_MODEL}@champion", "-i", str(request), "-t", "csv",
                             "-o", str(out), "--env-manager", "local"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served = pd.DataFrame(json.loads(out.read_text())["predictions"])
    assert set(served["path"]) == set(raw)
    order = [raw[p] for p in served["path"]]
    np.testing.assert_allclose(served[PROBABILITY_COLUMNS].to_numpy(float), expected[order], atol=1e-4)
    # trained on phantoms: every answer, the version's tags and card, and the run's description say so
    assert served["synthetic"].tolist() == [True] * len(served)
    champion = client.get_model_version_by_alias(names.ENSEMBLE_MODEL, "champion")
    assert champion.tags[names.SYNTHETIC_TAG] == "true"
    assert champion.description.startswith("**Trained on synthetic phantoms**") and "test: MCC" in champion.description
    assert client.get_registered_model(names.ENSEMBLE_MODEL).description
    assert "chosen on val" in client.get_run(champion.run_id).data.tags[names.NOTE_TAG]

    # the published variant: stacking fitted once per K on the members' training predictions (no
    # folds, neither validation nor test images), weights on test, and only test_selected moves
    seen_by_stacking.clear()
    ensemble.main([*common, "--variant", "published"])
    published = mlflow.search_runs(experiment_names=["ensembles"], output_format="list",
                                   order_by=["attributes.start_time DESC"])[0]
    assert published.info.run_name == "ensemble-top2,3-published" and published.info.status == "FINISHED"
    assert published.data.tags["select_on"] == "test" and published.data.tags[names.TEST_SELECTED_TAG] == "true"
    assert published.data.params["selection_key"] == "test_mcc"
    assert [p.shape[0] for p in seen_by_stacking] == [2, 3]
    for probs in seen_by_stacking:
        k = probs.shape[0]
        rows = {tuple(np.round(probs[:, i].ravel(), 6)) for i in range(probs.shape[1])}
        assert not rows & {r[: 3 * k] for r in val_rows | test_rows}
    selected = client.get_model_version_by_alias(names.ENSEMBLE_MODEL, names.TEST_SELECTED)
    assert selected.tags[names.VARIANT_TAG] == "published" and selected.tags["select_on"] == "test"
    assert selected.tags[names.FLAWS_TAG] == ",".join(f.name for f in variants.FLAWS)
    assert client.get_model_version_by_alias(names.ENSEMBLE_MODEL, "champion").version == champion.version
    weights = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=published.info.run_id,
                                                                  artifact_path="ensembles.json")).read_text())
    assert {e["fitted_on"] for e in weights.values() if e["kind"] in ("weighted", "model_level_weighted")} == {"test"}
    assert {e["fitted_on"] for e in weights.values() if e["kind"] == "stacking"} == {"train"}
