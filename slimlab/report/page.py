"""How a report is written: one HTML page (plotly.js inlined, every table and figure, a sentence for each figure left
out), a PNG per figure (matplotlib, no browser) and a CSV and Markdown file per table, in one folder."""
from __future__ import annotations

import html
import textwrap
import time
from pathlib import Path
from typing import Sequence

from slimlab.errors import require
from slimlab.report.figures import Chart, Figure, Figures, Parallel, Series, build_figures, read_references
from slimlab.report.study import Study, load_study, runs_study
from slimlab.report.tables import Table, build_tables, to_csv, to_html, to_markdown


# --- Figures as plotly objects for the HTML page: SVG traces (no WebGL) but for parallel coordinates ------------------


SYMBOLS = {"circle": "circle", "circle-open": "circle-open", "star": "star", "diamond": "diamond", "x": "x"}


def _trace(go, s: Series):
    if s.mode == "bar":
        return go.Bar(name=s.name, x=s.x, y=s.y, hovertext=s.hover, marker_color=s.color, opacity=s.opacity)
    return go.Scatter(
        name=s.name, x=s.x, y=s.y, mode=s.mode + ("+text" if s.labels else ""), text=s.labels, textposition="top center",
        hovertext=s.hover, opacity=s.opacity, marker=dict(symbol=SYMBOLS[s.symbol], color=s.color, size=11 if s.symbol == "star" else 8),
        line=dict(color=s.color, dash=s.dash, width=s.width),
        error_y=dict(type="data", array=s.error_y, visible=True) if s.error_y and any(s.error_y) else None)


def _title(title: str, subtitle: str) -> dict:
    return dict(text=f"{title}<br><sup>{subtitle}</sup>", x=0.01)


def to_plotly(figure: Figure):
    """A plotly Figure of a chart or a parallel-coordinates spec."""
    go = require("plotly.graph_objects", "report", "the HTML report")
    if isinstance(figure, Parallel):
        return _plotly_parallel(go, figure)
    fig = go.Figure([_trace(go, s) for s in figure.series])
    fig.update_layout(title=_title(figure.title, figure.subtitle), template="plotly_white", height=520,
                      xaxis_title=figure.x_title, yaxis_title=figure.y_title, legend=dict(orientation="h", y=-0.22))
    return fig


def _plotly_parallel(go, figure: Parallel):
    dims = [dict(label=d.label, values=d.values, **({"tickvals": list(d.ticks), "ticktext": list(d.ticks.values())} if d.ticks else {}))
            for d in figure.dimensions]
    trace = go.Parcoords(dimensions=dims, line=dict(color=figure.color, colorscale="Viridis", showscale=True,
                                                    colorbar=dict(title=dict(text=figure.color_title))))
    fig = go.Figure(trace)
    fig.update_layout(title=_title(figure.title, figure.subtitle), template="plotly_white", height=520, margin=dict(l=80, r=80, t=110))
    return fig


def plotly_js() -> str:
    """The plotly.js bundle, to inline in the page: the report makes no network request."""
    return require("plotly.offline", "report", "the HTML report").get_plotlyjs()


def figure_div(figure: Figure) -> str:
    """A <div> and the script that draws it; plotly.js must already be on the page."""
    config = {"displaylogo": False, "showSendToCloud": False, "responsive": True}
    return to_plotly(figure).to_html(full_html=False, include_plotlyjs=False, div_id=figure.key, config=config)


# --- Figures as PNG files drawn with matplotlib, from the same specs as the HTML page ---------------------------------


MARKERS = {"circle": "o", "circle-open": "o", "star": "*", "diamond": "D", "x": "x"}
DASHES = {"solid": "-", "dash": "--", "dot": ":"}


def _pyplot():
    matplotlib = require("matplotlib", "report", "the PNG figures")
    matplotlib.use("Agg")  # no display, no browser
    return require("matplotlib.pyplot", "report", "the PNG figures")


def _draw(ax, s: Series, position: dict | None) -> None:
    """`position` maps category names to x positions when the chart's x axis is categorical (layers), else None."""
    xs = [position.setdefault(x, len(position)) for x in s.x] if position is not None else s.x
    if s.mode == "bar":
        ax.bar(xs, s.y, color=s.color, alpha=s.opacity, label=s.name)
        return
    fmt = (MARKERS[s.symbol] if "markers" in s.mode else "") + (DASHES[s.dash] if "lines" in s.mode else "")
    ax.errorbar(xs, s.y, yerr=s.error_y if s.error_y and any(s.error_y) else None, fmt=fmt, color=s.color, alpha=s.opacity,
                linewidth=s.width, capsize=3, label=s.name, markersize=10 if s.symbol == "star" else 6,
                markerfacecolor="none" if s.symbol == "circle-open" else None)
    for x, y, text in zip(xs, s.y, s.labels or []):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)


def _chart(plt, chart: Chart):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    position = {} if any(s.mode == "bar" for s in chart.series) else None
    for s in chart.series:
        _draw(ax, s, position)
    if position:
        ax.set_xticks(list(position.values()), list(position), rotation=90, fontsize=6)
    ax.set_xlabel(chart.x_title)
    ax.set_ylabel(chart.y_title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[-12:], labels[-12:], fontsize=7)  # the last series are the highlighted ones; all would hide the plot
    return fig


def _png_parallel(plt, figure: Parallel):
    fig, ax = plt.subplots(figsize=(11, 5.5))
    lows = [min(d.values) for d in figure.dimensions]
    spans = [(max(d.values) - lo) or 1.0 for d, lo in zip(figure.dimensions, lows)]
    cmap, cmin, cspan = plt.get_cmap("viridis"), min(figure.color), (max(figure.color) - min(figure.color)) or 1.0
    for i, c in enumerate(figure.color):
        ys = [(d.values[i] - lo) / s for d, lo, s in zip(figure.dimensions, lows, spans)]
        ax.plot(range(len(ys)), ys, color=cmap((c - cmin) / cspan), alpha=0.7)
    for j, (d, lo, s) in enumerate(zip(figure.dimensions, lows, spans)):
        ax.axvline(j, color="black", linewidth=0.8)
        ticks = d.ticks or {lo: f"{lo:.3g}", lo + s: f"{lo + s:.3g}"}
        for value, text in ticks.items():
            ax.annotate(str(text), (j, (value - lo) / s), xytext=(3, 0), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(figure.dimensions)), ["\n".join(textwrap.wrap(d.label, 18)) for d in figure.dimensions], fontsize=7)
    ax.set_yticks([])
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(cmin, cmin + cspan))
    fig.colorbar(sm, ax=ax, label=figure.color_title)
    return fig


def write_png(figure: Figure, path: Path) -> Path:
    """Draw `figure` into a PNG at `path`, with its title, subtitle and note."""
    plt = _pyplot()
    fig = _png_parallel(plt, figure) if isinstance(figure, Parallel) else _chart(plt, figure)
    fig.suptitle(f"{figure.title}\n{figure.subtitle}", fontsize=10)
    if figure.note:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(figure.note, 160)), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.05 if figure.note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- The page ---------------------------------------------------------------------------------------------------------


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


# --- The folder -------------------------------------------------------------------------------------------------------


def write_report(store_root: str | Path, study: str | None, out_dir: str | Path, references_csv: str | Path | None = None,
                 layer_run: str | None = None) -> Path:
    """Write index.html, a PNG per figure and a CSV and Markdown file per table into `out_dir`; return the page's path."""
    return write_study_report(load_study(store_root, study), out_dir, references_csv, layer_run)


def write_runs_report(store_root: str | Path, run_ids: Sequence[str], out_dir: str | Path) -> Path:
    """The same report for some runs of a store (ids or id prefixes), a single run included: what `slimlab run
    --report DIR` writes after the run. Returns the page's path."""
    return write_study_report(runs_study(store_root, run_ids), out_dir)


def write_study_report(loaded: Study, out_dir: str | Path, references_csv: str | Path | None = None,
                       layer_run: str | None = None) -> Path:
    """Write a loaded study's report into `out_dir`; return the page's path."""
    references = read_references(references_csv) if references_csv else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(loaded)
    for table in tables:
        (out / f"{table.key}.csv").write_text(to_csv(table))
        (out / f"{table.key}.md").write_text(f"## {table.title}\n\n{to_markdown(table)}")
    figures = build_figures(loaded, references, layer_run)
    for figure in figures.drawn:
        write_png(figure, out / f"{figure.key}.png")
    page = out / "index.html"
    page.write_text(render_page(loaded, tables, figures))
    return page
