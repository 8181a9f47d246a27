"""Building the ensembles: the model-level feature cache, choosing the best, re-keying predictions."""

import numpy as np
import pytest

from multiloss.tracking import store
from tests.models.test_ensemble_heads import tiny_member


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



def kermany_like(tmp_path, n_train=18, n_test=9):
    """Tiny images in a Kermany layout, the read_kermany frame of them, and the members' (made-up)
    validation and test predictions: validation is the first third of the training images."""
    import cv2
    import pandas as pd

    from multiloss.data.classes import CLASSES
    from multiloss.ensembles.build import SplitPredictions

    rng = np.random.default_rng(11)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = CLASSES[i % 3]
            path = tmp_path / "chest_xray" / split / label.upper() / f"{split}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 256, (20, 20), dtype=np.uint8))
            rows.append({"path": str(path), "split": split, "label": label})
    frame = pd.DataFrame(rows)
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    val = train.iloc[: n_train // 3]

    def predictions(part):
        return SplitPredictions(part["path"].tolist(), np.arange(len(part)) % 3,
                                rng.dirichlet(np.ones(3), size=(3, len(part))))
    return frame, predictions(val), predictions(test)


def test_the_published_ensembles_fit_on_test_and_on_the_members_training_images(tmp_path, monkeypatch):
    """Variant flaws test_selection, stacking_on_train and head_dense_only, each exactly, against
    the corrected fits on validation."""
    from multiloss.data.datasets import image_dataset, label_indices
    from multiloss.ensembles import build
    from multiloss.ensembles.combiners import optimize_weights, weighted_mean
    from multiloss.models.ensemble_heads import (
        ENSEMBLE_CONV,
        ModelLevel,
        fit_stacking,
        stacking_predict,
    )

    frame, val, test = kermany_like(tmp_path)
    members, names = [tiny_member(1), tiny_member(2), tiny_member(3)], ["a (v1)", "b (v2)", "c (v3)"]
    initial = {}

    class Recording(ModelLevel):                          # each head's new layers as they were built
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            initial[id(self)] = {n: self.full.get_layer(n).get_weights() for n in (ENSEMBLE_CONV, "ensemble_softmax")}

    monkeypatch.setattr(build, "ModelLevel", Recording)
    built = {}
    with store.stage_run("ensembles", run_name="variants"):
        for variant in ("published", "corrected"):
            _, ensembles, levels = build.build_all(names, members, frame, val, test, top_k=[2, 3], img_size=16,
                                                   epochs=2, batch_size=4, lr=0.1, patience=2, variant=variant)
            built[variant] = {e.name: e for e in ensembles}

    train = frame[(frame.split == "train") & ~frame.path.isin(val.paths)]
    assert len(train) == 12
    own = np.stack([m.predict(image_dataset(train.path.tolist(), img_size=16, batch_size=4), verbose=0)
                    for m in members])
    own_labels = label_indices(train.label.tolist())
    published, corrected = built["published"], built["corrected"]
    for k in (2, 3):
        # test_selection: the SLSQP weights (restarts included) are the test predictions' best
        weighted = published[f"weighted top-{k}"]
        np.testing.assert_array_equal(weighted.weights, optimize_weights(test.probs[:k], test.labels))
        np.testing.assert_array_equal(weighted.val_probs, weighted_mean(val.probs[:k], weighted.weights))
        np.testing.assert_array_equal(corrected[f"weighted top-{k}"].weights,
                                      optimize_weights(val.probs[:k], val.labels))
        assert not np.allclose(weighted.weights, corrected[f"weighted top-{k}"].weights)
        assert (weighted.fitted_on, corrected[f"weighted top-{k}"].fitted_on) == ("test", "val")

        # stacking_on_train: fitted on the members' predictions on their own training images
        stacking, honest = published[f"stacking top-{k}"], corrected[f"stacking top-{k}"]
        for mine, refit, on_val in zip(stacking.stacker.get_weights(), fit_stacking(own[:k], own_labels).get_weights(),
                                       honest.stacker.get_weights()):
            np.testing.assert_array_equal(mine, refit)
            assert not np.allclose(mine, on_val)
        for mine, refit in zip(honest.stacker.get_weights(), fit_stacking(val.probs[:k], val.labels).get_weights()):
            np.testing.assert_array_equal(mine, refit)
        np.testing.assert_array_equal(stacking.val_probs, stacking_predict(stacking.stacker, val.probs[:k]))
        assert (stacking.fitted_on, honest.fitted_on) == ("train", "val")

        # head_dense_only: the 1×1 convolution is as it was built, the Dense layer trained
        for variant, frozen in (("published", True), ("corrected", False)):
            head = built[variant][f"model-level top-{k}"].parts[0]
            assert head.freeze_conv is frozen
            start = initial[id(head)]
            conv, dense = (head.full.get_layer(n).get_weights() for n in (ENSEMBLE_CONV, "ensemble_softmax"))
            assert np.array_equal(conv[0], start[ENSEMBLE_CONV][0]) is frozen, variant
            assert not np.allclose(dense[0], start["ensemble_softmax"][0]), variant

    levels = [published[f"model-level top-{k}"] for k in (2, 3)]
    np.testing.assert_array_equal(published["weighted model-level top-2+3"].weights,
                                  optimize_weights(np.stack([e.test_probs for e in levels]), test.labels))
    levels = [corrected[f"model-level top-{k}"] for k in (2, 3)]
    np.testing.assert_array_equal(corrected["weighted model-level top-2+3"].weights,
                                  optimize_weights(np.stack([e.val_probs for e in levels]), val.labels))


def test_the_split_ensembles_are_chosen_on_is_test_only_under_test_selection():
    from multiloss.ensembles.build import selection_split

    assert [selection_split(v) for v in ("corrected", "published", "test_selection", "stacking_on_train+head_dense_only",
                                         "calibration_no_gradient")] == ["val", "test", "test", "val", "val"]
