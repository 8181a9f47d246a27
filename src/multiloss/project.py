"""The MLproject file: its entry points and the parameters each declares with their defaults, the
one place a stage default is written (stage parsers and library configs read it from here)."""

from __future__ import annotations

import functools

import yaml

from multiloss import paths

TRUE_TEXTS, FALSE_TEXTS = ("true", "1", "yes"), ("false", "0", "no", "")


def boolean_text(text: str) -> bool | None:
    """A boolean parameter as MLflow passes it, a string: True, False, or None when it is neither."""
    text = str(text).strip().lower()
    return True if text in TRUE_TEXTS else False if text in FALSE_TEXTS else None


@functools.cache
def entry_points() -> dict[str, dict]:
    return yaml.safe_load(paths.PROJECT_FILE.read_text())["entry_points"]


def declared_parameters(entry_point: str) -> dict[str, dict]:
    """MLproject's parameters of ``entry_point``: name -> {type, default}."""
    try:
        return entry_points()[entry_point].get("parameters", {})
    except KeyError:
        raise KeyError(f"{paths.PROJECT_FILE} declares no entry point {entry_point!r}") from None
