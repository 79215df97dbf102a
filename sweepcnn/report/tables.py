"""Tables as CSV, markdown and HTML, with one cell formatter."""
from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweepcnn.io import atomic_writer


def format_cell(value: Any, thousands: bool = False) -> str:
    """How a value reads in a markdown or HTML table: floats to 4 significant digits, lists and dicts as JSON,
    None as empty; with `thousands`, integers grouped by thousands (1,234,567: parameter counts)."""
    if value is None:
        return ""
    if thousands and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Full precision, None as an empty field."""
    with atomic_writer(path, text=True) as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], thousands: bool = False) -> str:
    def cell(value: Any) -> str:
        return format_cell(value, thousands).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
