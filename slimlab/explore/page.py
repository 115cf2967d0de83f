"""explore's page, OUT/report.html: the recommendation first (what, against float and the best single method, why it
beat the runners-up, how to load it), then the front, the sensitivity heatmap, each finalist's coverage, every trial."""
from __future__ import annotations

import html
import math
from pathlib import Path

from slimlab.atomic import write_atomic
from slimlab.report.figures import Chart, Series, non_dominated
from slimlab.report.page import STYLE, figure_div, plotly_js

PAGE = "report.html"
HEAT = "td.h{text-align:right;font-variant-numeric:tabular-nums}pre{white-space:pre-wrap}"


def _answer(answer: str, summary: dict) -> str:
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary["runners_up"])
    why = f"<p>Why not the nearest others:</p><ul>{lines}</ul>" if lines else ""
    return (f"<section><h2>Recommendation</h2><pre>{html.escape(answer)}</pre>{why}"
            f"<p class=note>Selection: {html.escape(summary['selection'])}. The lower bound is the validation change "
            f"less two standard errors of a paired change on that many images.</p></section>")


def front_chart(cfg, result) -> Chart:
    """Validation top-1 change against the objective: the whole-split candidates (front in red, the pick a star, float
    a diamond), and the slice-only ones faint."""
    final = result.final()
    front = set(non_dominated([(s.objective, s.change) for s in final], maximize=(False, True)))
    def series(name, scores, **style):
        return Series(name, [s.objective for s in scores], [s.change for s in scores],
                      hover=[f"{s.label} ({s.images} images)" for s in scores], **style)
    slice_only = [s for s in result.scores.get("rung0", []) if s.label not in {f.label for f in final}]
    drawn = [series("front (whole validation split)", sorted((final[i] for i in front), key=lambda s: s.objective),
                    mode="lines+markers", color="#d62728"),
             series("dominated", [s for i, s in enumerate(final) if i not in front], color="#7f7f7f"),
             series(f"slice only ({cfg.slice_size} images)" if cfg.val_size is None or cfg.slice_size < cfg.val_size
                    else "not promoted (the slice is the whole split)", slice_only, color="#7f7f7f", symbol="circle-open", opacity=0.5)]
    if result.float_score:
        drawn.append(series("float (the reference)", [result.float_score], color="black", symbol="diamond"))
    if result.pick:
        drawn.append(series("recommended", [result.pick], color="#2ca02c", symbol="star"))
    return Chart("front", "Candidates: validation top-1 change against the objective", f"budget: -{cfg.max_drop:g} points",
                 cfg.minimize, "validation top-1 change (points)", drawn)


def _colour(value: float | None) -> str:
    """White at no change, deeper red the more points lost (saturating at 10), green for a gain."""
    if value is None:
        return "#eeeeee"
    depth = min(1.0, abs(value) / 10)
    channel = int(255 - 155 * depth)
    return f"rgb(255,{channel},{channel})" if value < 0 else f"rgb({channel},255,{channel})"


def heatmap(table: list[dict]) -> str:
    """Layer x setting, each cell the top-1 change in points on the slice, coloured by it; 'failed' where the trial
    did not finish (e.g. a layer tied to others by a residual addition cannot lose channels alone)."""
    if not table:
        return "<section><h2>Sensitivity</h2><p>Not measured: the search ended before the sensitivity stage.</p></section>"
    columns = [c for c in table[0] if c != "layer"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["layer", *columns])
    def cell(column, value):
        if column.endswith("_db"):
            return f"<td class=h>{'' if value is None else ('inf' if math.isinf(value) else f'{value:.1f}')}</td>"
        text = "-" if value is None else f"{value:+.2f}"
        return f'<td class=h style="background:{_colour(value)}">{text}</td>'
    rows = "".join(f"<tr><td>{html.escape(r['layer'])}</td>{''.join(cell(c, r[c]) for c in columns)}</tr>" for r in table)
    return (f"<section><h2>Sensitivity: top-1 change (points) with only this layer changed</h2><div class=scroll><table>"
            f"<tr>{head}</tr>{rows}</table></div><p class=note>int8_only: only this layer int8; float_only: every layer "
            f"int8 but this one; unstructured_r, channels_r: only this layer pruned, no fine-tuning. '-': not run or "
            f"failed (sensitivity.csv).</p></section>")


def _coverage(result, store) -> str:
    items = []
    for score in result.finalists():
        record = store.get(score.run_id) if store is not None else None
        lines = (record.notes.get("coverage") or ["no compression step"]) if record else ["not in the store"]
        items.append(f"<li><b>{html.escape(score.label)}</b>: {html.escape('; '.join(lines))}</li>")
    return f"<section><h2>Coverage of the finalists</h2><ul>{''.join(items)}</ul></section>" if items else ""


def _trials(rows: list[dict], total: int) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    rest = f"; the other {total - len(rows)} were sensitivity trials, in the heatmap and sensitivity.csv" if total > len(rows) else ""
    return (f"<section><h2>Every candidate trial</h2><p class=note>{len(rows)} of the {total} trials (trials.csv){rest}.</p>"
            f"<div class=scroll><table><tr>{head}</tr>{body}</table></div></section>")


def write_page(out: Path, cfg, result, summary: dict, answer: str, trials: list[dict], store=None) -> Path:
    """OUT/report.html: one file, plotly.js inlined, no network request. `answer` is the recommendation as the terminal
    prints it, `trials` the rows of trials.csv."""
    front = figure_div(front_chart(cfg, result)) if result.final() else "<p>No candidate was scored on the whole validation split.</p>"
    body = [f"<h1>slimlab explore: {html.escape(cfg.name)}</h1>", _answer(answer, summary),
            f"<section><h2>The front</h2>{front}</section>", heatmap(result.table), _coverage(result, store),
            _trials(trials, max(result.trials, len(trials)))]
    page = (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>slimlab explore: {html.escape(cfg.name)}</title>"
            f"<style>{STYLE}{HEAT}</style><script>{plotly_js()}</script></head><body>{''.join(body)}</body></html>\n")
    write_atomic(out / PAGE, page.encode())
    return out / PAGE
