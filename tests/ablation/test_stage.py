"""The ablation stage end to end on tiny data: every training, both ensembles and a sweep as child
runs of one parent, the report logged on it, and a rerun that reuses every step."""

import mlflow
import pytest
import yaml

from multiloss import names
from multiloss.data.synthetic import write_synthetic
from multiloss.stages import ablation, crop


@pytest.mark.slow
def test_the_ablation_trains_both_variants_and_the_base_and_reports_them(tmp_path, register_unet, capsys):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=16, size=48, seed=4)
    register_unet({"loss": "bce", "img_size": 32}, aliases=[names.top_alias(1), names.CHAMPION], run_name="unet")
    cropped = tmp_path / "cropped"
    crop.main(["--data", str(data / "chest_xray"), "--out", str(cropped), "--top-k", "1", "--img-size", "32"])
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"lam": [1.0, 10.0]}))
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump({
        "workers": 1, "crop": {"out": str(cropped)},
        "classify": {"losses": ["cce", "cal_cce"], "img_size": 32, "epochs": 1, "batch_size": 8, "ci_method": "wald"},
        "ensemble": {"top_k": "2", "epochs": 1, "batch_size": 8, "ci_method": "wald", "include_degenerate": "true"},
        "sweep": {"grid": str(grid)}}))
    argv = ["--profile", str(profile), "--seeds", "0,1", "--sweep-losses", "cal_cce"]
    ablation.main(argv)
    printed = capsys.readouterr().out
    assert "ablation: 1 losses (cal_cce) x 2 seeds" in printed and "# What the corrections change" in printed

    client = mlflow.MlflowClient()
    (parent,) = mlflow.search_runs(experiment_names=[names.ABLATION_EXPERIMENT], output_format="list",
                                   filter_string="tags.stage = 'ablation'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["steps_reused"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ablation.md", "ablation.html", "ablation_roles.csv", "ablation_paired.csv"} <= artifacts
    children = mlflow.search_runs(experiment_names=[names.ABLATION_EXPERIMENT], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    steps = sorted(r.data.tags[names.STEP_TAG] for r in children)
    assert steps == sorted(["classify.cal_cce.published.seed0", "classify.cal_cce.corrected.seed0",
                            "classify.cce.corrected.seed0", "classify.cal_cce.published.seed1",
                            "classify.cal_cce.corrected.seed1", "classify.cce.corrected.seed1",
                            "ensemble.published", "ensemble.corrected", "sweep.cal_cce"])
    by_step = {r.data.tags[names.STEP_TAG]: r for r in children}
    assert by_step["classify.cal_cce.published.seed0"].data.tags[names.FLAWS_TAG] == "calibration_no_gradient"
    assert by_step["classify.cal_cce.corrected.seed0"].data.tags[names.FLAWS_TAG] == "none"
    assert by_step["ensemble.published"].data.tags[names.TEST_SELECTED_TAG] == "true"
    assert by_step["ensemble.corrected"].data.tags[names.SELECT_ON_TAG] == "val"
    assert parent.data.metrics["cal_cce.published.test_mcc_mean"] == pytest.approx(
        (by_step["classify.cal_cce.published.seed0"].data.metrics["test_mcc"]
         + by_step["classify.cal_cce.published.seed1"].data.metrics["test_mcc"]) / 2)

    ablation.main(argv)                                                   # everything done: all reused
    again = mlflow.search_runs(experiment_names=[names.ABLATION_EXPERIMENT], output_format="list",
                               filter_string="tags.stage = 'ablation'", order_by=["attributes.start_time DESC"])[0]
    assert again.info.run_id != parent.info.run_id
    assert again.data.metrics["steps_ran"] == 0 and again.data.metrics["steps_reused"] == 9
