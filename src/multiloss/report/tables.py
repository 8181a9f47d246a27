"""Tables as artifacts: CSV for machines, Markdown for people (no extra dependency)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def markdown_cell(value) -> str:
    """A cell's text as one Markdown table cell: a "|" would end the cell and a line break the
    row (a reason logged as a tag may hold either)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-style Markdown table of ``table`` with its index as the first column."""
    header = [markdown_cell(table.index.name or "")] + [markdown_cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else markdown_cell(v) for v in row.tolist()]
        lines.append("| " + " | ".join([markdown_cell(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, folder: str | os.PathLike, stem: str) -> list[Path]:
    """``stem.csv`` and ``stem.md`` in ``folder``."""
    folder = Path(folder)
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    table.to_csv(csv_path)
    md_path.write_text(markdown_table(table))
    return [csv_path, md_path]
