"""Run reuse: code versions and the finished runs a step may reuse, on a throw-away store."""

from pathlib import Path

from multiloss.pipeline import reuse
from multiloss.tracking import store
from tests.pipeline.conftest import finished_run


def write_package(root: Path) -> Path:
    package = root / "multiloss"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "stages" / "train.py").write_text("from multiloss import helpers\n")
    (package / "helpers.py").write_text("def f():\n    from multiloss.deep import g\n")
    (package / "deep.py").write_text("g = 1\n")
    (package / "other.py").write_text("x = 1\n")
    return package


def test_code_version_follows_the_imported_source_only(tmp_path):
    package = write_package(tmp_path)
    spec = {"parameters": {"a": {"type": "float", "default": 1}}, "command": "python -m multiloss.stages.train"}
    files = [p.relative_to(package).as_posix() for p in reuse.source_files("multiloss.stages.train", package)]
    assert files == ["__init__.py", "deep.py", "helpers.py", "stages/__init__.py", "stages/train.py"]
    before = reuse.code_version("multiloss.stages.train", spec, package)
    (package / "other.py").write_text("x = 2\n")                      # not imported: same version
    assert reuse.code_version("multiloss.stages.train", spec, package) == before
    (package / "deep.py").write_text("g = 2\n")                      # imported inside a function
    changed = reuse.code_version("multiloss.stages.train", spec, package)
    assert changed != before
    other_spec = {**spec, "parameters": {"a": {"type": "float", "default": 2}}}
    assert reuse.code_version("multiloss.stages.train", other_spec, package) != changed


def test_reuses_only_a_finished_run_with_equal_strings_code_and_input():
    store.configure()
    params = {"loss": "bce", "img_size": "64"}
    older = finished_run("segment", params)
    newer = finished_run("segment", {**params, "extra.logged.by.stage": "x"})
    finished_run("segment", params, status="FAILED")
    finished_run("segment", params, status="RUNNING")
    assert reuse.find_reusable("segment", params, "c1", "d1").info.run_id == newer   # newest first
    assert older != newer
    assert reuse.find_reusable("segment", {"loss": "bce", "img_size": "64.0"}, "c1", "d1") is None
    assert reuse.find_reusable("segment", params, "c2", "d1") is None
    assert reuse.find_reusable("segment", params, "c1", "d2") is None
    assert reuse.find_reusable("classify", params, "c1", "d1") is None
