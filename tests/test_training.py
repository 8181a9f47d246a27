"""Training plumbing: the training step is traced once, and creating its variables first changes no result."""

import mlflow
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from multiloss.tracking import store
from multiloss.training import (
    KeepBestWeights,
    best_epoch_of,
    create_training_variables,
    fit_keeping_best,
    momentum_sgd,
    optimizer_variables,
    repeated_for_fit,
)


def tiny_model(optimizer) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(3)
    inputs = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    outputs = tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(6)       # 6, 6, 6, 2: a partial last batch


OPTIMIZERS = {"sgd_momentum": lambda: tf_keras.optimizers.SGD(0.1, momentum=0.9),
              "momentum_sgd": lambda: momentum_sgd(0.1, 0.9),
              "legacy_adam": lambda: tf_keras.optimizers.legacy.Adam(0.01)}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_variables_made_before_fit_spare_a_second_trace_and_change_no_weight(optimizer):
    plain, prepared = tiny_model(OPTIMIZERS[optimizer]()), tiny_model(OPTIMIZERS[optimizer]())
    np.testing.assert_array_equal(plain.get_weights()[0], prepared.get_weights()[0])
    create_training_variables(prepared, batches().element_spec)
    assert len(optimizer_variables(prepared.optimizer)) > 1 and prepared.optimizer.iterations.numpy() == 0
    plain_history = plain.fit(batches(), validation_data=batches(), epochs=2, verbose=0).history
    prepared_history = prepared.fit(batches(), validation_data=batches(), epochs=2, verbose=0).history

    assert plain.train_function.experimental_get_tracing_count() == 2       # Keras alone: traced twice
    assert prepared.train_function.experimental_get_tracing_count() == 1
    for key in ("loss", "accuracy", "val_loss"):
        np.testing.assert_allclose(prepared_history[key], plain_history[key], rtol=1e-6)
    for a, b in zip(prepared.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "momentum_sgd"])
def test_a_model_with_its_variables_made_is_not_run_again(monkeypatch, optimizer):
    """A shared graph's later trainings: everything exists, so no eager pass over the network."""
    model = tiny_model(OPTIMIZERS[optimizer]())
    create_training_variables(model, batches().element_spec)
    slots = [v.ref() for v in optimizer_variables(model.optimizer)]

    def refuse(*args, **kwargs):
        raise AssertionError("the model was run again")
    monkeypatch.setattr(model, "compute_loss", refuse)
    create_training_variables(model, batches().element_spec)
    assert [v.ref() for v in optimizer_variables(model.optimizer)] == slots      # the same slots, none made


def applied_op_types(optimizer, model) -> list[str]:
    """The op types of one traced ``apply_gradients`` over ``model``'s variables."""
    variables = model.trainable_variables

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.ones_like(v), v) for v in variables])
    return [op.type for op in step.get_concrete_function().graph.get_operations()]


def test_momentum_sgd_updates_each_variable_in_one_fused_kernel_and_trains_to_the_same_bits():
    fused, plain = tiny_model(momentum_sgd(0.1, 0.9)), tiny_model(tf_keras.optimizers.SGD(0.1, momentum=0.9))
    fused_history = fused.fit(batches(), validation_data=batches(), epochs=3, verbose=0).history
    plain_history = plain.fit(batches(), validation_data=batches(), epochs=3, verbose=0).history

    assert fused_history == plain_history
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    n_variables = len(fused.trainable_variables)
    fused_ops = applied_op_types(fused.optimizer, fused)
    plain_ops = applied_op_types(plain.optimizer, plain)
    assert fused_ops.count("ResourceApplyKerasMomentum") == n_variables
    assert "ResourceApplyKerasMomentum" not in plain_ops and len(plain_ops) > len(fused_ops)


def test_fit_keeping_best_traces_its_step_once():
    model = tiny_model(tf_keras.optimizers.SGD(0.1, momentum=0.9))
    store.configure()
    with mlflow.start_run():
        result = fit_keeping_best(model, batches(), batches(), epochs=2, images_per_epoch=20, patience=2)
    assert model.train_function.experimental_get_tracing_count() == 1
    assert result["epochs_run"] == 2


def shuffled_batches() -> tf.data.Dataset:
    """20 examples reshuffled every pass, with a random draw per example (as the augmentation's seeds)."""
    rng = np.random.default_rng(1)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)]
    noise = tf.data.Dataset.random(seed=5, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(20, seed=3), noise)
    return ds.map(lambda xy, n: (xy[0] + tf.cast(n % 7, tf.float32) / 100, xy[1])).batch(6)


def test_fit_keeping_best_trains_on_the_batches_of_kerass_own_per_epoch_iterators():
    """One iterator for all epochs, yet each epoch's batches are those Keras' fit would draw (whose
    first iterator, never read, takes the first permutation): same losses, same weights."""
    keras_model, ours = tiny_model(tf_keras.optimizers.SGD(0.1, momentum=0.9)), \
        tiny_model(tf_keras.optimizers.SGD(0.1, momentum=0.9))
    keras_history = keras_model.fit(shuffled_batches(), validation_data=batches(), epochs=3, verbose=0).history
    store.configure()
    with mlflow.start_run():
        fit_keeping_best(ours, shuffled_batches(), batches(), epochs=3, images_per_epoch=20, patience=5)
    ours_history = ours.history.history
    assert keras_history["loss"][0] != keras_history["loss"][1]
    np.testing.assert_array_equal(ours_history["loss"], keras_history["loss"])
    np.testing.assert_array_equal(ours_history["val_loss"], keras_history["val_loss"])


def test_fit_keeping_best_makes_one_training_iterator_however_many_epochs(monkeypatch):
    made = []
    make = tf.data.Dataset.__iter__
    monkeypatch.setattr(tf.data.Dataset, "__iter__", lambda self: made.append(1) or make(self))
    model = tiny_model(tf_keras.optimizers.SGD(0.1, momentum=0.9))
    store.configure()
    with mlflow.start_run():
        fit_keeping_best(model, shuffled_batches(), batches(), epochs=4, images_per_epoch=20, patience=5)
    assert len(made) == 2 + 4          # training: the dropped one and Keras' one; validation: one an epoch
                                       # (Keras alone: 1 + 4 and 2 an epoch, 13)


@pytest.mark.parametrize("dataset, steps", [
    (lambda: batches(), 4),                                              # 6, 6, 6, 2
    (lambda: batches().repeat(), None),                                  # infinite: as it is
    (lambda: batches().filter(lambda x, y: True), None),                 # unknown length: as it is
])
def test_a_finite_dataset_is_repeated_with_its_batches_per_pass_as_steps(dataset, steps):
    given = dataset()
    repeated, per_epoch = repeated_for_fit(given)
    assert per_epoch == steps
    if steps is None:
        assert repeated is given
    else:
        assert int(repeated.cardinality()) == tf.data.INFINITE_CARDINALITY
        first_pass = [b[0].shape[0] for b in repeated.take(steps)]
        assert first_pass == [6, 6, 6, 2]


def test_the_best_epochs_weights_come_back_and_a_nan_loss_is_never_the_best():
    model = tiny_model(tf_keras.optimizers.SGD(0.1))
    keep = KeepBestWeights()
    keep.set_model(model)
    snapshots = []
    for epoch, val_loss in enumerate([3.0, 1.0, float("nan"), 2.0]):
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        snapshots.append(model.get_weights())
        keep.on_epoch_end(epoch, {"val_loss": val_loss})
    keep.restore()
    for restored, expected in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(restored, expected)
    assert keep.best == 1.0

    never = KeepBestWeights()
    never.set_model(model)
    never.on_epoch_end(0, {"val_loss": float("nan")})
    never.restore()                                     # nothing better than inf: the weights stay
    np.testing.assert_array_equal(model.get_weights()[0], snapshots[1][0])


@pytest.mark.slow
def test_under_mirrored_strategy_keras_makes_the_variables_and_fit_keeping_best_still_trains(python_on_two_cpus):
    out = python_on_two_cpus("""
        import mlflow
        from multiloss.tracking import store
        from multiloss.training import fit_keeping_best
        with strategy.scope():
            inputs = tf_keras.Input((8, 8, 1))
            x = tf_keras.layers.GlobalAveragePooling2D()(tf_keras.layers.Conv2D(4, 3)(inputs))
            model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))
            model.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="categorical_crossentropy",
                          metrics=["accuracy"])
        rng = np.random.default_rng(0)
        data = tf.data.Dataset.from_tensor_slices((rng.random((12, 8, 8, 1)).astype("float32"),
                                                   np.eye(3, dtype="float32")[np.arange(12) % 3])).batch(4)
        store.configure()
        with mlflow.start_run():
            result = fit_keeping_best(model, data, data, epochs=2, images_per_epoch=12, patience=2)
        print("epochs", result["epochs_run"], "traces", model.train_function.experimental_get_tracing_count())
    """)
    assert out.split()[-4:] == ["epochs", "2", "traces", "2"]


@pytest.mark.parametrize("losses, expected", [
    ([0.9, 0.5, 0.7], (2, 0.5)),
    ([float("nan"), 0.8, 0.6, float("nan")], (3, 0.6)),    # argmin alone would answer the NaN epoch 1
    ([float("inf"), 0.4, 0.4], (2, 0.4)),                  # a tie keeps the first, as KeepBestWeights does
])
def test_the_best_epoch_is_the_one_whose_weights_come_back(losses, expected):
    assert best_epoch_of(losses) == expected


def test_with_no_finite_epoch_the_last_epochs_weights_stay_and_are_reported():
    epoch, loss = best_epoch_of([float("nan"), float("nan")])
    assert epoch == 2 and np.isnan(loss)
