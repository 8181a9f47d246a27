"""The isolated environments MLflow builds (`--env-manager uv` / `virtualenv`), for the project and
for a logged model, come from requirements.txt: checked with MLflow's own readers, nothing built."""

from pathlib import Path

import mlflow
import tf_keras
from mlflow.projects import _project_spec, env_type
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.requirements_utils import _parse_requirements
from packaging.specifiers import SpecifierSet

from multiloss import paths
from multiloss.tracking import registry

REPO = paths.CHECKOUT


def requirements(python_env: _PythonEnv, base_dir: Path) -> list[str]:
    """The packages MLflow installs for ``python_env``, its ``-r`` files read from ``base_dir``."""
    return [r.req_str for r in _parse_requirements(python_env.dependencies, is_constraint=False, base_dir=base_dir)]


def test_python_env_is_requirements_txt_and_the_same_environment_as_conda_yaml():
    python_env = _PythonEnv.from_yaml(REPO / "python_env.yaml")
    assert requirements(python_env, REPO) == registry.pip_requirements()          # requirements.txt, line for line
    assert python_env.to_dict() == _PythonEnv.from_conda_yaml(REPO / "conda.yaml").to_dict()
    pyproject = (REPO / "pyproject.toml").read_text()
    supported = SpecifierSet(pyproject.split('requires-python = "', 1)[1].split('"', 1)[0])
    assert f"{python_env.python}.0" in supported


def test_the_environment_mlflow_run_builds_with_uv_is_python_env_yaml():
    """What MLflow's local backend reads for --env-manager uv/virtualenv: python_env.yaml when the
    MLproject names it, else its conda.yaml converted; either way the same environment."""
    project = _project_spec.load_project(str(REPO))
    built = (_PythonEnv.from_conda_yaml(project.env_config_path) if project.env_type == env_type.CONDA
             else _PythonEnv.from_yaml(project.env_config_path))
    assert built.to_dict() == _PythonEnv.from_yaml(REPO / "python_env.yaml").to_dict()


def test_a_saved_model_carries_a_python_env_of_our_pins(tmp_path):
    """``mlflow models serve --env-manager uv`` builds a model's environment from its python_env.yaml,
    which MLflow writes from the pip requirements registry gives every Keras model it logs (saved
    here without a store, to stay fast; tests/ensembles/test_stage.py reads a registered one's)."""
    image = tf_keras.Input((8, 8, 1))
    model = tf_keras.Model(image, tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.Flatten()(image)))
    local = tmp_path / "model"
    mlflow.tensorflow.save_model(registry.inference_copy(model), str(local),
                                 pip_requirements=registry.pip_requirements())
    python_env = _PythonEnv.from_yaml(local / "python_env.yaml")
    assert requirements(python_env, local) == registry.pip_requirements()
    ours = _PythonEnv.from_yaml(REPO / "python_env.yaml").python
    assert python_env.python.split(".")[:2] == ours.split(".")
