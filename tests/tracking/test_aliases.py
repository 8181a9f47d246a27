"""The best aliases never cross data sets: a stage sets data-qualified aliases where a version of
other data holds the plain ones, and moves the plain ones for its own data."""

import mlflow
import tf_keras

from multiloss import names
from multiloss.tracking import aliases, registry

A, B = "a" * 64, "b" * 64


def tiny():
    return tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])


def aliases_of(model_name):
    return {a: str(registry.alias_version(model_name, a).version)
            for a in mlflow.MlflowClient().get_registered_model(model_name).aliases}


def test_a_ranking_of_other_data_gets_qualified_aliases_and_leaves_the_plain_ones(register_unet, capsys):
    model = names.SEGMENTATION_MODEL
    ours = [register_unet({names.DATA_FINGERPRINT_TAG: A}, model=tiny(), seed=None).version for _ in range(3)]
    ours = [str(v) for v in ours]
    theirs = [register_unet({names.DATA_FINGERPRINT_TAG: B}, model=tiny(), seed=None).version for _ in range(2)]
    theirs = [str(v) for v in theirs]

    moved = aliases.move_ranked("segment_eval", model, [ours[1], ours[0], ours[2]], A)
    assert moved == {f"{model}@top1": ours[1], f"{model}@top2": ours[0], f"{model}@top3": ours[2],
                     f"{model}@champion": ours[1]}

    moved = aliases.move_ranked("segment_eval", model, [theirs[1], theirs[0]], B)
    qualified = {f"{model}@{names.data_alias(a, B)}": v for a, v in
                 (("top1", theirs[1]), ("top2", theirs[0]), ("champion", theirs[1]))}
    assert moved == qualified
    assert "belongs to version" in capsys.readouterr().out
    assert aliases_of(model) == {"top1": ours[1], "top2": ours[0], "top3": ours[2], "champion": ours[1],
                                 **{k.split("@")[1]: v for k, v in qualified.items()}}

    # A's next ranking keeps to its own plain aliases and drops its top3; B's stay.
    aliases.move_ranked("segment_eval", model, [ours[2], ours[0]], A)
    now = aliases_of(model)
    assert now["champion"] == ours[2] and now["top1"] == ours[2] and "top3" not in now
    assert now[names.data_alias("champion", B)] == theirs[1]


def test_once_the_plain_aliases_are_free_the_qualified_ones_of_that_data_go(register_unet):
    model = names.SEGMENTATION_MODEL
    ours = str(register_unet({names.DATA_FINGERPRINT_TAG: A}, model=tiny(), seed=None).version)
    theirs = str(register_unet({names.DATA_FINGERPRINT_TAG: B}, model=tiny(), seed=None).version)
    aliases.move_ranked("segment_eval", model, [ours], A)
    aliases.move_ranked("segment_eval", model, [theirs], B)
    assert set(aliases_of(model)) == {"champion", "top1", names.data_alias("champion", B), names.data_alias("top1", B)}
    for alias in ("champion", "top1"):                      # A's plain aliases are released
        mlflow.MlflowClient().delete_registered_model_alias(model, alias)
    aliases.move_ranked("segment_eval", model, [theirs], B)
    assert aliases_of(model) == {"champion": theirs, "top1": theirs}
