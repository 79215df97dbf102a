"""report.html: one page with the run's config, summary, test metrics and every panel and table, images embedded
(data URIs), so that it opens offline."""
from __future__ import annotations

import base64
import csv
import html
import os
from pathlib import Path

from sweepcnn.io import atomic_write
from sweepcnn.report.compare import PLOT as COMPARE_PLOT
from sweepcnn.report.compare import TABLES as COMPARE_TABLES
from sweepcnn.report.panels import Report
from sweepcnn.report.tables import html_table

COMPARE_FILES = (*(f"{name}.csv" for name in COMPARE_TABLES), COMPARE_PLOT)
_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee}section{margin:2em 0}.caption{color:#555}
details{margin:.5em 0}"""


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _link(path: Path, base: Path) -> str:
    href = os.path.relpath(path, base)
    return f'<a href="{html.escape(href)}">{html.escape(path.name)}</a>'


def _compare_section(run_dir: Path, out_dir: Path) -> str:
    """The comparison that sweepcnn.report.compare wrote into RUN_DIR/compare, if any, shown as it is there."""
    folder = run_dir / "compare"
    if not all((folder / name).is_file() for name in COMPARE_FILES):
        return ""
    links = ", ".join(_link(folder / name, out_dir) for name in COMPARE_FILES)
    parts = ["<section><h2>Strategy and model comparison</h2><p class=caption>From "
             f"<code>python -m sweepcnn.report.compare</code> ({links}).</p>"]
    for name in COMPARE_TABLES:
        with (folder / f"{name}.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        parts.append(f"<h3>{name}</h3>" + (html_table(rows[0], rows[1:]) if rows else ""))
    parts.append(_image(folder / COMPARE_PLOT, "validation accuracy against trainable parameters"))
    return "".join(parts) + "</section>"


def write_html(report: Report, run_dir: Path, cfg: dict, summary: dict) -> Path:
    """report.html: the run's config and summary, the test metrics and every panel and table; images embedded
    (data URIs), so the page opens offline; CSV files linked."""
    out = report.out_dir
    sections = [f"<section><h2>Test metrics</h2>{html_table(['metric', 'value'], list(report.metrics.items()))}"
                f"<h3>Per class</h3>{html_table(*report.tables['per_class'])}<p class=caption>Files: "
                + ", ".join(_link(out / f"{key}.csv", out) for key in report.tables) + "</p></section>"]
    below = {"mistakes": html_table(*report.tables["mistakes"])}
    for panel in report.panels:
        sections.append(f'<section id="{panel.key}"><h2>{html.escape(panel.title)}</h2><p class=caption>'
                        f"{html.escape(panel.caption)} ({_link(panel.path, out)})</p>"
                        f"{_image(panel.path, panel.title)}{below.get(panel.key, '')}</section>")
    sections.append(_compare_section(run_dir, out))
    summary_rows = [(k, v) for k, v in summary.items() if k != "skipped_files"]
    if summary.get("skipped_files"):
        summary_rows.append(("skipped_files", f"{len(summary['skipped_files'])} (listed in summary.json)"))
    title = f"Run {run_dir.name}"
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(report.results.labels)} test images, {len(report.classes)} classes: "
            f"{html.escape(', '.join(report.classes))}.</p>"
            f"<details open><summary>Summary</summary>{html_table(['key', 'value'], summary_rows)}</details>"
            f"<details><summary>Config</summary>{html_table(['key', 'value'], list(cfg.items()))}</details>"
            + "".join(sections) + "</body></html>\n")
    path = out / "report.html"
    atomic_write(path, page)
    return path
