"""Our models are tf-keras (Keras 2) models: importing multiloss pins the flavour before TensorFlow loads."""

import os
import subprocess
import sys
import textwrap

import pytest


def run_python(code: str, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "SM_FRAMEWORK")}
    env.update(env_overrides)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_our_models_are_tf_keras_models_in_a_clean_process():
    """Our builders, in a process where nothing set the environment first: with SM_FRAMEWORK alone,
    TensorFlow 2.21 would hand segmentation-models Keras 3."""
    result = run_python("""
        from multiloss.models.unet import build_unet
        from multiloss.models.classifier import build_classifier
        import tf_keras, keras
        unet = build_unet()
        classifier = build_classifier(unet)
        print(*(isinstance(m, tf_keras.Model) for m in (unet, classifier)),
              *(isinstance(m, keras.Model) for m in (unet, classifier)), keras.__version__[0])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-5:] == ["True", "True", "False", "False", "3"]


def test_conflicting_environment_is_refused():
    result = run_python("import multiloss", TF_USE_LEGACY_KERAS="0")
    assert result.returncode != 0
    assert "multiloss needs TF_USE_LEGACY_KERAS=1" in result.stderr


def test_importing_segmentation_models_first_is_refused():
    result = run_python("import segmentation_models; import multiloss", SM_FRAMEWORK="tf.keras")
    assert result.returncode != 0
    assert "import multiloss first" in result.stderr


@pytest.mark.parametrize("name, value", [("TF_USE_LEGACY_KERAS", "1"), ("SM_FRAMEWORK", "tf.keras")])
def test_package_sets_the_variables(name, value):
    assert os.environ[name] == value
