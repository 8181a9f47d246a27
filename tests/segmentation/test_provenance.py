"""What segment_eval ranks and what crop reads: one data set and one size per pool, the exact
versions a ranking chose, and crops told apart by the models that made them (not by version numbers,
which a fresh store numbers 1, 2, 3 again)."""

import json
import types

import mlflow
import pytest
import tf_keras

from multiloss import names
from multiloss.data.synthetic import write_synthetic
from multiloss.segmentation import evaluate
from multiloss.stages import crop, segment_eval
from multiloss.tracking import registry, store

SEG = names.SEGMENTATION_MODEL


def tiny_unet():
    """A one-layer stand-in for the U-Net: same input and output shapes, loads in a blink."""
    inputs = tf_keras.Input((None, None, 3))
    return tf_keras.Model(inputs, tf_keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    data = tmp_path_factory.mktemp("synthetic") / "data"
    write_synthetic(data, n_seg=1, n_cls=2, size=32, seed=0)
    return data


@pytest.fixture
def unet(register_unet):
    """Registers a tiny U-Net trained (as its tags say) on data ``data`` at ``size`` px; returns its
    version (as text), run id and logged model source."""
    def register(seed=0, data="aaaa1111", size=32, aliases=(), **tags):
        if data is not None:
            tags[names.DATA_FINGERPRINT_TAG] = data
        if size is not None:
            tags[names.IMG_SIZE_TAG] = size
        version = register_unet({"loss": "bce", **tags}, aliases=aliases, seed=seed, model=tiny_unet)
        return types.SimpleNamespace(version=str(version.version), run_id=version.run_id, source=version.source)
    return register


def runs(stage):
    store.configure()
    return mlflow.search_runs(experiment_names=[names.SEGMENTATION_EXPERIMENT],
                              filter_string=f"attributes.run_name = '{stage}'", output_format="list")


def tags_of(version):
    return mlflow.MlflowClient().get_model_version(SEG, str(version)).tags


def crop_args(synthetic, out, *extra):
    return ["--data", str(synthetic / "chest_xray"), "--out", str(out), "--img-size", "32", *extra]


def holdout(synthetic):
    return str(synthetic / "MontgomerySet")


# --- crop: which U-Nets made a crop ---------------------------------------------------------------

def test_a_crop_by_other_unets_with_the_same_version_numbers_is_rewritten(synthetic, unet, tmp_path, monkeypatch):
    out = tmp_path / "cropped"
    first = unet(seed=0, aliases=["top1"])
    crop.main(crop_args(synthetic, out, "--top-k", "1"))
    made_by_first = json.loads((out / "crop.json").read_text())

    monkeypatch.setenv("MULTILOSS_HOME", str(tmp_path / "other-home"))     # a fresh store: numbering restarts
    monkeypatch.delenv("MLFLOW_TRACKING_URI")                               # (mlflow exported the first one)
    other = unet(seed=1, aliases=["top1"])
    assert other.version == first.version and other.source != first.source
    crop.main(crop_args(synthetic, out, "--top-k", "1"))
    (latest,) = runs("crop")
    assert names.REUSED_DATA_TAG not in latest.data.tags
    assert made_by_first["members"] == [first.version]
    assert made_by_first["member_sources"] == [{"name": SEG, "version": first.version,
                                                "run_id": first.run_id, "source": first.source}]
    made_by_other = json.loads((out / "crop.json").read_text())
    assert made_by_other["member_sources"] == [{"name": SEG, "version": other.version,
                                                "run_id": other.run_id, "source": other.source}]


def test_a_crop_by_the_same_unets_is_reused(synthetic, unet, tmp_path):
    out = tmp_path / "cropped"
    unet(aliases=["top1"])
    for _ in range(2):
        crop.main(crop_args(synthetic, out, "--top-k", "1"))
    assert [r.data.tags.get(names.REUSED_DATA_TAG) for r in runs("crop")] == ["true", None]   # newest first


def test_an_old_crop_without_member_sources_is_not_reused(synthetic, unet, tmp_path):
    out = tmp_path / "cropped"
    unet(aliases=["top1"])
    crop.main(crop_args(synthetic, out, "--top-k", "1"))
    summary = json.loads((out / "crop.json").read_text())
    summary.pop("member_sources", None)             # as crop wrote it before it recorded them
    (out / "crop.json").write_text(json.dumps(summary))
    crop.main(crop_args(synthetic, out, "--top-k", "1"))
    assert names.REUSED_DATA_TAG not in runs("crop")[0].data.tags
    assert "member_sources" in json.loads((out / "crop.json").read_text())


# --- crop: the versions a pipeline's segment_eval chose -------------------------------------------

def test_crop_uses_the_members_given_not_the_aliases(synthetic, unet, tmp_path):
    first, second, third = (unet(seed=s) for s in range(3))
    registry.set_alias(SEG, "top1", first.version)          # what another pipeline's segment_eval left
    registry.set_alias(SEG, "top2", second.version)
    out = tmp_path / "cropped"
    crop.main(crop_args(synthetic, out, "--top-k", "2", "--members", f"{third.version}, {first.version}"))
    summary = json.loads((out / "crop.json").read_text())
    assert summary["members"] == [third.version, first.version]                   # best first, as given
    assert [m["source"] for m in summary["member_sources"]] == [third.source, first.source]
    assert runs("crop")[0].data.params["members"] == f"{third.version},{first.version}"


@pytest.mark.parametrize("members, top_k, message", [
    ("1", "2", "parameter members names 1 version.*but top_k is 2"),
    ("1,2,3", "2", "parameter members names 3 versions.*but top_k is 2"),
    ("7", "1", "parameter members: .*has no version 7"),
    ("1,1", "2", "parameter members names version 1 twice"),
    ("v1", "1", "parameter members must be comma-separated version numbers"),
])
def test_bad_members_are_refused_before_a_run(synthetic, unet, tmp_path, members, top_k, message):
    unet(seed=0)
    unet(seed=1)
    out = tmp_path / "cropped"
    with pytest.raises(SystemExit, match=message):
        crop.main(crop_args(synthetic, out, "--top-k", top_k, "--members", members))
    assert runs("crop") == [] and not out.exists()


def test_crop_without_members_or_aliases_is_refused_before_a_run(synthetic, tmp_path):
    with pytest.raises(SystemExit, match="no alias top1; run segment_eval"):
        crop.main(crop_args(synthetic, tmp_path / "cropped"))
    assert runs("crop") == []


# --- segment_eval: the pool, the chosen versions, attributable holdout tags -------------------------

def test_segment_eval_records_the_versions_it_chose_best_first(synthetic, unet):
    for seed in range(3):
        unet(seed=seed)
    segment_eval.main(["--data", holdout(synthetic), "--top-k", "2", "--img-size", "32"])
    by_rank = sorted(registry.versions(SEG), key=lambda v: int(v.tags[evaluate.HOLDOUT_RANK_TAG]))
    (run,) = runs("segment_eval")
    assert run.data.tags[names.TOP_VERSIONS_TAG] == ",".join(str(v.version) for v in by_rank[:2])


def test_segment_eval_pools_one_data_set_and_one_size(synthetic, unet, capsys):
    other_data = unet(seed=0, data="bbbb2222")
    older = unet(seed=1)
    other_size = unet(seed=2, size=64)
    untagged = unet(seed=3, data=None, size=None)
    newest = unet(seed=4)
    segment_eval.main(["--data", holdout(synthetic), "--top-k", "2", "--img-size", "32"])
    (run,) = runs("segment_eval")
    assert run.data.params["versions"] == f"{older.version},{newest.version}"
    scored = {str(v.version) for v in registry.versions(SEG) if evaluate.HOLDOUT_RANK_TAG in v.tags}
    assert scored == {older.version, newest.version}
    pool = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/pool.json")
    assert pool["pool"] == "same_data" and pool["data_fingerprint"] == "aaaa1111" and pool["img_size"] == 32
    assert pool["scored"] == [older.version, newest.version]
    assert set(pool["left_out"]) == {other_data.version, other_size.version, untagged.version}
    assert "bbbb2222" in pool["left_out"][other_data.version]
    assert "img_size 64" in pool["left_out"][other_size.version]
    assert "no img_size tag" in pool["left_out"][untagged.version]
    printed = capsys.readouterr().out
    for version in pool["left_out"]:
        assert f"left out version {version}: {pool['left_out'][version]}" in printed


def test_pool_all_scores_every_version(synthetic, unet, capsys):
    versions = [unet(seed=0, data="bbbb2222").version, unet(seed=1, size=64).version, unet(seed=2).version]
    segment_eval.main(["--data", holdout(synthetic), "--top-k", "1", "--img-size", "32", "--pool", "all"])
    assert {str(v.version) for v in registry.versions(SEG) if evaluate.HOLDOUT_RANK_TAG in v.tags} == set(versions)
    assert "pool=all: ranking versions of 3 different data fingerprints" in capsys.readouterr().out


def test_listed_versions_outside_the_pool_are_refused_before_a_run(synthetic, unet):
    first = unet(seed=0, data="bbbb2222")
    second = unet(seed=1)
    with pytest.raises(SystemExit, match=f"versions: version {first.version}: .*bbbb2222.*pool=all"):
        segment_eval.main(["--data", holdout(synthetic), "--img-size", "32",
                           "--versions", f"{first.version},{second.version}"])
    assert runs("segment_eval") == []
    with pytest.raises(SystemExit, match="versions: .*has no version 9"):
        segment_eval.main(["--data", holdout(synthetic), "--img-size", "32", "--versions", "9"])
    assert runs("segment_eval") == []


def test_no_version_in_the_pool_is_refused_before_a_run(synthetic, unet):
    unet(size=64)
    with pytest.raises(SystemExit, match="no cxr-lung-seg version .*img_size 32.*pool=all"):
        segment_eval.main(["--data", holdout(synthetic), "--img-size", "32"])
    assert runs("segment_eval") == []


def test_holdout_scores_always_name_the_holdout_that_scored_them(synthetic, unet, tmp_path, monkeypatch):
    first, second = unet(seed=0), unet(seed=1)
    segment_eval.main(["--data", holdout(synthetic), "--top-k", "1", "--img-size", "32"])
    first_print = tags_of(first.version)[evaluate.HOLDOUT_FINGERPRINT_TAG]
    first_scores = {k: v for k, v in tags_of(first.version).items() if k.startswith("holdout_")}

    # another holdout set scores the second version only; writing its tags dies half-way
    other = tmp_path / "other"
    write_synthetic(other, n_seg=1, n_cls=2, size=32, seed=5)
    real_set_tag = mlflow.MlflowClient.set_model_version_tag

    def dies_at_the_rank(self, name, version, key, value):
        if key == evaluate.HOLDOUT_RANK_TAG:
            raise RuntimeError("killed while tagging")
        return real_set_tag(self, name, version, key, value)
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed while tagging"):
        patch.setattr(mlflow.MlflowClient, "set_model_version_tag", dies_at_the_rank)
        segment_eval.main(["--data", str(other / "MontgomerySet"), "--top-k", "1", "--img-size", "32",
                           "--versions", second.version])
    half = tags_of(second.version)
    assert "holdout_dice" in half and evaluate.HOLDOUT_FINGERPRINT_TAG not in half   # never under the old name

    segment_eval.main(["--data", str(other / "MontgomerySet"), "--top-k", "1", "--img-size", "32",
                       "--versions", second.version])
    second_tags = tags_of(second.version)
    assert second_tags[evaluate.HOLDOUT_FINGERPRINT_TAG] != first_print
    assert second_tags[evaluate.HOLDOUT_IMG_SIZE_TAG] == "32"
    # the first version keeps its scores under its own holdout's name, but no rank in a ranking it is not in
    kept = tags_of(first.version)
    assert kept[evaluate.HOLDOUT_FINGERPRINT_TAG] == first_print
    assert {k: v for k, v in kept.items() if k.startswith("holdout_")} == \
        {k: v for k, v in first_scores.items() if k != evaluate.HOLDOUT_RANK_TAG}


def test_holdout_tags_of_no_known_holdout_are_removed(synthetic, unet):
    stale, scored = unet(seed=0), unet(seed=1)
    registry.tag_version(SEG, stale.version, {"holdout_dice": "0.99", evaluate.HOLDOUT_RANK_TAG: 1})
    segment_eval.main(["--data", holdout(synthetic), "--top-k", "1", "--img-size", "32", "--versions", scored.version])
    assert not [k for k in tags_of(stale.version) if k.startswith("holdout_")]
    assert evaluate.HOLDOUT_FINGERPRINT_TAG in tags_of(scored.version)
