"""Tables as artifacts: CSV for machines, Markdown for people (no extra dependency)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def markdown_table(table: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-style Markdown table of ``table`` with its index as the first column."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, folder: str | os.PathLike, stem: str) -> list[Path]:
    """``stem.csv`` and ``stem.md`` in ``folder``."""
    folder = Path(folder)
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    table.to_csv(csv_path)
    md_path.write_text(markdown_table(table))
    return [csv_path, md_path]
