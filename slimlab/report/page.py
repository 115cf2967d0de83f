"""The report's single HTML page: plotly.js inlined, every table and figure, a sentence for each figure left out."""
from __future__ import annotations

import html
import time

from slimlab.report.interactive import figure_div, plotly_js
from slimlab.report.spec import Figures
from slimlab.report.study import Study
from slimlab.report.tables import Table, to_html

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:13px}.skipped{color:#8a4b00}section{margin-bottom:2.5em}.scroll{overflow-x:auto}"""


def _table_section(table: Table) -> str:
    links = f'<a href="{table.key}.csv">CSV</a> · <a href="{table.key}.md">Markdown</a>'
    return f"<section><h2>{html.escape(table.title)}</h2><p class=note>{links}</p><div class=scroll>{to_html(table)}</div></section>"


def _figure_section(figure) -> str:
    note = f"<p class=note>{html.escape(figure.note)}</p>" if figure.note else ""
    link = f'<p class=note><a href="{figure.key}.png">PNG</a></p>'
    return f"<section>{figure_div(figure)}{note}{link}</section>"


def _summary(study: Study) -> str:
    counts = {}
    for r in study.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    said = ", ".join(f"{n} {s}" for s, n in counts.items())
    return (f"<p>Store <code>{html.escape(str(study.store.root))}</code> · {len(study.runs)} runs ({html.escape(said)}) · "
            f"written {time.strftime('%Y-%m-%d %H:%M')}</p>")


def render_page(study: Study, tables: list[Table], figures: Figures) -> str:
    """The whole page as one string: it opens from disk with no server and no network request."""
    skipped = "".join(f"<li class=skipped><b>{html.escape(s.title)}</b>: {html.escape(s.reason)}</li>" for s in figures.skipped)
    body = [f"<h1>Study: {html.escape(study.name)}</h1>", _summary(study), *map(_table_section, tables),
            *map(_figure_section, figures.drawn), f"<section><h2>Figures left out</h2><ul>{skipped}</ul></section>" if skipped else ""]
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>slimlab report: {html.escape(study.name)}</title>"
            f"<style>{STYLE}</style><script>{plotly_js()}</script></head><body>{''.join(body)}</body></html>\n")
