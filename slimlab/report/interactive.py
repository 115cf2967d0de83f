"""Figures as plotly objects for the HTML page: SVG traces (no WebGL) but for parallel coordinates."""
from __future__ import annotations

from slimlab.errors import require
from slimlab.report.spec import Figure, Parallel, Series

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
        return _parallel(go, figure)
    fig = go.Figure([_trace(go, s) for s in figure.series])
    fig.update_layout(title=_title(figure.title, figure.subtitle), template="plotly_white", height=520,
                      xaxis_title=figure.x_title, yaxis_title=figure.y_title, legend=dict(orientation="h", y=-0.22))
    return fig


def _parallel(go, figure: Parallel):
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
