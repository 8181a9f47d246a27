"""Ranking registered versions by a metric (tracking.ranking), and the promote stage that uses it."""

import pytest
import tf_keras

from multiloss import names
from multiloss.tracking import ranking, registry, store


def test_selection_key_and_direction():
    assert ranking.selection_key("mcc", "val") == "val_mcc"
    assert ranking.selection_key("test_mcc", "test") == "test_mcc"
    assert ranking.selection_key("val_mcc", "test") == "test_mcc"      # the split comes from select_on
    with pytest.raises(ValueError, match="select_on must be one of"):
        ranking.selection_key("mcc", "train")
    assert ranking.higher_is_better("val_mcc") and ranking.higher_is_better("holdout_dice")
    assert not ranking.higher_is_better("val_ece") and not ranking.higher_is_better("nll")


def test_rank_versions_reads_run_metrics_then_tags_and_keeps_one_per_loss():
    import mlflow

    store.configure()
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])
    made = []
    for loss, mcc, ece in (("cce", 0.5, 0.2), ("focal", 0.9, 0.1), ("cce", 0.7, 0.05), ("kld", None, 0.3)):
        with store.stage_run("classification", run_name=loss):
            if mcc is not None:
                mlflow.log_metric("val_mcc", mcc)
            version = registry.log_and_register(model, names.CLASSIFIER_MODEL, {"loss": loss, "val_ece": ece})
            made.append(str(version.version))
    by_mcc = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_mcc")
    assert [str(r.version.version) for r in by_mcc] == [made[1], made[2], made[0]]     # kld has no val_mcc
    assert [r.value for r in ranking.distinct_by_tag(by_mcc, "loss")] == [0.9, 0.7]
    by_ece = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_ece")              # from the tags, low first
    assert [r.value for r in by_ece] == [0.05, 0.1, 0.2, 0.3]
    only_cce = ranking.rank_versions(names.CLASSIFIER_MODEL, "val_mcc", tags={"loss": "cce"})
    assert [r.value for r in only_cce] == [0.7, 0.5]

    from multiloss.stages import promote
    assert promote.main(["--metric", "val_mcc"]) == made[1]
    assert promote.main(["--metric", "val_ece", "--alias", "calibrated"]) == made[2]
    with pytest.raises(SystemExit, match="is not better than version"):
        promote.main(["--version", made[0]])                          # worse than the champion
    assert promote.main(["--version", made[0], "--force", "true"]) == made[0]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(names.CLASSIFIER_MODEL, "champion").version) == made[0]
    with pytest.raises(SystemExit, match="no version of cxr-classifier has a 'test_auroc'"):
        promote.main(["--metric", "test_auroc"])
    with pytest.raises(ValueError, match="has no version 99"):
        promote.main(["--version", "99"])



# ---------------------------------------------------------------------------------------------
# Ties, pools and force.

REAL, PHANTOM, HOLDOUT_A, HOLDOUT_B = "a1" * 32, "f0" * 32, "c3" * 32, "d4" * 32


def tiny_model():
    return tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])


def register(model_name=names.CLASSIFIER_MODEL, metrics=None, aliases=(), **tags) -> str:
    """A tiny version of ``model_name`` whose source run logged ``metrics``, tagged ``tags``."""
    import mlflow

    with store.stage_run(names.CLASSIFICATION_EXPERIMENT, run_name="tiny"):
        if metrics:
            mlflow.log_metrics(metrics)
        version = str(registry.log_and_register(tiny_model(), model_name, tags).version)
    for alias in aliases:
        registry.set_alias(model_name, alias, version)
    return version


def classifier(fingerprint=REAL, img_size=64, encoder="1", **kw) -> str:
    return register(**{names.DATA_FINGERPRINT_TAG: fingerprint, names.IMG_SIZE_TAG: img_size,
                       "encoder_version": encoder}, **kw)


def holder(alias=names.CHAMPION, model_name=names.CLASSIFIER_MODEL) -> str:
    return str(registry.alias_version(model_name, alias).version)


def test_ties_go_to_the_lower_val_nll_then_the_lower_version_never_to_recency():
    store.configure()
    made = [register(metrics={"val_mcc": 0.8, **({"val_nll": nll} if nll is not None else {})})
            for nll in (0.5, 0.3, None, 0.3)]
    made.append(register(metrics={"val_mcc": 0.9, "val_nll": 0.9}))
    assert [str(r.version.version) for r in ranking.rank_versions(names.CLASSIFIER_MODEL, "val_mcc")] == \
        [made[4], made[1], made[3], made[0], made[2]]
    # the same with a score ranked low to high
    assert [str(r.version.version) for r in ranking.rank_versions(names.CLASSIFIER_MODEL, "val_nll")][:2] == \
        [made[1], made[3]]


def test_promote_keeps_to_the_holders_data_size_and_encoder_and_widens_on_request(capsys):
    from multiloss.stages import promote

    store.configure()
    real = classifier(metrics={"val_mcc": 0.7}, aliases=[names.CHAMPION])
    phantom = classifier(PHANTOM, metrics={"val_mcc": 0.995})
    small = classifier(img_size=32, metrics={"val_mcc": 0.99})
    other_encoder = classifier(encoder="2", metrics={"val_mcc": 0.98})
    better = classifier(metrics={"val_mcc": 0.8})

    assert promote.main([]) == better
    out = capsys.readouterr().out
    assert f"v{phantom} (data_fingerprint {PHANTOM[:12]}, not {REAL[:12]})" in out
    assert f"v{small} (img_size 32, not 64)" in out and f"v{other_encoder} (encoder_version 2, not 1)" in out
    assert f"from version {real}, which holds @champion" in out

    assert promote.main(["--pool", "any_encoder"]) == other_encoder
    assert promote.main(["--img-size", "32"]) == small                    # same data: no force needed
    with pytest.raises(SystemExit, match=rf"version {phantom} was trained on other data .*force=true"):
        promote.main(["--pool", "all"])
    assert holder() == small                                              # nothing moved
    with pytest.raises(SystemExit, match="force=true"):
        promote.main(["--data-fingerprint", PHANTOM[:12]])
    assert promote.main(["--pool", "all", "--force", "true"]) == phantom
    assert "force" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="force=true"):
        promote.main(["--version", real])                                 # a named version of other data too
    assert promote.main(["--version", real, "--force", "true"]) == real


def test_promote_without_a_holder_needs_one_data_set_or_a_named_one(capsys):
    from multiloss.stages import promote

    store.configure()
    real = classifier(metrics={"val_mcc": 0.7})
    phantom = classifier(PHANTOM, metrics={"val_mcc": 0.95})
    with pytest.raises(SystemExit, match=r"no version holds cxr-classifier@champion.*2 values of data_fingerprint.*"
                                         r"data_fingerprint="):
        promote.main([])
    with pytest.raises(ValueError):
        registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION)     # nothing was set
    assert promote.main(["--data-fingerprint", REAL]) == real
    assert promote.main(["--alias", "phantom_best", "--data-fingerprint", PHANTOM[:8]]) == phantom


def test_promote_holdout_dice_compares_only_versions_scored_on_the_same_holdout():
    from multiloss.segmentation.evaluate import HOLDOUT_FINGERPRINT_TAG
    from multiloss.stages import promote

    store.configure()
    unet = {names.DATA_FINGERPRINT_TAG: REAL, names.IMG_SIZE_TAG: 64}
    scored_here = register(names.SEGMENTATION_MODEL, aliases=[names.CHAMPION], holdout_dice=0.9,
                           **{HOLDOUT_FINGERPRINT_TAG: HOLDOUT_A}, **unet)
    elsewhere = register(names.SEGMENTATION_MODEL, holdout_dice=0.97, **{HOLDOUT_FINGERPRINT_TAG: HOLDOUT_B}, **unet)
    better_here = register(names.SEGMENTATION_MODEL, holdout_dice=0.92, **{HOLDOUT_FINGERPRINT_TAG: HOLDOUT_A}, **unet)
    assert promote.main(["--model", names.SEGMENTATION_MODEL, "--metric", "holdout_dice"]) == better_here
    assert holder(model_name=names.SEGMENTATION_MODEL) == better_here and scored_here != elsewhere


def test_promote_refuses_bad_parameters_before_moving_anything(capsys):
    from multiloss.stages import promote

    store.configure()
    kept = classifier(metrics={"val_mcc": 0.7}, aliases=[names.CHAMPION])
    classifier(metrics={"val_mcc": 0.9})
    for argv, message in ((["--pool", "some"], "pool"), (["--force", "maybe"], "force"),
                          (["--img-size", "big"], "img-size")):
        with pytest.raises(SystemExit):
            promote.main(argv)
        assert f"argument --{message}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="data_fingerprint 'ffff' matches no version"):
        promote.main(["--data-fingerprint", "ffff"])
    with pytest.raises(SystemExit, match="version and data_fingerprint"):
        promote.main(["--version", kept, "--data-fingerprint", REAL])
    with pytest.raises(SystemExit, match="pool=all and data_fingerprint"):
        promote.main(["--pool", "all", "--data-fingerprint", REAL])
    assert holder() == kept


def test_promote_logs_what_it_left_out_into_the_launchers_run(monkeypatch):
    import json
    from pathlib import Path

    import mlflow

    from multiloss.stages import promote

    store.configure()
    classifier(metrics={"val_mcc": 0.7}, aliases=[names.CHAMPION])
    phantom = classifier(PHANTOM, metrics={"val_mcc": 0.95})
    client = mlflow.MlflowClient()
    run_id = client.create_run(store.ensure_experiment(names.CLASSIFICATION_EXPERIMENT)).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)             # as `mlflow run` launches it
    promote.main([])
    run = client.get_run(run_id)
    assert f"v{phantom}" in run.data.tags[ranking.LEFT_OUT_TAG]
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ranking.POOL_ARTIFACT)
    record = json.loads(Path(local).read_text())
    assert record["left_out"] == {phantom: f"data_fingerprint {PHANTOM[:12]}, not {REAL[:12]}"}
    assert record["criteria"][names.DATA_FINGERPRINT_TAG] == REAL


def test_make_pool_leaves_out_degenerate_versions_unless_asked_for():
    store.configure()
    healthy = classifier(metrics={"val_mcc": 0.6}, **{names.DEGENERATE_TAG: "false"})
    flagged = classifier(metrics={"val_mcc": 0.9}, **{names.DEGENERATE_TAG: "true",
                                                     names.DEGENERATE_REASON_TAG: "mean confidence 0.334 within 0.02 of 1/3"})
    unexplained = classifier(metrics={"val_mcc": 0.8}, **{names.DEGENERATE_TAG: "true"})
    other = classifier(PHANTOM, metrics={"val_mcc": 0.95}, **{names.DEGENERATE_TAG: "true"})
    ranked, unscored = ranking.scored_versions(names.CLASSIFIER_MODEL, "val_mcc")
    criteria = {names.DATA_FINGERPRINT_TAG: REAL}

    pool = ranking.make_pool(names.CLASSIFIER_MODEL, "val_mcc", ranked, criteria, unscored=unscored)
    assert pool.versions == [healthy]
    assert pool.left_out == {flagged: "degenerate: mean confidence 0.334 within 0.02 of 1/3",
                             unexplained: "degenerate: flagged on validation",
                             other: f"data_fingerprint {PHANTOM[:12]}, not {REAL[:12]}"}   # the data first

    wide = ranking.make_pool(names.CLASSIFIER_MODEL, "val_mcc", ranked, criteria, include_degenerate=True)
    assert wide.versions == [flagged, unexplained, healthy] and list(wide.left_out) == [other]
