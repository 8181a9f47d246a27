"""The shared training graph: the runtime loss is each named loss exactly, and a training after
others in the same process is the training a fresh process would do, with no new trace."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from multiloss import names, variants
from multiloss.classification import graph
from multiloss.classification.train import ClassifierConfig, train_classifier
from multiloss.data.synthetic import write_synthetic
from multiloss.losses import CLASSIFICATION_LOSSES, classification_loss
from multiloss.tracking import registry, store

# Every loss as the corrected suite trains it, and each published flaw on a loss it acts on.
CASES = [(loss, variants.CORRECTED) for loss in CLASSIFICATION_LOSSES] + [
    (loss, flaw.name) for flaw in variants.FLAWS if flaw.scope == variants.LOSS for loss in flaw.losses]


def loss_and_gradient(loss_fn, y_true, logits, regularizer=None):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        probs = tf.nn.softmax(logits)
        value = tf.reduce_mean(loss_fn(y_true, probs))
        if regularizer is not None:
            value += regularizer(probs) / tf.cast(tf.shape(probs)[0], tf.float32)   # as Keras adds it
    return value.numpy(), tape.gradient(value, logits).numpy()


@pytest.mark.parametrize("loss,variant", CASES)
def test_the_runtime_loss_set_to_a_named_loss_has_its_value_and_gradient(loss, variant):
    rng = np.random.default_rng(7)
    y_true = tf.constant(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)])
    logits = tf.constant(rng.normal(0, 2, (16, 3)).astype(np.float32))
    named = classification_loss(loss, variant=variant)
    runtime, regularizer = graph.RuntimeLoss(), graph.RuntimeEntropyRegularizer()
    runtime.set(classification_loss("cal_focal", gamma=3.0))          # numbers of another loss first
    runtime.set(named)
    regularizer.beta.assign(named.terms().activity_beta)

    want = loss_and_gradient(named.call, y_true, logits, named.activity_regularizer())
    got = loss_and_gradient(runtime.call, y_true, logits, regularizer)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-8)


def test_the_published_calibration_term_moves_the_value_not_the_gradient():
    rng = np.random.default_rng(1)
    y_true = tf.constant(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)])
    logits = tf.constant(rng.normal(0, 1, (8, 3)).astype(np.float32))
    runtime = graph.RuntimeLoss()
    results = {}
    for loss, variant in (("cce", variants.CORRECTED), ("cal_cce", "calibration_no_gradient"),
                          ("cal_cce", variants.CORRECTED)):
        runtime.set(classification_loss(loss, variant=variant))
        results[loss, variant] = loss_and_gradient(runtime.call, y_true, logits)
    plain, published, corrected = results.values()
    assert published[0] > plain[0] and published[0] == pytest.approx(corrected[0], rel=1e-6)
    np.testing.assert_allclose(published[1], plain[1], rtol=1e-6)
    assert not np.allclose(corrected[1], plain[1])


# Four trainings in one process (the last one the comparison's); the fresh process trains the last alone.
SEQUENCE = [("cce", variants.CORRECTED, 0), ("cal_cce", variants.PUBLISHED, 1), ("cce_entropy", variants.CORRECTED, 2),
            ("ls_focal", variants.CORRECTED, 3)]
TRAIN_ONE = """
import json, sys
import numpy as np
from multiloss.classification.train import ClassifierConfig, train_classifier
from multiloss.tracking import store
loss, variant, seed, data, encoder, out = json.loads(sys.argv[1])
store.configure()
config = ClassifierConfig.from_defaults(loss, data, variant=variant, seed=seed, encoder=encoder, img_size=32,
                                        epochs=2, batch_size=4, patience=2, ci_method="wald")
with store.stage_run("classification", run_name="fresh"):
    trained = train_classifier(config)
np.savez(out, *trained.model.get_weights())
"""


@pytest.mark.slow
def test_a_training_after_three_others_is_the_one_a_fresh_process_trains_and_traces_nothing(tmp_path, register_unet):
    data = tmp_path / "synthetic"
    write_synthetic(data, n_seg=1, n_cls=12, size=40, seed=4)
    encoder = registry.version_uri(names.SEGMENTATION_MODEL, register_unet(run_name="encoder").version)
    configs = [ClassifierConfig.from_defaults(loss, str(data / "chest_xray"), variant=variant, seed=seed,
                                              encoder=encoder, img_size=32, epochs=2, batch_size=4, patience=2,
                                              ci_method="wald") for loss, variant, seed in SEQUENCE]
    store.configure()
    graph.forget_graphs()
    traces, weights = [], []
    with registry.models_kept_in_memory():
        for config in configs:
            with store.stage_run("classification", run_name=config.loss):
                trained = train_classifier(config)
            traces.append(next(iter(graph._graphs.values())).tracing_counts())
            weights.append(trained.model.get_weights())
            tf_keras.backend.clear_session()            # as the pipeline does between steps
    assert len(graph._graphs) == 1
    assert traces[0] == {"train": 1, "test": 1, "predict": 1}
    assert traces[-1] == traces[0], "a later training traced again"
    in_process = weights[-1]

    out = tmp_path / "fresh.npz"
    argument = json.dumps([*SEQUENCE[-1], str(data / "chest_xray"), encoder, str(out)])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN_ONE), argument], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = np.load(out)
    fresh = [fresh[f"arr_{k}"] for k in range(len(fresh.files))]
    assert len(fresh) == len(in_process)
    # Tolerance zero: the same kernels run the same ops on the same inputs in the same order (the
    # reset leaves nothing of the earlier trainings: weights, BatchNorm statistics, optimizer slots,
    # step count, learning rate, dropout state), so every float comes out bit for bit the same.
    for ours, theirs in zip(in_process, fresh):
        np.testing.assert_array_equal(ours, theirs)
    assert not np.allclose(in_process[-1], weights[-2][-1], atol=1e-3)   # another training ends elsewhere
    graph.forget_graphs()


# The two calls every training makes that would clear TensorFlow's eager kernel cache.
CACHE_CLEARING_CALLS = {"clear_session": lambda: graph.clear_session(), "seed_training": lambda: graph.seed_training(7)}


@pytest.mark.parametrize("call", CACHE_CLEARING_CALLS)
@pytest.mark.parametrize("holding_graphs", [False, True])
def test_session_and_seed_resets_keep_the_kernel_cache_only_while_graphs_are_shared(holding_graphs, call,
                                                                                    monkeypatch):
    import random

    from tensorflow.python import pywrap_tfe
    from tensorflow.python.eager import context
    from tf_keras.src import backend

    context.ensure_initialized()                               # else there is no cache to clear
    cleared = []
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda handle: cleared.append(handle))
    counting = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(graph, "_graphs", {"a shared graph": object()} if holding_graphs else {})
    backend.get_uid("probe")
    random.seed(1)
    CACHE_CLEARING_CALLS[call]()
    if call == "clear_session":
        assert backend.get_uid("probe") == 1                   # Keras' state was reset either way
    else:                                                      # the seeds were set either way
        assert random.random() == random.Random(7).random()
        assert np.random.rand() == np.random.RandomState(7).rand()
        assert context.global_seed() == 7
    # kept while a graph is shared: clearing it makes the next training instantiate its graph again
    assert len(cleared) == (0 if holding_graphs else 1)
    assert pywrap_tfe.TFE_ContextClearCaches is counting       # the block put back what it found
