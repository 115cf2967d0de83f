"""Figures as PNG files drawn with matplotlib (no browser), from the same specs as the HTML page."""
from __future__ import annotations

import textwrap
from pathlib import Path

from slimlab.errors import require
from slimlab.report.spec import Chart, Figure, Parallel, Series

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


def _parallel(plt, figure: Parallel):
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
    fig = _parallel(plt, figure) if isinstance(figure, Parallel) else _chart(plt, figure)
    fig.suptitle(f"{figure.title}\n{figure.subtitle}", fontsize=10)
    if figure.note:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(figure.note, 160)), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.05 if figure.note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
