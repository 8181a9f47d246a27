"""promote and degenerate versions: a version tagged degenerate=true (one class or confidence at
1/C on validation) is left out of the pool, and said to be, unless include_degenerate=true; a named
one is refused the same way."""

import json
from pathlib import Path

import mlflow
import pytest
import tf_keras

from multiloss import names
from multiloss.stages import promote
from multiloss.tracking import ranking, registry, store

REAL, PHANTOM = "a1" * 32, "f0" * 32
REASON = "predicts bacterial for all 40 validation images"


@pytest.fixture
def classifier(register_classifier):
    """A factory: a cxr-classifier version (a tiny stand-in model, to stay fast) with ``val_mcc``
    and the tags of one data set, size and encoder; ``degenerate`` adds the flag and its reason."""
    def make(val_mcc: float, degenerate: bool | None = None, fingerprint: str = REAL, aliases=()) -> str:
        tags = {names.DATA_FINGERPRINT_TAG: fingerprint, names.IMG_SIZE_TAG: 64, ranking.ENCODER_TAG: "1",
                "val_mcc": val_mcc}
        if degenerate is not None:
            tags[names.DEGENERATE_TAG] = "true" if degenerate else "false"
        if degenerate:
            tags[names.DEGENERATE_REASON_TAG] = REASON
        model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])
        return str(register_classifier(tags=tags, aliases=aliases, model=model).version)
    store.configure()
    return make


def champion() -> str:
    return str(registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION).version)


def test_a_degenerate_version_is_left_out_of_the_pool_and_in_with_include_degenerate(classifier, capsys, monkeypatch):
    healthy = classifier(0.6, degenerate=False)
    untagged = classifier(0.5)                               # a version from before the tag: kept
    collapsed = classifier(0.9, degenerate=True)
    run_id = mlflow.MlflowClient().create_run(store.ensure_experiment(names.CLASSIFICATION_EXPERIMENT)).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)              # as `mlflow run` launches it

    assert promote.main([]) == healthy
    out = capsys.readouterr().out
    assert f"1 left out: v{collapsed} (degenerate: {REASON})" in out
    assert f"v{untagged} (" not in out
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ranking.POOL_ARTIFACT)
    assert json.loads(Path(local).read_text())["left_out"] == {collapsed: f"degenerate: {REASON}"}

    assert promote.main(["--include-degenerate", "true"]) == collapsed == champion()
    out = capsys.readouterr().out
    assert "nothing left out" in out and "admitted by include_degenerate=true" in out


def test_a_named_degenerate_version_needs_include_degenerate(classifier):
    healthy = classifier(0.6, degenerate=False, aliases=[names.CHAMPION])
    collapsed = classifier(0.9, degenerate=True)
    with pytest.raises(SystemExit, match=rf"version {collapsed} .* flagged degenerate: {REASON}.*include_degenerate=true"):
        promote.main(["--version", collapsed])
    assert champion() == healthy
    assert promote.main(["--version", collapsed, "--include-degenerate", "true"]) == collapsed == champion()


def test_a_pool_of_degenerate_versions_only_says_include_degenerate_widens_it(classifier):
    collapsed = classifier(0.9, degenerate=True)
    classifier(0.8, degenerate=True)
    with pytest.raises(SystemExit, match=r"no version of cxr-classifier in the pool .*2 left out.*"
                                         r"include_degenerate=true admits"):
        promote.main([])
    with pytest.raises(ValueError):
        champion()                                           # nothing moved
    assert promote.main(["--include-degenerate", "yes"]) == collapsed


def test_a_degenerate_version_of_other_data_does_not_make_the_data_ambiguous(classifier):
    """No version holds the alias: the pool's data is the one data set of the versions it may hold."""
    healthy = classifier(0.6, degenerate=False)
    classifier(0.9, degenerate=True, fingerprint=PHANTOM)
    assert promote.main([]) == healthy
    with pytest.raises(SystemExit, match="2 values of data_fingerprint"):
        promote.main(["--alias", "other", "--include-degenerate", "true"])


def test_include_degenerate_is_a_boolean_parameter_false_by_default(classifier, capsys):
    assert promote.parse_args([]).include_degenerate is False
    assert promote.parse_args(["--include-degenerate", "TRUE"]).include_degenerate is True
    with pytest.raises(SystemExit):
        promote.parse_args(["--include-degenerate", "maybe"])
    assert "parameter include_degenerate must be true or false" in capsys.readouterr().err
