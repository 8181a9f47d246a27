"""segment ×2 → segment_eval → crop on tiny synthetic data, through the stage modules."""

import mlflow
import pandas as pd
import pytest

from multiloss import names
from multiloss.data.imageio import read_gray
from multiloss.data.readers import class_counts, read_kermany
from multiloss.data.synthetic import write_synthetic
from multiloss.stages import crop, segment, segment_eval
from multiloss.tracking import registry, store


@pytest.mark.slow
def test_segment_eval_and_crop_chain(tmp_path):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=16, n_cls=4, size=64, seed=0)
    for loss, extra in (("bce", []), ("tversky", ["--alpha", "0.6"])):
        segment.main(["--loss", loss, "--data", str(data / "lungs"), "--img-size", "32", "--epochs", "1",
                      "--batch-size", "8", "--patience", "1", *extra])
    client = mlflow.MlflowClient()
    found = registry.versions(names.SEGMENTATION_MODEL)
    assert [v.tags["loss"] for v in found] == ["bce", "tversky"]
    assert found[1].tags["loss_alpha"] == "0.6" and found[1].tags["loss_beta"] == "0.3"
    assert {"data_fingerprint", "img_size", "val_loss", "val_dice"} <= set(found[0].tags)
    assert found[0].tags["precision"] == "float32" and found[0].tags["jit_compile"] == "false"
    run = client.get_run(found[0].run_id)
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) == 1
    assert "val_predictions.png" in {a.path for a in client.list_artifacts(run.info.run_id)}

    segment_eval.main(["--data", str(data / "MontgomerySet"), "--top-k", "2", "--img-size", "32"])
    found = registry.versions(names.SEGMENTATION_MODEL)
    ranks = {v.version: int(v.tags["holdout_rank"]) for v in found}
    assert sorted(ranks.values()) == [1, 2]
    champion = client.get_model_version_by_alias(names.SEGMENTATION_MODEL, "champion")
    assert ranks[champion.version] == 1
    assert client.get_model_version_by_alias(names.SEGMENTATION_MODEL, "top2").version != champion.version
    eval_run = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'segment_eval'",
                                  output_format="list")[0]
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=eval_run.info.run_id,
                                                            artifact_path="holdout_scores.csv"), index_col=0)
    assert list(table.index)[-1] == "AND top-2" and len(table) == 3
    assert float(champion.tags["holdout_dice"]) == pytest.approx(table["dice_mean"].iloc[0], abs=1e-6)
    assert {"holdout_scores.md", "holdout_polar.png"} <= {a.path for a in client.list_artifacts(eval_run.info.run_id)}

    out = tmp_path / "cropped"
    crop.main(["--data", str(data / "chest_xray"), "--out", str(out), "--top-k", "2", "--img-size", "48"])
    assert class_counts(read_kermany(out)).equals(class_counts(read_kermany(data)))
    crop_run = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'crop'",
                                  output_format="list")[0]
    assert crop_run.data.metrics["n_images"] == 12
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.jpeg"))
    crop.main(["--data", str(data / "chest_xray"), "--out", str(out), "--top-k", "2", "--img-size", "48"])
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.jpeg")) == before      # reused, not rewritten
    crop.main(["--data", str(data / "chest_xray"), "--out", str(out), "--top-k", "2", "--img-size", "64"])
    assert {read_gray(p).shape for p in read_kermany(out)["path"]} == {(64, 64)}      # replaced whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cropped")]      # old copy removed
    assert crop_run.data.params["members"] == f"{champion.version},{client.get_model_version_by_alias(names.SEGMENTATION_MODEL, 'top2').version}"


def test_crop_without_evaluated_models_says_what_to_run(tmp_path):
    write_synthetic(tmp_path / "d", n_seg=1, n_cls=2, size=32, seed=0)
    store.configure()
    with pytest.raises(SystemExit, match="no alias top1; run segment_eval"):
        crop.main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "c")])
