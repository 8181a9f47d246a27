"""The ``synth`` entry point, launched the way users launch it: ``mlflow run . -e synth``."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from multiloss import names
from multiloss.data.readers import class_counts, read_kermany
from multiloss.stages import synth
from multiloss.tracking import store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mlflow_run_synth_writes_both_layouts_and_logs_counts(tmp_path):
    out = tmp_path / "synthetic"
    env = dict(os.environ, MLFLOW_TRACKING_URI=store.tracking_uri())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    subprocess.run([sys.executable, "-m", "multiloss.tracking", "init"], env=env, check=True, cwd=REPO)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", ".", "-e", "synth", "--env-manager", "local",
         "--experiment-name", "data", "-P", f"out={out}", "-P", "n_seg=12", "-P", "n_cls=15",
         "-P", "size=64", "-P", "seed=3"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "chest_xray" / "train" / "PNEUMONIA").is_dir()
    assert (out / "MontgomerySet" / "ManualMask" / "leftMask").is_dir()

    store.configure()
    runs = mlflow.search_runs(experiment_names=["data"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    counts = class_counts(read_kermany(out))
    logged = {(split, label): int(run.data.metrics[f"n_{split}_{label}"]) for split in ("train", "test")
              for label in counts.columns}
    assert logged == {(split, label): int(counts.loc[split, label]) for split in ("train", "test")
                      for label in counts.columns}
    assert counts.loc["test"].tolist() == [3, 3, 3] and counts.loc["train"].tolist() == [12, 12, 12]
    assert run.data.metrics["n_seg_pairs"] == 12 and run.data.metrics["n_holdout_pairs"] == 4
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"preview.png", "validation_split.csv"}
    split = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                             artifact_path="validation_split.csv"))
    assert not set(split.loc[split.subset == "val", "patient"]) & set(split.loc[split.subset == "train", "patient"])
    assert "Kermany reader, images per split and class" in result.stdout


def test_synth_stage_reuses_identical_output_and_refuses_a_different_one(tmp_path, capsys):
    out = tmp_path / "synthetic"
    args = ["--out", str(out), "--n-seg", "4", "--n-cls", "15", "--size", "48", "--seed", "1"]
    synth.main(args)
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.jpeg"))
    store.configure()
    run = mlflow.search_runs(experiment_names=["data"], output_format="list")[0]
    assert run.data.tags[names.PID_TAG] == str(os.getpid())           # for the clean-up of dead runs
    synth.main(args)
    assert "reused" in capsys.readouterr().out
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.jpeg")) == before
    with pytest.raises(ValueError, match="synthetic"):
        synth.main(["--out", str(out), "--n-seg", "4", "--n-cls", "15", "--size", "48", "--seed", "2"])
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.jpeg")) == before


def test_integer_parameters_are_checked_by_name():
    with pytest.raises(SystemExit):
        synth.parse_args(["--out", "x", "--size", "12.5"])
    assert synth.parse_args(["--out", "x", "--size", "64.0"]).size == 64


def test_an_out_that_synth_cannot_write_is_named_before_any_run(tmp_path):
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    with pytest.raises(SystemExit, match=rf"synth: parameter out: {taken} is a file, not a folder"):
        synth.main(["--out", str(taken)])
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    with pytest.raises(SystemExit, match=rf"synth: parameter out: {other} holds files synth did not write"):
        synth.main(["--out", str(other)])
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert taken.read_text() == "mine" and [p.name for p in other.iterdir()] == ["notes"]
