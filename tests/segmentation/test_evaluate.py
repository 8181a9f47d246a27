"""segment_eval's scoring streams the holdout: chunk by chunk it gives exactly the scores of the
whole set at once, holding a chunk of images and every mask packed 8 pixels to a byte."""

import numpy as np
import pytest

from multiloss.data.datasets import mask_dataset
from multiloss.data.readers import read_mask_set
from multiloss.metrics.segmentation import segmentation_scores
from multiloss.segmentation import evaluate
from tests.conftest import write_gray, write_mask


@pytest.fixture
def holdout(tmp_path):
    root = tmp_path / "pairs"
    for i in range(7):
        write_gray(root / "images" / f"case{i}.png", size=(40, 48), seed=i)
        write_mask(root / "masks" / f"case{i}_mask.png", box=(5 + i, 4, 30, 20 + 2 * i))
    return read_mask_set(root)


def _segmenters():
    import tf_keras

    models = []
    for seed in (0, 1, 2):
        tf_keras.utils.set_random_seed(seed)
        image = tf_keras.Input((16, 16, 3))
        models.append(tf_keras.Model(image, tf_keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(image)))
    return models


@pytest.mark.parametrize("chunk", [1, 3, 32])
def test_one_chunked_pass_scores_each_model_and_any_and_as_the_whole_set_at_once(holdout, chunk, monkeypatch):
    a, b, c = _segmenters()
    batch = next(mask_dataset(holdout["image"], holdout["masks"], img_size=16, batch_size=100,
                              cache=False).as_numpy_iterator())
    images, truth = batch[0], batch[1][..., 0] > 0.5
    masks = {name: m.predict(images, verbose=0)[..., 0] > 0.5 for name, m in (("a", a), ("b", b), ("c", c))}

    seen = []
    original = evaluate.predict_probabilities

    def recording(model, pixels, batch_size):
        seen.append(len(pixels))
        return original(model, pixels, batch_size)
    monkeypatch.setattr(evaluate, "predict_probabilities", recording)
    scored = evaluate.holdout_masks({"a": a, "b": b, "c": c}, holdout, 16, chunk=chunk)
    assert max(seen) == min(chunk, 7) and sum(seen) == 3 * 7          # one pass, a chunk at a time
    for name in "abc":
        np.testing.assert_allclose(scored.scores[name].to_numpy(float),
                                   segmentation_scores(truth, masks[name]).to_numpy(float), atol=1e-6)
    assert scored.packed["a"].shape == (7, 16, 2) and scored.packed["a"].dtype == np.uint8
    anded = scored.and_scores(["a", "c"], chunk=chunk)
    np.testing.assert_allclose(anded.to_numpy(float),
                               segmentation_scores(truth, masks["a"] & masks["c"]).to_numpy(float), atol=1e-6)
