"""The classifier on the U-Net encoder, and the classify stage end to end on tiny synthetic data."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tf_keras

from multiloss import cpu_threads, names
from multiloss.classification.scoring import PROBABILITY_COLUMNS
from multiloss.classification.train import (
    LOSS_PARAMETERS,
    ClassifierConfig,
    balanced_class_weights,
)
from multiloss.data.synthetic import write_synthetic
from multiloss.metrics.classification import MCC_INTERVAL_LABELS
from multiloss.models.classifier import CUT_LAYER, build_classifier, encoder_from_unet
from multiloss.models.unet import build_unet
from multiloss.stages import classify
from multiloss.tracking import registry, store

REPO = Path(__file__).resolve().parents[2]


def test_classifier_starts_from_the_unet_encoder_weights():
    tf_keras.utils.set_random_seed(1)
    unet = build_unet()
    model = build_classifier(unet)
    for name in ("stem_conv", "block3a_expand_conv", "block5c_project_conv"):
        for ours, theirs in zip(model.get_layer(name).get_weights(), unet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    assert [layer.name for layer in model.layers[-4:]] == ["cls_zeropad", "cls_conv", "cls_gap", "cls_softmax"]
    assert model.get_layer("cls_conv").filters == 512 and model.get_layer("cls_conv").kernel_size == (3, 3)
    assert encoder_from_unet(unet).output.name.startswith(CUT_LAYER)
    assert model.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0).shape == (2, 3)
    assert not any(layer.name.startswith("decoder") for layer in model.layers)


def test_cut_layer_missing_is_named():
    plain = tf_keras.Sequential([tf_keras.Input((8,)), tf_keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no layer 'block5c_add'"):
        encoder_from_unet(plain)


@pytest.mark.slow
def test_classify_stage_logs_scores_registers_and_reloads_in_a_fresh_process(tmp_path, register_unet):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=15, size=48, seed=2)
    unet_version = register_unet({"loss": "bce"}, aliases=[names.CHAMPION], run_name="encoder")

    classify.main(["--loss", "cal_neg_entropy", "--beta", "0.01", "--data", str(data / "chest_xray"),
                   "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--class-weights", "balanced",
                   "--ci-method", "wald"])

    version = registry.versions(names.CLASSIFIER_MODEL)[-1]
    assert version.tags["loss"] == "cal_neg_entropy" and version.tags["loss_beta"] == "0.01"
    run_tags = mlflow.MlflowClient().get_run(version.run_id).data.tags
    assert run_tags[names.MCC_INTERVAL_TAG] == MCC_INTERVAL_LABELS["wald"]
    assert run_tags[names.PID_TAG] == str(os.getpid())
    assert version.tags["loss_lam"] == "10.0" and version.tags["encoder_version"] == str(unet_version.version)
    run = mlflow.MlflowClient().get_run(version.run_id)
    assert run.data.params["encoder"] == f"models:/{names.SEGMENTATION_MODEL}/{unet_version.version}"   # pinned once
    assert run.data.params["precision"] == "float32" and run.data.params["jit_compile"] == "false"
    assert run.data.params["intra_op_threads"] == str(cpu_threads.effective())        # it changes the numbers
    assert version.tags["precision"] == "float32" and version.tags["jit_compile"] == "false"
    metrics = run.data.metrics
    for split in ("val", "test"):
        for key in ("accuracy", "auroc_micro", "auroc_macro", "auprc_micro", "auprc_macro", "precision", "recall",
                    "f1", "mcc", "mcc_low", "mcc_high", "ece", "brier", "nll"):
            assert f"{split}_{key}" in metrics, f"{split}_{key}"
        assert metrics[f"{split}_mcc_low"] <= metrics[f"{split}_mcc"] <= metrics[f"{split}_mcc_high"]
    assert float(version.tags["test_mcc"]) == pytest.approx(metrics["test_mcc"], abs=1e-6)
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "epoch/val_loss")) == 2
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"val_predictions.csv", "test_predictions.csv", "test_confusion.png", "test_roc_pr.png",
            "test_reliability.png", "validation_split.csv"} <= artifacts

    # What MLflow shows a reader: the three splits as run inputs (digest = the data fingerprint), the
    # run's description, the version's signature and card, the model's description, the synthetic flag.
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    assert {d.digest for d in inputs.values()} == {run.data.tags[names.DATA_FINGERPRINT_TAG][:36]}
    assert inputs["train"].source and "chest_xray" in inputs["train"].source
    assert run.data.tags[names.NOTE_TAG].startswith("cal_neg_entropy (corrected) at 32 px")
    assert run.data.tags[names.SYNTHETIC_TAG] == "true" and version.tags[names.SYNTHETIC_TAG] == "true"
    signature = mlflow.models.get_model_info(version.source).signature
    assert signature.inputs.inputs[0].shape == (-1, 32, 32, 3) and signature.outputs.inputs[0].shape == (-1, 3)
    assert version.description.startswith("**Trained on synthetic phantoms**")
    assert "test: MCC" in version.description and "wald" in version.description.lower()
    assert mlflow.MlflowClient().get_registered_model(names.CLASSIFIER_MODEL).description

    test_csv = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test_predictions.csv")
    code = textwrap.dedent(f"""
        import numpy as np, pandas as pd, mlflow
        import multiloss
        from multiloss.tracking import store
        from multiloss.data.datasets import image_dataset
        store.configure()
        model = mlflow.tensorflow.load_model("models:/cxr-classifier/{version.version}")
        frame = pd.read_csv({test_csv!r})
        probs = model.predict(image_dataset(frame["path"], img_size=32, batch_size=8), verbose=0)
        np.save({str(tmp_path / 'probs.npy')!r}, probs)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = pd.read_csv(test_csv)[PROBABILITY_COLUMNS].to_numpy()
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), expected, atol=1e-5)


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]))
    assert weights == pytest.approx({0: 6 / 9, 1: 2.0, 2: 1.0})


def test_a_config_from_the_declared_defaults_is_the_one_the_classify_stage_builds():
    def stage_config(*argv):
        args = classify.parse_args(["--data", "d", *argv])
        return ClassifierConfig(loss=args.loss, loss_params={k: getattr(args, k) for k in LOSS_PARAMETERS},
                                **classify.training_arguments(args))

    assert ClassifierConfig.from_defaults("cce", "d") == stage_config("--loss", "cce")
    tuned = stage_config("--loss", "focal", "--epochs", "3", "--gamma", "2")
    assert ClassifierConfig.from_defaults("focal", "d", epochs=3, loss_params=tuned.loss_params) == tuned
    assert set(LOSS_PARAMETERS) == {"gamma", "sigma", "lam", "beta"}


def test_an_image_size_the_encoder_cannot_take_is_refused_before_any_run(tmp_path, capsys):
    from multiloss.stages import sweep

    data = tmp_path / "data"
    write_synthetic(data, n_seg=1, n_cls=6, size=32, seed=0)
    for stage in (classify, sweep):
        with pytest.raises(SystemExit):
            stage.main(["--loss", "cal_cce", "--data", str(data / "chest_xray"), "--img-size", "100"])
        assert "parameter img_size must be a multiple of 32" in capsys.readouterr().err
    with pytest.raises(ValueError, match="parameter img_size must be a multiple of 32"):
        ClassifierConfig.from_defaults("cce", str(data), img_size=100)
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert registry.versions(names.CLASSIFIER_MODEL) == []


def test_a_missing_data_folder_is_named_before_any_run(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit, match=rf"classify: parameter data: {missing}: dataset folder not found"):
        classify.main(["--loss", "cce", "--data", str(tmp_path / "nowhere")])
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


@pytest.mark.slow
def test_mlflow_run_with_a_mistyped_data_path_ends_its_run_failed_not_running(tmp_path):
    """The launcher creates the run before the stage starts: the stage must be the one to refuse
    the path (MLflow's own check of a ``path`` parameter fails the launcher and leaves the run RUNNING)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=store.tracking_uri())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    missing = tmp_path / "nowhere"
    subprocess.run([sys.executable, "-m", "multiloss.tracking", "init"], env=env, check=True, cwd=REPO)
    for entry in ("classify", "sweep"):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mlflow"), "run", ".", "-e", entry, "--env-manager", "local",
             "--experiment-name", "classification", "-P", f"data={missing}", "-P", "loss=cal_cce"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        assert f"parameter data: {missing}: dataset folder not found" in result.stderr, result.stderr[-3000:]
    store.configure()
    runs = mlflow.search_runs(experiment_names=["classification"], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}


@pytest.mark.slow
def test_a_classify_run_whose_figures_cannot_be_logged_fails_and_keeps_no_version(tmp_path, register_unet,
                                                                                   monkeypatch):
    """The figures are drawn while the model is registered; if they cannot be logged, the run ends
    FAILED and the version it registered goes again: a version only of a run that is whole."""
    from multiloss.classification import train

    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=15, size=48, seed=2)
    register_unet({"loss": "bce"}, aliases=[names.CHAMPION], run_name="encoder")

    def no_room(folder, labels, probs, title):
        raise OSError("no space left on device")

    monkeypatch.setattr(train, "_draw_split_figures", no_room)
    with pytest.raises(RuntimeError, match="could not be logged: no space left on device"):
        classify.main(["--loss", "cce", "--data", str(data / "chest_xray"), "--img-size", "32", "--epochs", "1",
                       "--batch-size", "8", "--ci-method", "wald"])
    assert registry.versions(names.CLASSIFIER_MODEL) == []
    experiment = mlflow.get_experiment_by_name(names.CLASSIFICATION_EXPERIMENT)
    [run] = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert run.info.status == "FAILED"
