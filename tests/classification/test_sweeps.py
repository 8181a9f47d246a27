"""Sweeps: grids per loss, pruned trials in Optuna and MLflow, workers sharing one journal, a killed
worker's trial retried, and one real classify trial through the sweep stage end to end."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from multiloss import names
from multiloss.classification.sweeps.grid import grid_points, load_grid, search_space
from multiloss.classification.sweeps.storage import open_storage, redact
from multiloss.classification.sweeps.study import (
    PARENT_ATTR,
    SweepSettings,
    make_pruner,
    pin_inputs,
)
from multiloss.classification.sweeps.worker import run_sweep
from multiloss.data.synthetic import write_synthetic
from multiloss.metrics.classification import MCC_INTERVAL_LABELS
from multiloss.stages import sweep
from multiloss.tracking import registry, store


def children(parent_run_id: str) -> list:
    parent = mlflow.MlflowClient().get_run(parent_run_id)
    return mlflow.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              output_format="list")


def test_grid_is_restricted_to_the_loss_parameters(tmp_path):
    grid = load_grid()
    assert grid["lam"] == [0.5, 1, 2, 5, 10, 15, 20] and grid["beta"][:2] == [1e-5, 1e-4]
    space = search_space("cal_neg_entropy", grid)
    assert set(space) == {"lam", "beta"} and len(grid_points(space, seed=0)) == 49
    assert list(search_space("cal_cce", grid)) == ["lam"]
    assert len(grid_points(search_space("ls_focal", grid), 0)) == 16
    points = grid_points(space, seed=3)
    assert points == grid_points(space, seed=3) and len({tuple(p.items()) for p in points}) == 49
    with pytest.raises(ValueError, match="'cce' has no parameters to sweep"):
        search_space("cce", grid)

    override = tmp_path / "tiny.yaml"
    override.write_text(yaml.safe_dump({"lam": [1, 10]}))
    tiny = load_grid(override)
    assert tiny["lam"] == [1.0, 10.0] and tiny["beta"] == grid["beta"]
    override.write_text(yaml.safe_dump({"lambda": [1]}))
    with pytest.raises(ValueError, match=r"tiny.yaml: unknown parameter 'lambda'"):
        load_grid(override)
    override.write_text(yaml.safe_dump({"lam": []}))
    with pytest.raises(ValueError, match="lam must be a non-empty list"):
        load_grid(override)


def test_settings_budget_and_errors():
    space = {"lam": [1.0, 2.0, 3.0]}
    assert SweepSettings("cal_cce", space, {}).budget == 3
    assert SweepSettings("cal_cce", space, {}, n_trials=2).budget == 2
    assert SweepSettings("cal_cce", space, {}, n_trials=9).budget == 3
    named = SweepSettings("cal_cce", space, {})
    assert re.fullmatch(r"sweep-cal_cce-[0-9a-f]{10}", named.study_name)
    assert SweepSettings("cal_cce", space, {}, n_trials=2, pruner="median").study_name == named.study_name
    assert SweepSettings("cal_cce", space, {"epochs": 3}).study_name != named.study_name
    assert SweepSettings("cal_cce", space, {}, study="mine").study_name == "mine"
    with pytest.raises(ValueError, match="n_trials must be >= 1 with sampler=tpe"):
        SweepSettings("cal_cce", space, {}, sampler="tpe")
    with pytest.raises(ValueError, match="pruner must be one of"):
        SweepSettings("cal_cce", space, {}, pruner="asha")
    assert redact("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"


def by_trial_number(trial, params, report):
    """Later trials look worse from the first epoch on: the median pruner stops them (after the
    two epochs every trial runs)."""
    for epoch in (1, 2, 3):
        report(epoch, trial.number + params["lam"] / 100 + 1 / epoch)
    return trial.number + params["lam"] / 100


def test_pruners_see_each_trials_best_so_far_and_hyperband_waits_a_quarter_of_the_epochs():
    """Early validation NLL spikes; what a trial reports is its best so far, so a spike neither
    saves a poor trial (it would raise the median) nor cuts a good one. A diverged trial (NaN) is pruned."""
    curves = {0: [1.0, 1.5, 3.9, 0.7, 0.6], 1: [1.1, 1.05, 1.05, 1.05, 1.05], 2: [float("nan")] * 5}

    def objective(trial, params, report):
        for epoch, value in enumerate(curves[trial.number], start=1):
            report(epoch, value)
        return min(curves[trial.number])

    settings = SweepSettings("cal_cce", {"lam": [1.0, 2.0, 5.0]}, {"epochs": 5}, pruner="median")
    with store.stage_run("sweeps", run_name="best-so-far"):
        study = run_sweep(settings, objective).study
    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].intermediate_values == {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.7, 5: 0.6}
    # raw, trial 1's 1.05 would beat the finished trial's spikes (1.5, 3.9) until epoch 4; against
    # the finished trial's best so far (1.0) it stops at epoch 2
    assert trials[1].state == TrialState.PRUNED and trials[1].intermediate_values == {1: 1.1, 2: 1.05}
    assert trials[2].state == TrialState.PRUNED and len(trials[2].intermediate_values) == 2

    hyperband = make_pruner("hyperband", 20)
    assert (hyperband._min_resource, hyperband._max_resource) == (5, 20)
    assert make_pruner("hyperband", 4)._min_resource == 2


def test_pruned_trials_and_a_tpe_budget_that_resumes():
    settings = SweepSettings("cal_cce", {"lam": [1.0, 2.0, 5.0, 10.0]}, {"epochs": 3}, pruner="median")
    with store.stage_run("sweeps", run_name="pruning") as run:
        outcome = run_sweep(settings, by_trial_number)
    study = outcome.study
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.PRUNED, 3: TrialState.PRUNED}
    assert [len(t.intermediate_values) for t in study.get_trials()] == [3, 2, 2, 2]
    assert outcome.parent_run_id == run.info.run_id and outcome.registered_version is None

    runs = {int(r.data.tags["sweep.trial"]): r for r in children(run.info.run_id)}
    assert sorted(runs) == [0, 1, 2, 3]
    # each run names its process, so that a clean-up can tell a dead worker's runs from a live one's
    parent_tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    assert {r.data.tags[names.PID_TAG] for r in runs.values()} == {parent_tags[names.PID_TAG]} == {str(os.getpid())}
    for number, child in runs.items():
        assert child.info.status == "FINISHED"
        assert child.data.tags.get("pruned") == ("true" if number >= 1 else None)
        assert child.data.metrics["trial_epochs"] == (3 if number == 0 else 2)
    parent = mlflow.MlflowClient().get_run(run.info.run_id)
    best = study.best_trial
    assert best.number == 0
    assert parent.data.tags["best.lam"] == str(best.params["lam"]) and parent.data.tags["sweep.n_pruned"] == "3"
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.metrics["epochs_spent"] == 9
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/trials.md", "sweep/optimization_history.png",
            "sweep/intermediate_values.png"} <= artifacts

    # TPE in the same store: the budget counts the study's trials, and a re-run resumes it.
    settings = SweepSettings("cal_focal", {"lam": [1.0, 2.0], "gamma": [1.0, 2.0]}, {}, sampler="tpe",
                             n_trials=3, study="tpe")
    with store.stage_run("sweeps"):
        first = run_sweep(settings, by_trial_number)
    with store.stage_run("sweeps"):
        again = run_sweep(settings, by_trial_number)
    with store.stage_run("sweeps"):
        more = run_sweep(dataclasses.replace(settings, n_trials=5), by_trial_number)
    assert (first.trials_run, again.trials_run, more.trials_run) == ([0, 1, 2], [], [3, 4])
    assert not again.created and again.parent_run_id == first.parent_run_id
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first.parent_run_id, "sweep")}
    assert "sweep/param_importances.png" in artifacts   # two parameters
    with store.stage_run("sweeps"), pytest.raises(ValueError, match="study 'tpe' .*sampler='tpe' there, 'grid' here"):
        run_sweep(dataclasses.replace(settings, sampler="grid"), by_trial_number)


WORKER = textwrap.dedent("""
    import json, pathlib, sys, time
    import multiloss
    from multiloss.classification.sweeps.study import SweepSettings
    from multiloss.classification.sweeps.worker import run_sweep
    from multiloss.tracking import store

    folder, mode, lams = pathlib.Path(sys.argv[1]), sys.argv[2], [float(v) for v in sys.argv[3].split(",")]
    settings = SweepSettings("cal_cce", {"lam": lams}, {"epochs": 2}, study=mode,
                             storage=str(folder / "journal.log"), heartbeat=1)

    def objective(trial, params, report):
        marker = folder / f"started-{mode}-{trial.number}"
        marker.write_text(str(params["lam"]))
        if mode == "meet":       # hold the first trial until the other worker holds one too
            deadline = time.time() + 120
            while len(list(folder.glob("started-meet-*"))) < 2 and time.time() < deadline:
                time.sleep(0.1)
        if mode == "hang":
            time.sleep(600)
        for epoch in (1, 2):
            report(epoch, params["lam"] + 1 / epoch)
            time.sleep(0.2)
        return params["lam"]

    with store.stage_run("sweeps", run_name=f"worker-{mode}") as run:
        outcome = run_sweep(settings, objective)
    print("RAN", run.info.run_id, json.dumps(outcome.trials_run), flush=True)
""")


def start_worker(tmp_path, mode: str, lams: str) -> subprocess.Popen:
    store.ensure_experiment("sweeps")   # the store exists before workers start (two creating it race)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), mode, lams], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_workers_share_one_journal_and_a_killed_workers_trial_is_retried(tmp_path):
    # Two worker processes, one grid: each point trained once, all trials under one parent run.
    lams = [0.5, 1.0, 2.0, 5.0, 10.0, 15.0]
    workers = [start_worker(tmp_path, "meet", ",".join(map(str, lams))) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    reports = [re.findall(r"^RAN (\S+) (\[.*\])$", o, re.M) for o in outputs]
    assert all(len(r) == 1 for r in reports), "\n".join(o[-3000:] for o in outputs)
    ran = [json.loads(r[0][1]) for r in reports]
    run_ids = [r[0][0] for r in reports]
    assert all(ran) and sorted(ran[0] + ran[1]) == list(range(6))   # both worked, no trial twice

    study = optuna.load_study(study_name="meet", storage=open_storage(str(tmp_path / "journal.log")))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert sorted(t.params["lam"] for t in trials) == lams                 # every point exactly once
    parent_id = study.user_attrs[PARENT_ATTR]
    worker_id = next(rid for rid in run_ids if rid != parent_id)
    client = mlflow.MlflowClient()
    assert client.get_run(parent_id).data.tags["sweep.role"] == "parent"
    worker_tags = client.get_run(worker_id).data.tags
    assert worker_tags["sweep.role"] == "worker" and worker_tags["mlflow.parentRunId"] == parent_id
    trial_runs = [r for r in children(parent_id) if r.data.tags["sweep.role"] == "trial"]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in trial_runs) == list(range(6))
    assert {r.info.run_id for r in trial_runs} == {t.user_attrs["mlflow_run_id"] for t in trials}
    parent = client.get_run(parent_id)
    assert parent.data.tags["best.lam"] == "0.5" and parent.data.tags["sweep.n_complete"] == "6"

    # A worker killed mid-trial: once its heartbeat is stale, the next worker retries the trial first.
    worker = start_worker(tmp_path, "hang", "1,2,3")
    deadline = time.time() + 180
    while not list(tmp_path.glob("started-hang-*")):
        assert worker.poll() is None and time.time() < deadline, worker.stdout.read()[-3000:]
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(2.5)   # past the grace period (twice the 1 s heartbeat)

    settings = SweepSettings("cal_cce", {"lam": [1.0, 2.0, 3.0]}, {"epochs": 2}, study="hang",
                             storage=str(tmp_path / "journal.log"), heartbeat=1)
    with store.stage_run("sweeps"):
        outcome = run_sweep(settings, by_trial_number)
    trials = outcome.study.get_trials()
    killed = trials[0]
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    assert outcome.trials_run[0] == retry[0].number                     # the retry runs first
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lam"] for t in complete) == [1.0, 2.0, 3.0]
    dead_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "KILLED" and dead_run.data.tags["retried"] == "true"
    assert client.get_run(retry[0].user_attrs["mlflow_run_id"]).data.tags["sweep.retry_of"] == str(killed.number)
    assert outcome.summary["n_complete"] == 3 and not outcome.created


@pytest.mark.slow
def test_sweep_stage_runs_real_classify_trials_and_registers_only_the_best(tmp_path, register_unet):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=12, size=48, seed=2)
    unet = register_unet({"loss": "bce"}, aliases=[names.CHAMPION], run_name="encoder")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"lam": [1, 10]}))

    sweep.main(["--loss", "cal_cce", "--grid", str(grid), "--data", str(data / "chest_xray"),
                "--encoder", f"models:/{names.SEGMENTATION_MODEL}@{names.CHAMPION}", "--img-size", "32",
                "--epochs", "2", "--batch-size", "8", "--ci-method", "wald", "--pruner", "median"])

    experiment = mlflow.get_experiment_by_name("sweeps")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    client = mlflow.MlflowClient()
    for child in trials:
        assert child.info.status == "FINISHED" and child.data.params["loss_lam"] in ("1.0", "10.0")
        # drawn while the next trial trained, logged before its run was finished
        assert {f"{split}_{kind}.png" for split in ("val", "test") for kind in ("confusion", "roc_pr", "reliability")
                } <= {f.path for f in client.list_artifacts(child.info.run_id)}
        assert len(client.get_metric_history(child.info.run_id, "epoch/val_loss")) == 2
        assert len(client.get_metric_history(child.info.run_id, "epoch/val_cross_entropy")) == 2
        assert child.data.metrics["trial_val_nll"] == pytest.approx(child.data.metrics["val_nll"])
        assert child.data.params["encoder"] == f"models:/{names.SEGMENTATION_MODEL}/{unet.version}"
        assert child.data.tags[names.MCC_INTERVAL_TAG] == MCC_INTERVAL_LABELS["wald"]
    best = min(trials, key=lambda r: r.data.metrics["val_nll"])
    assert parent.data.tags["best.lam"] == best.data.params["loss_lam"]
    assert parent.data.tags["best.run_id"] == best.info.run_id
    versions = registry.versions(names.CLASSIFIER_MODEL)
    assert len(versions) == 1                     # the best trial only
    tags = versions[0].tags
    assert tags["sweep_study"] == parent.data.tags["sweep.study"]
    assert tags["sweep_trial"] == best.data.tags["sweep.trial"]
    assert parent.data.tags["sweep.study"].startswith("sweep-cal_cce-")
    assert tags["loss"] == "cal_cce" and tags["loss_lam"] == best.data.params["loss_lam"] and "test_mcc" in tags
    assert versions[0].run_id == best.info.run_id


def cheap(trial, params, report):
    for epoch in (1, 2):
        report(epoch, params["lam"] + 1 / epoch)
    return params["lam"]


def test_a_study_is_one_data_set_one_encoder_version_and_one_set_of_training_parameters(tmp_path, register_unet):
    """Re-running a sweep on other data, after the champion U-Net moved, or with another training
    parameter starts a new study; a study named by the user refuses the worker and says what differs."""
    first, other = tmp_path / "first", tmp_path / "other"
    write_synthetic(first, n_seg=1, n_cls=6, size=32, seed=0)
    write_synthetic(other, n_seg=1, n_cls=6, size=32, seed=1)
    old = register_unet(aliases=[names.CHAMPION], run_name="old champion")
    training = {"data": str(first / "chest_xray"), "encoder": f"models:/{names.SEGMENTATION_MODEL}@{names.CHAMPION}",
                "epochs": 2, "strategy": "default"}
    settings = SweepSettings("cal_cce", {"lam": [1.0, 2.0]}, training)

    def sweep_with(settings):
        with store.stage_run("sweeps"):
            return run_sweep(settings, cheap)

    done = sweep_with(settings)
    assert done.created and done.trials_run == [0, 1]
    pinned = done.study.user_attrs["sweep.config"]
    assert pinned["encoder"] == f"models:/{names.SEGMENTATION_MODEL}/{old.version} (run {old.run_id})"
    again = sweep_with(settings)
    assert not again.created and again.trials_run == [] and again.study.study_name == done.study.study_name

    new = register_unet(aliases=[names.CHAMPION], seed=1, run_name="new champion")
    moved = sweep_with(settings)
    assert moved.created and moved.trials_run == [0, 1] and moved.study.study_name != done.study.study_name
    new_encoder = moved.study.user_attrs["sweep.config"]["encoder"]
    assert new_encoder.startswith(f"models:/{names.SEGMENTATION_MODEL}/{new.version} ")

    other_data = sweep_with(dataclasses.replace(settings, training={**training, "data": str(other / "chest_xray")}))
    assert other_data.created and other_data.trials_run == [0, 1]
    longer = sweep_with(dataclasses.replace(settings, training={**training, "epochs": 3}))
    assert longer.created and longer.study.study_name not in (done.study.study_name, moved.study.study_name)
    # the data path and the device strategy are per machine: the same data elsewhere joins
    copy = tmp_path / "copy"
    write_synthetic(copy, n_seg=1, n_cls=6, size=32, seed=1)
    joined = sweep_with(dataclasses.replace(settings, training={**training, "data": str(copy / "chest_xray"),
                                                                "strategy": "mirrored"}))
    assert not joined.created and joined.study.study_name == other_data.study.study_name

    named = dataclasses.replace(settings, study="mine")
    assert sweep_with(named).created
    named_other = dataclasses.replace(named, training={**training, "data": str(other / "chest_xray"), "epochs": 3})
    with pytest.raises(ValueError) as refused:
        sweep_with(named_other)
    message = str(refused.value)
    assert "study 'mine'" in message and "data_fingerprint" in message and "epochs=2 there, 3 here" in message
    assert "encoder=" not in message
    registry.set_alias(names.SEGMENTATION_MODEL, names.CHAMPION, old.version)
    with pytest.raises(ValueError, match=rf"study 'mine' .*encoder='models:/{names.SEGMENTATION_MODEL}/{new.version} "):
        sweep_with(named)


def test_a_trial_trains_from_the_encoder_version_the_study_fixed(tmp_path, register_unet):
    data = tmp_path / "data"
    write_synthetic(data, n_seg=1, n_cls=6, size=32, seed=0)
    first = register_unet(aliases=[names.CHAMPION], run_name="first")
    second = register_unet(seed=1, run_name="second")
    settings = SweepSettings("cal_cce", {"lam": [1.0, 2.0, 5.0]}, {
        "data": str(data / "chest_xray"), "encoder": f"models:/{names.SEGMENTATION_MODEL}@{names.CHAMPION}"})
    pinned = pin_inputs(settings)
    assert pinned.training["encoder"] == f"models:/{names.SEGMENTATION_MODEL}/{first.version}"
    assert pin_inputs(pinned) == pinned

    def objective(trial, params, report):
        registry.set_alias(names.SEGMENTATION_MODEL, names.CHAMPION, second.version)   # another process moves it
        return params["lam"]

    with store.stage_run("sweeps") as run:
        outcome = run_sweep(settings, objective)
    assert outcome.settings == pinned
    trials = [r for r in children(run.info.run_id) if r.data.tags.get("sweep.role") == "trial"]
    assert len(trials) == 3
    assert {r.data.tags["sweep.encoder"] for r in trials} == {f"models:/{names.SEGMENTATION_MODEL}/{first.version}"}
    assert {r.data.tags[names.DATA_FINGERPRINT_TAG] for r in trials} == {pinned.data_fingerprint}


def test_sweep_inputs_are_checked_by_name_before_any_run(tmp_path, register_unet, capsys):
    data = tmp_path / "data"
    write_synthetic(data, n_seg=1, n_cls=6, size=32, seed=0)
    base = ["--loss", "cal_cce", "--data", str(data / "chest_xray"), "--epochs", "1"]
    with pytest.raises(SystemExit, match=r"parameter data: .*nowhere"):
        sweep.main([*base[:2], "--data", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"parameter encoder: .*has no alias 'champion'"):
        sweep.main(base)
    with pytest.raises(SystemExit, match=r"parameter grid: .*missing.yaml"):
        sweep.main([*base, "--grid", str(tmp_path / "missing.yaml"), "--encoder", "models:/cxr-lung-seg/1"])
    with pytest.raises(SystemExit):
        sweep.main([*base, "--img-size", "100"])
    assert "parameter img_size must be a multiple of 32" in capsys.readouterr().err
    store.configure()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []

    # a named study that another data set began: refused before this worker's run exists
    unet = register_unet(aliases=[names.CHAMPION])
    settings = pin_inputs(SweepSettings("cal_cce", {"lam": [1.0]}, {
        "data": str(data / "chest_xray"), "encoder": f"models:/{names.SEGMENTATION_MODEL}/{unet.version}",
        "epochs": 1}, study="named"))
    with store.stage_run("sweeps"):
        run_sweep(settings, cheap)
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(SystemExit, match=r"study 'named' .*epochs=1 there, 2 here"):
        sweep.main([*base[:4], "--epochs", "2", "--study", "named", "--grid", str(_lam_grid(tmp_path))])
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def _lam_grid(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"lam": [1]}))
    return grid


def test_each_trials_progress_line_names_its_point_its_value_and_the_best_so_far():
    import optuna
    from optuna.trial import TrialState

    from multiloss.classification.sweeps.worker import progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for lam, value in ((1.0, 0.221), (10.0, 1.094)):
        trial = study.ask()
        trial.suggest_categorical("lam", [1.0, 2.0, 10.0])
        study.tell(trial, value)
    pruned = study.ask({"lam": optuna.distributions.CategoricalDistribution([1.0, 2.0, 10.0])})
    study.tell(pruned, state=TrialState.PRUNED)
    lams = [t.params["lam"] for t in study.get_trials()]
    first = progress(study, 1, TrialState.COMPLETE)
    assert first == (f"trial 1 complete: lam={lams[1]:g} val_nll 1.094; best so far 0.221 (trial 0, lam={lams[0]:g})")
    assert progress(study, 2, TrialState.PRUNED).startswith(f"trial 2 pruned: lam={lams[2]:g}; best so far 0.221")
    empty = optuna.create_study()
    alone = empty.ask({"lam": optuna.distributions.CategoricalDistribution([1.0])})
    empty.tell(alone, state=TrialState.PRUNED)
    assert progress(empty, 0, TrialState.PRUNED) == "trial 0 pruned: lam=1; none complete yet"
