"""The ensemble's pool and aliases: members of one data set, image size and encoder (what was left
out said and logged), the crop's exact U-Nets, and no alias taken from a version of other data."""

import json
from pathlib import Path

import mlflow
import pytest
import tf_keras

from multiloss import names, variants
from multiloss.tracking import ranking, registry, store
from tests.conftest import KERMANY_FILES, write_gray

OTHER = "f0" * 16


def tiny_model():
    return tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3, activation="softmax")])


def register(model_name: str, metrics=None, aliases=(), **tags) -> mlflow.entities.model_registry.ModelVersion:
    with store.stage_run(names.CLASSIFICATION_EXPERIMENT, run_name="tiny"):
        if metrics:
            mlflow.log_metrics(metrics)
        version = registry.log_and_register(tiny_model(), model_name, tags)
    for alias in aliases:
        registry.set_alias(model_name, alias, version.version)
    return version


def classifier(fingerprint: str, loss: str, val_mcc: float, img_size=64, encoder="1", aliases=(), test_mcc=None,
               **tags) -> str:
    metrics = {"val_mcc": val_mcc, "val_nll": 0.5, **({} if test_mcc is None else {"test_mcc": test_mcc})}
    return str(register(names.CLASSIFIER_MODEL, metrics, aliases,
                        **{names.LOSS_TAG: loss, names.DATA_FINGERPRINT_TAG: fingerprint,
                           names.IMG_SIZE_TAG: img_size, "encoder_version": encoder, **tags}).version)


@pytest.fixture
def cropped(tmp_path) -> tuple[Path, str]:
    """A crop stage output (a few Kermany files and crop.json naming U-Net version 1) and its fingerprint."""
    from multiloss.data.fingerprint import fingerprint
    from multiloss.data.readers import find_kermany_root, read_kermany

    data = tmp_path / "cropped"
    for seed, (folder, files) in enumerate(KERMANY_FILES.items()):
        for k, name in enumerate(files):
            write_gray(data / "chest_xray" / folder / name, seed=seed * 100 + k)
    (data / "crop.json").write_text(json.dumps({"members": ["1"], "seg_size": 32, "img_size": 48, "margin": 0.05}))
    store.configure()
    return data, fingerprint(read_kermany(data)["path"], root=find_kermany_root(data))


@pytest.fixture
def pool_of_five(cropped):
    """Five classifiers: the best of the data at 64 px, one at 32 px, one on another encoder, one
    more at 64 px, and the best of all on other data."""
    _, here = cropped
    return {"best": classifier(here, "cce", 0.9), "small": classifier(here, "focal", 0.85, img_size=32),
            "encoder2": classifier(here, "cal_cce", 0.88, encoder="2"), "third": classifier(here, "kld", 0.8),
            "other": classifier(OTHER, "ls", 0.99)}


def test_members_keep_the_best_versions_size_and_encoder_and_name_what_they_left_out(cropped, pool_of_five):
    from multiloss.ensembles.members import choose_members

    data, here = cropped
    made = pool_of_five
    members = choose_members("val_mcc", here, data, 2)
    assert members.versions == [made["best"], made["third"]] and members.img_size == 64
    assert members.pool.left_out == {made["small"]: "img_size 32, not 64",
                                     made["encoder2"]: "encoder_version 2, not 1",
                                     made["other"]: f"data_fingerprint {OTHER[:12]}, not {here[:12]}"}
    wider = choose_members("val_mcc", here, data, 2, pool="any_encoder")
    assert wider.versions == [made["best"], made["encoder2"]] and made["encoder2"] not in wider.pool.left_out


def test_too_few_members_names_the_pool(cropped, pool_of_five):
    from multiloss.ensembles.members import EnsembleInputError, choose_members

    data, here = cropped
    with pytest.raises(EnsembleInputError, match=r"found 2.*3 left out"):
        choose_members("val_mcc", here, data, 3)


def test_the_stage_prints_and_logs_the_pool_and_the_mcc_interval(cropped, pool_of_five, monkeypatch, capsys):
    from multiloss.metrics.classification import MCC_INTERVAL_LABELS
    from multiloss.stages import ensemble

    data, _ = cropped
    register(names.SEGMENTATION_MODEL)
    monkeypatch.setattr(ensemble, "build_and_register", lambda inputs: None)
    ensemble.main(["--data", str(data), "--top-k", "2", "--ci-method", "wilson"])
    assert f"v{pool_of_five['small']} (img_size 32, not 64)" in capsys.readouterr().out
    found = mlflow.search_runs(experiment_names=[names.ENSEMBLES_EXPERIMENT], output_format="list")
    assert len(found) == 1
    tags = found[0].data.tags
    assert tags[names.MCC_INTERVAL_TAG] == MCC_INTERVAL_LABELS["wilson"]
    assert f"v{pool_of_five['other']}" in tags[ranking.LEFT_OUT_TAG]
    record = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=found[0].info.run_id,
                                                                 artifact_path=ranking.POOL_ARTIFACT)).read_text())
    assert record["ranked"] == [pool_of_five[k] for k in ("best", "third")]
    assert set(record["left_out"]) == {pool_of_five[k] for k in ("small", "encoder2", "other")}


def test_the_served_model_loads_exactly_the_u_nets_that_cropped(cropped, pool_of_five):
    from multiloss.ensembles.members import EnsembleInputError
    from multiloss.ensembles.run import EnsembleSettings, prepare

    data, _ = cropped
    unet = register(names.SEGMENTATION_MODEL)
    settings = EnsembleSettings(top_k=[2], metric="val_mcc", variant=variants.parse("corrected"), distinct="loss",
                                epochs=1, batch_size=4, lr=0.01, patience=1, seed=0, ci_method="wald",
                                pool="same_data", include_degenerate=False)
    crop = json.loads((data / "crop.json").read_text())

    def with_sources(run_id: str, source: str):
        crop["member_sources"] = [{"name": names.SEGMENTATION_MODEL, "version": "1", "run_id": run_id,
                                   "source": source}]
        (data / "crop.json").write_text(json.dumps(crop))

    with_sources(unet.run_id, unet.source)
    assert prepare(settings, data).segmenter_uris == [unet.source]
    # the store was made anew since: version 1 is another U-Net now
    with_sources("0123456789abcdef", "models:/m-0123456789abcdef")
    with pytest.raises(EnsembleInputError, match=rf"version 1 .*run {unet.run_id}.*run 0123456789abcdef"):
        prepare(settings, data)
    del crop["member_sources"]                                   # an older crop: version numbers only
    (data / "crop.json").write_text(json.dumps(crop))
    assert prepare(settings, data).segmenter_uris == [registry.version_uri(names.SEGMENTATION_MODEL, "1")]


def test_aliases_held_by_versions_of_other_data_are_left_alone(cropped, capsys):
    from multiloss.ensembles.run import move_aliases

    _, here = cropped
    theirs = [classifier(OTHER, loss, mcc, aliases=[alias]) for loss, mcc, alias in
              (("cce", 0.9, names.CHAMPION), ("focal", 0.8, names.top_alias(1)), ("kld", 0.7, names.top_alias(3)))]
    ens_theirs = str(register(names.ENSEMBLE_MODEL, aliases=[names.CHAMPION],
                              **{names.DATA_FINGERPRINT_TAG: OTHER}).version)
    ours = [classifier(here, loss, 0.5) for loss in ("cce", "focal")]
    stale = classifier(here, "kld", 0.4)
    registry.set_alias(names.CLASSIFIER_MODEL, names.data_alias(names.top_alias(3), here), stale)
    ens_ours = str(register(names.ENSEMBLE_MODEL, **{names.DATA_FINGERPRINT_TAG: here}).version)

    moved = move_aliases(settings_of("corrected"), ens_ours, ours, here)

    def holder(model, alias):
        return str(registry.alias_version(model, alias).version)
    assert holder(names.CLASSIFIER_MODEL, names.CHAMPION) == theirs[0]
    assert holder(names.CLASSIFIER_MODEL, names.top_alias(1)) == theirs[1]
    assert holder(names.CLASSIFIER_MODEL, names.top_alias(3)) == theirs[2]            # not ours to remove
    assert holder(names.ENSEMBLE_MODEL, names.CHAMPION) == ens_theirs
    assert holder(names.ENSEMBLE_MODEL, names.data_alias(names.CHAMPION, here)) == ens_ours
    assert holder(names.CLASSIFIER_MODEL, names.data_alias(names.CHAMPION, here)) == ours[0]
    for k, version in enumerate(ours, start=1):
        assert holder(names.CLASSIFIER_MODEL, names.data_alias(names.top_alias(k), here)) == version
    assert ranking.alias_holder(names.CLASSIFIER_MODEL, names.data_alias(names.top_alias(3), here)) is None
    assert moved[f"{names.CLASSIFIER_MODEL}@{names.data_alias(names.CHAMPION, here)}"] == ours[0]
    printed = capsys.readouterr().out
    assert f"{names.CLASSIFIER_MODEL}@{names.CHAMPION} belongs to version {theirs[0]}" in printed

    # on data of their own, the plain aliases move, and a smaller top-K leaves none beyond it
    moved = move_aliases(settings_of("corrected"), ens_theirs, theirs[:1], OTHER)
    assert holder(names.CLASSIFIER_MODEL, names.top_alias(1)) == theirs[0]
    assert ranking.alias_holder(names.CLASSIFIER_MODEL, names.top_alias(3)) is None


def tagged(variant: str, loss: str) -> dict[str, str]:
    """The variant tags of a classifier of ``loss`` trained with ``variant``."""
    return variants.tags(variants.parse(variant).for_loss(loss))


def test_the_pool_holds_the_classifiers_trained_as_the_variant_prescribes_for_their_loss(cropped):
    from multiloss.ensembles.members import choose_members, member_pool

    data, here = cropped
    made = {"cal_fixed": classifier(here, "cal_cce", 0.95),                          # untagged: corrected
            "cal_published": classifier(here, "cal_cce", 0.9, **tagged("published", "cal_cce")),
            "cce_published": classifier(here, "cce", 0.85, **tagged("published", "cce")),   # no flaw acts on cce
            "ls_published": classifier(here, "ls_focal", 0.8, **tagged("published", "ls_focal")),
            "kld": classifier(here, "kld", 0.7, **tagged("corrected", "kld"))}
    corrected = member_pool("val_mcc", here)
    assert corrected.versions == [made[k] for k in ("cal_fixed", "cce_published", "kld")]
    assert corrected.left_out == {made["cal_published"]: "variant flaws calibration_no_gradient, not none",
                                  made["ls_published"]: "variant flaws smoothing_half, not none"}
    published = member_pool("val_mcc", here, variant="published")
    assert published.versions == [made[k] for k in ("cal_published", "cce_published", "ls_published", "kld")]
    assert published.left_out == {made["cal_fixed"]: "variant flaws none, not calibration_no_gradient"}
    # the loss flaws of a list act on their own losses only; ensemble flaws choose no members
    only_smoothing = member_pool("val_mcc", here, variant="smoothing_half,test_selection")
    assert only_smoothing.versions == [made[k] for k in ("cal_fixed", "cce_published", "ls_published", "kld")]
    assert member_pool("val_mcc", here, variant="test_selection").versions == corrected.versions
    members = choose_members("val_mcc", here, data, 2, variant="published")
    assert members.versions == [made["cal_published"], made["cce_published"]]


def test_degenerate_classifiers_are_left_out_and_set_no_image_size_unless_included(cropped):
    from multiloss.ensembles.members import choose_members

    data, here = cropped
    stuck = classifier(here, "cce", 0.99, img_size=32, **{names.DEGENERATE_TAG: "true",
                                                            names.DEGENERATE_REASON_TAG: "predicts normal only"})
    fine = [classifier(here, loss, mcc) for loss, mcc in (("focal", 0.8), ("kld", 0.7))]
    members = choose_members("val_mcc", here, data, 2)
    assert members.versions == fine and members.img_size == 64
    assert members.pool.left_out == {stuck: "degenerate: predicts normal only"}
    included = choose_members("val_mcc", here, data, 1, include_degenerate=True)
    assert included.versions == [stuck] and included.img_size == 32
    assert included.pool.left_out == {v: "img_size 64, not 32" for v in fine}


def test_a_published_ensemble_run_ranks_on_test_and_says_its_variant(cropped, monkeypatch, capsys):
    from multiloss.stages import ensemble

    data, here = cropped
    register(names.SEGMENTATION_MODEL)
    on_val = classifier(here, "cce", 0.9, test_mcc=0.5)
    on_test = [classifier(here, loss, 0.7, test_mcc=mcc, **tagged("published", loss))
               for loss, mcc in (("cal_cce", 0.95), ("focal", 0.8))]
    kept = {}
    monkeypatch.setattr(ensemble, "build_and_register", lambda inputs: kept.update(inputs=inputs))
    ensemble.main(["--data", str(data), "--top-k", "2", "--variant", "published"])
    inputs = kept["inputs"]
    assert inputs.key == "test_mcc" and inputs.settings.select_on == "test"
    assert inputs.members.versions == on_test and inputs.settings.variant == variants.parse("published")
    run = mlflow.search_runs(experiment_names=[names.ENSEMBLES_EXPERIMENT], output_format="list")[0]
    assert run.info.run_name == "ensemble-top2-published"
    assert {k: run.data.tags[k] for k in (names.VARIANT_TAG, names.FLAWS_TAG, names.SELECT_ON_TAG,
                                          names.TEST_SELECTED_TAG)} == {
        names.VARIANT_TAG: "published", names.FLAWS_TAG: ",".join(f.name for f in variants.FLAWS),
        names.SELECT_ON_TAG: "test", names.TEST_SELECTED_TAG: "true"}
    assert run.data.params["variant"] == "published" and run.data.params["selection_key"] == "test_mcc"
    assert run.data.params["include_degenerate"] == "false"

    ensemble.main(["--data", str(data), "--top-k", "2", "--distinct", "none"])       # corrected
    corrected = mlflow.search_runs(experiment_names=[names.ENSEMBLES_EXPERIMENT], output_format="list",
                                   order_by=["attributes.start_time DESC"])[0]
    assert corrected.info.run_name == "ensemble-top2" and kept["inputs"].key == "val_mcc"
    assert corrected.data.tags[names.FLAWS_TAG] == "none" and corrected.data.tags[names.SELECT_ON_TAG] == "val"
    assert f"v{on_test[0]} (variant flaws calibration_no_gradient, not none)" in capsys.readouterr().out
    assert kept["inputs"].members.versions[0] == on_val


@pytest.mark.parametrize("given, message", [("publshed", "parameter variant: unknown flaw publshed"),
                                            ("test_selection,nope", "parameter variant: unknown flaw nope")])
def test_an_unknown_variant_is_refused_naming_the_parameter(given, message, capsys):
    from multiloss.stages import ensemble

    with pytest.raises(SystemExit):
        ensemble.parse_args(["--data", "d", "--variant", given])
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble.parse_args(["--data", "d", "--include-degenerate", "maybe"])
    assert "parameter include_degenerate must be true or false" in capsys.readouterr().err


def test_a_test_selected_ensemble_takes_only_test_selected_never_champion(cropped):
    from multiloss.ensembles.run import move_aliases

    _, here = cropped
    members = [classifier(here, loss, 0.5, aliases=[names.CHAMPION] if loss == "kld" else ()) for loss in
               ("cce", "focal", "kld")]
    old = str(register(names.ENSEMBLE_MODEL, aliases=[names.CHAMPION], **{names.DATA_FINGERPRINT_TAG: here}).version)
    new = str(register(names.ENSEMBLE_MODEL, **{names.DATA_FINGERPRINT_TAG: here}).version)
    assert move_aliases(settings_of("test_selection"), new, members[:2], here) == {
        f"{names.ENSEMBLE_MODEL}@{names.TEST_SELECTED}": new}
    assert move_aliases(settings_of("head_dense_only"), new, members[:2], here) == {}     # flawed: no champion
    assert move_aliases(settings_of("corrected", set_aliases=False), new, members[:2], here) == {}
    assert str(registry.alias_version(names.ENSEMBLE_MODEL, names.CHAMPION).version) == old
    assert str(registry.alias_version(names.CLASSIFIER_MODEL, names.CHAMPION).version) == members[2]
    assert ranking.alias_holder(names.CLASSIFIER_MODEL, names.top_alias(1)) is None


def test_members_come_only_from_the_versions_given(cropped):
    from multiloss.ensembles.members import EnsembleInputError, choose_members

    data, here = cropped
    made = [classifier(here, loss, mcc) for loss, mcc in (("cce", 0.9), ("focal", 0.8), ("kld", 0.7))]
    members = choose_members("val_mcc", here, data, 2, versions=(made[1], made[2]))
    assert members.versions == [made[1], made[2]]
    assert members.pool.left_out == {made[0]: "not among the versions given"}
    with pytest.raises(EnsembleInputError, match="top_k 3 needs 3"):
        choose_members("val_mcc", here, data, 3, versions=(made[1], made[2]))


def settings_of(variant: str, set_aliases: bool = True):
    from multiloss.ensembles.run import EnsembleSettings

    return EnsembleSettings(top_k=[2], metric="val_mcc", variant=variants.parse(variant), distinct="loss", epochs=1,
                            batch_size=4, lr=0.01, patience=1, seed=0, ci_method="wald", pool="same_data",
                            include_degenerate=False, set_aliases=set_aliases)
