"""Merging a loss's defaults from its family table with what the user passed."""

from __future__ import annotations


def resolve_params(name: str, table: dict[str, dict[str, float]], family: str, **params) -> dict[str, float]:
    """The table's defaults for ``name`` overridden by ``params`` (``None`` = default); a parameter
    the loss does not have is an error naming both."""
    if name not in table:
        raise ValueError(f"unknown {family} loss {name!r}; choose one of {', '.join(table)}")
    given = {k: v for k, v in params.items() if v is not None}
    extra = sorted(set(given) - set(table[name]))
    if extra:
        has = ", ".join(table[name]) or "no parameters"
        raise ValueError(f"{family} loss {name!r} has no parameter {', '.join(extra)} (it has {has})")
    return {**table[name], **{k: float(v) for k, v in given.items()}}
