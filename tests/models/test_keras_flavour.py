"""segmentation-models must build tf-keras (Keras 2) models; importing multiloss must see to it."""

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


def test_unet_is_a_tf_keras_model_in_a_clean_process():
    result = run_python("""
        import multiloss
        import segmentation_models as sm, tf_keras, keras
        model = sm.Unet("efficientnetb0", encoder_weights=None, input_shape=(32, 32, 3))
        print(isinstance(model, tf_keras.Model), isinstance(model, keras.Model), keras.__version__[0])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["True", "False", "3"]


def test_without_the_package_sm_framework_alone_gives_keras_3():
    """The trap the package guards against: this is what users get without it."""
    result = run_python("""
        import segmentation_models as sm, tf_keras
        model = sm.Unet("efficientnetb0", encoder_weights=None, input_shape=(32, 32, 3))
        print(isinstance(model, tf_keras.Model))
    """, SM_FRAMEWORK="tf.keras")
    # Either it builds a Keras 3 model or fails outright; never a tf-keras one.
    assert result.returncode != 0 or result.stdout.split()[-1] == "False"


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
