"""Markdown tables (report.tables): a cell's text stays in its cell and its row."""

import pandas as pd

from multiloss.report.tables import markdown_cell, markdown_table


def test_a_pipe_or_a_line_break_in_a_cell_keeps_the_table_shape():
    table = pd.DataFrame({"Flags": ["⚠ degenerate: a | b", "two\nlines"], "MCC": [0.5, 0.25]},
                         index=pd.Index(["cce", "focal"], name="Loss"))
    lines = markdown_table(table).splitlines()
    assert lines == ["| Loss | Flags | MCC |", "|---|---|---|",
                     r"| cce | ⚠ degenerate: a \| b | 0.5000 |", "| focal | two lines | 0.2500 |"]
    assert markdown_cell("plain text") == "plain text"
