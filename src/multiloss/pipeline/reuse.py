"""Run reuse: which finished run already did a pipeline step.

A step is done when a FINISHED run of the same entry point exists with the same parameters
(compared as strings, as MLflow's multi-step example does), the same code version and the same input
fingerprint. The code version is a hash of the source the entry point runs and of its
MLproject declaration, not the git commit: a commit says nothing about uncommitted edits, a
checkout without git has none, and an edit to one stage should not make every other stage rerun.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from multiloss import names, paths


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The source file of module ``multiloss.<...>`` (None for a name that is not a module)."""
    target = package_dir.joinpath(*name.split(".")[1:])
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """The ``multiloss`` modules a file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "multiloss")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "multiloss":
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def source_files(module: str, package_dir: Path = paths.PACKAGE_DIR) -> list[Path]:
    """Every package file that importing ``module`` runs: its imports, followed transitively, and
    the ``__init__`` of each package on the way."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix not in seen and (path := _module_file(prefix, package_dir)) is not None:
                seen[prefix] = path
                pending.extend(_imported_modules(path))
    return sorted(seen.values())


def code_version(module: str, entry_point: dict, package_dir: Path = paths.PACKAGE_DIR) -> str:
    """A hash of the source an entry point runs (its module and every package module it imports,
    names and bytes) and of its MLproject declaration. Edits elsewhere keep its runs reusable."""
    digest = hashlib.blake2b(digest_size=12)
    for path in source_files(module, package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(entry_point, sort_keys=True).encode())
    return digest.hexdigest()


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


def find_reusable(entry_point: str, params: dict[str, str], code: str, input_fingerprint: str) -> Run | None:
    """The newest FINISHED run of ``entry_point`` with these parameters, code version and input."""
    client = mlflow.MlflowClient()
    query = (f"tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = '{_quoted(entry_point)}' and attributes.status = 'FINISHED' "
             f"and tags.{names.CODE_VERSION_TAG} = '{code}' "
             f"and tags.{names.INPUT_FINGERPRINT_TAG} = '{_quoted(input_fingerprint)}'")
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiments, query, order_by=["attributes.start_time DESC"]):
        if all(run.data.params.get(key) == str(value) for key, value in params.items()):
            return run
    return None
