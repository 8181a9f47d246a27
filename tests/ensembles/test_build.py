"""Trainable ensembles (stacking, model level), out-of-fold predictions and registry ranking."""

import numpy as np
import pytest
import tf_keras

from multiloss import names
from multiloss.ensembles.combiners import majority_probs, majority_vote, out_of_fold
from multiloss.models.classifier import DEEPEST_CONV
from multiloss.models.ensemble_heads import (
    ENSEMBLE_CONV,
    ModelLevel,
    build_stacking,
    fit_stacking,
    stacking_inputs,
    stacking_predict,
)
from multiloss.tracking import ranking, registry, store


def test_stacking_inputs_put_each_image_members_side_by_side():
    probs = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)      # 2 members, 3 images
    rows = stacking_inputs(probs)
    assert rows.shape == (3, 6)
    np.testing.assert_array_equal(rows[1], [3, 4, 5, 12, 13, 14])


def test_stacking_learns_to_trust_the_good_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    good = np.eye(3)[labels] * 0.8 + 0.2 / 3
    noise = rng.dirichlet(np.ones(3), size=(2, 150))
    model = fit_stacking(np.stack([noise[0], good, noise[1]]), labels, epochs=200, seed=0)
    new_labels = rng.integers(0, 3, 60)
    new = np.stack([rng.dirichlet(np.ones(3), 60), np.eye(3)[new_labels] * 0.8 + 0.2 / 3, rng.dirichlet(np.ones(3), 60)])
    predicted = model.predict(stacking_inputs(new), verbose=0).argmax(1)
    assert (predicted == new_labels).mean() > 0.95


def test_stacking_fit_takes_the_steps_keras_adam_would_take():
    """The NumPy steps against Keras' own full-batch Adam fit from the same seeded weights."""
    import tensorflow as tf
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), size=(2, 40))
    ours = fit_stacking(probs, labels, epochs=25, lr=0.01, seed=3)

    tf_keras.utils.set_random_seed(3)
    start = build_stacking(2).get_weights()
    tf_keras.utils.set_random_seed(3)
    reference = build_stacking(2)
    reference.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    batch = tf.data.Dataset.from_tensors((stacking_inputs(probs), np.eye(3, dtype=np.float32)[labels])).repeat(25)
    reference.fit(batch, epochs=1, verbose=0)
    for mine, theirs, first in zip(ours.get_weights(), reference.get_weights(), start):
        assert not np.allclose(theirs, first)                          # 25 steps moved every weight
        np.testing.assert_allclose(mine, theirs, atol=2e-5)
    np.testing.assert_allclose(stacking_predict(ours, probs), reference.predict(stacking_inputs(probs), verbose=0),
                               atol=1e-5)


def test_majority_probs_agree_with_the_vote_including_ties():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=(4, 200))       # 4 members: many 2–2 ties
    np.testing.assert_array_equal(majority_probs(probs).argmax(1), majority_vote(probs))
    np.testing.assert_allclose(majority_probs(probs).sum(1), 1.0)


def test_out_of_fold_never_fits_on_the_image_it_predicts():
    probs = np.zeros((1, 23, 3))
    probs[0, :, 0] = np.arange(23)            # image id carried in the probabilities
    labels = np.arange(23) % 3

    def fit_predict(train_probs, train_labels, held_probs):
        seen = set(train_probs[0, :, 0])
        assert not seen & set(held_probs[0, :, 0])
        assert len(seen) + len(held_probs[0]) == 23
        return np.tile([1.0, 0.0, 0.0], (held_probs.shape[1], 1)) * held_probs[0, :, :1]

    result = out_of_fold(fit_predict, probs, labels, folds=5, seed=0)
    np.testing.assert_array_equal(result[:, 0], np.arange(23))     # every image predicted exactly once


def tiny_member(seed: int) -> tf_keras.Model:
    """Classifier-shaped: ... → cls_conv → GAP → Dense(3, softmax)."""
    tf_keras.utils.set_random_seed(seed)
    image = tf_keras.Input((None, None, 3))
    x = tf_keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(image)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.Conv2D(8, 3, activation="relu", padding="same", name=DEEPEST_CONV)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax", name="cls_softmax")(x))


def test_model_level_trains_only_its_new_layers_and_shares_them_with_the_head():
    members = [tiny_member(1), tiny_member(2)]
    before = [m.get_weights() for m in members]
    ensemble = ModelLevel(members, ["a", "b"], filters=16)
    # the 1×1 convolution is trainable (the published code froze it), the members are not
    trainable = {w.name.split("/")[0] for w in ensemble.full.trainable_weights}
    assert trainable == {ENSEMBLE_CONV, "ensemble_softmax"}
    assert ensemble.full.get_layer(ENSEMBLE_CONV).kernel_size == (1, 1)
    images = np.random.default_rng(0).random((6, 16, 16, 3)).astype(np.float32)
    features = ensemble.features.predict(images, verbose=0)
    assert features.shape == (6, 8, 8, 16)                       # two members × 8 channels
    labels = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    ensemble.head.compile(optimizer=tf_keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    ensemble.head.fit(features, labels, epochs=3, verbose=0)
    np.testing.assert_allclose(ensemble.full.predict(images, verbose=0), ensemble.head.predict(features, verbose=0),
                               atol=1e-6)
    for member, weights in zip(members, before):
        for now, then in zip(member.get_weights(), weights):
            np.testing.assert_array_equal(now, then)


def test_model_level_refuses_a_member_without_the_cut_layer():
    plain = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(2, 1, name="other")])
    with pytest.raises(ValueError, match="member b: no layer 'cls_conv'"):
        ModelLevel([tiny_member(0), plain], ["a", "b"])


def test_model_level_reuses_each_members_features_and_predicts_what_the_full_model_does(tmp_path, monkeypatch):
    import cv2

    from multiloss.data.classes import CLASSES
    from multiloss.ensembles import build
    from multiloss.ensembles.build import SplitPredictions

    rng = np.random.default_rng(4)
    paths = []
    for i in range(18):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (20, 20), dtype=np.uint8))
        paths.append(str(path))
    labels = np.arange(18) % 3
    split = lambda part: SplitPredictions(part, labels[:len(part)], np.full((3, len(part), 3), 1 / 3))  # noqa: E731
    computed = []
    real_features = build._features
    monkeypatch.setattr(build, "_features", lambda model, p, *a: computed.append(model.name) or real_features(model, p, *a))
    members, names = [tiny_member(1), tiny_member(2), tiny_member(3)], ["a (v1)", "b (v2)", "c (v3)"]
    cache = {}
    with store.stage_run("ensembles", run_name="model-level"):     # fit_keeping_best logs per epoch
        common = dict(train_paths=paths[:12], train_labels=[CLASSES[i] for i in labels[:12]],
                      val=split(paths[12:15]), test=split(paths[15:]), img_size=16, epochs=2, batch_size=4, lr=0.1,
                      patience=2, feature_cache=cache)
        two = build.model_level(names[:2], members[:2], **common)
        assert len(computed) == 6 and set(cache) == {(n, s, 16) for n in names[:2] for s in ("train", "val", "test")}
        three = build.model_level(names, members, **common)
        assert len(computed) == 9                        # only the third member's features were new
        for level, k in ((two, 2), (three, 3)):
            full = level.parts[0].full
            for part, probs in ((paths[12:15], level.val_probs), (paths[15:], level.test_probs)):
                np.testing.assert_allclose(probs, real_features(full, part, 16, 4), atol=1e-5)
            assert len(level.members) == k

        # past the limit (which counts the test split and the concatenated copy) the cache is emptied and
        # the full image model trains and predicts
        limit = 2 * 8 * 8 * 16 * 4 * 18              # two members' 8×8×8 float32 features of 18 images, twice
        cache.clear()
        build.model_level(names[:2], members[:2], **common, max_cache_bytes=limit)
        assert len(cache) == 6                          # exactly at the limit: cached
        computed.clear()
        fallback = build.model_level(names[:2], members[:2], **common, max_cache_bytes=limit - 1)
        assert cache == {} and computed == ["model_level_2", "model_level_2"]   # val and test, through the full model
        assert fallback.val_probs.shape == (3, 3) and fallback.test_probs.shape == (3, 3)
        with pytest.raises(ValueError, match="member names must be unique"):
            build.model_level(["a", "a"], members[:2], **common)


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
    assert promote.main(["--version", made[0]]) == made[0]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(names.CLASSIFIER_MODEL, "champion").version) == made[0]
    with pytest.raises(SystemExit, match="no version of cxr-classifier has a 'test_auroc'"):
        promote.main(["--metric", "test_auroc"])
    with pytest.raises(ValueError, match="has no version 99"):
        promote.main(["--version", "99"])


def test_choose_best_breaks_a_tie_by_the_lower_log_loss():
    from multiloss.ensembles.build import Ensemble, choose_best

    labels = np.array([0, 1, 2, 0])
    sure = np.eye(3)[labels] * 0.97 + 0.01
    unsure = np.eye(3)[labels] * 0.4 + 0.2
    wrong = np.roll(np.eye(3)[labels], 1, axis=1) * 0.9 + 0.1 / 3
    entries = [Ensemble(name, "mean", ["a"], probs, probs) for name, probs in
               (("unsure", unsure), ("sure", sure), ("wrong", wrong))]
    best, values = choose_best(entries, "mcc", labels)
    assert best.name == "sure" and values["unsure"] == values["sure"] == 1.0
    assert choose_best(entries, "mcc", labels, higher_is_better=False)[0].name == "wrong"


def test_rebase_maps_members_predictions_onto_another_copy_of_the_data(tmp_path):
    import pandas as pd

    from multiloss.ensembles.build import SplitPredictions, rebase

    here = [str(tmp_path / "copy" / "chest_xray" / "train" / "NORMAL" / f"IM-{i}.jpeg") for i in range(3)]
    frame = pd.DataFrame({"path": here + [str(tmp_path / "copy" / "chest_xray" / "test" / "NORMAL" / "IM-9.jpeg")],
                          "split": ["train"] * 3 + ["test"]})
    elsewhere = SplitPredictions(["/old/machine/chest_xray/train/NORMAL/IM-2.jpeg",
                                  "/old/machine/chest_xray/train/NORMAL/IM-0.jpeg"],
                                 np.array([0, 0]), np.zeros((1, 2, 3)))
    assert rebase(elsewhere, frame, "val", "train").paths == [here[2], here[0]]
    with pytest.raises(ValueError, match="not in the data's test split"):
        rebase(elsewhere, frame, "test", "test")
    wrong = SplitPredictions(["/old/chest_xray/train/NORMAL/IM-7.jpeg"], np.array([0]), np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="1 of the members' val images are not in the data's train split"):
        rebase(wrong, frame, "val", "train")


def test_pyfunc_inputs_arrays_read_like_files(tmp_path):
    import cv2

    from multiloss.data.imageio import read_gray
    from multiloss.ensembles.serving import expand_inputs

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scan.png"), rgb[..., ::-1])          # a file stores BGR
    names, images, codecs = expand_inputs([str(tmp_path)])
    assert names == [str(tmp_path / "scan.png")] and codecs == [".png"]
    np.testing.assert_array_equal(images[0], read_gray(tmp_path / "scan.png"))
    _, from_array, array_codecs = expand_inputs(rgb)                   # one RGB image, not 20 rows
    assert len(from_array) == 1 and array_codecs == [None]
    np.testing.assert_array_equal(from_array[0], images[0])
    _, floats, _ = expand_inputs(rgb.astype(np.float32) / 255.0)
    assert np.abs(floats[0].astype(int) - images[0]).max() <= 1
    twelve_bit = (rng.integers(0, 4096, (2, 8, 8))).astype(np.uint16)   # a batch of two 12-bit images
    _, batch, _ = expand_inputs(twelve_bit)
    assert len(batch) == 2 and batch[0].max() > 200 and (batch[0] < 255).mean() > 0.9
    with pytest.raises(ValueError, match="no images given"):
        expand_inputs([])
