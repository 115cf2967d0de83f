"""`write_report`: a study's page, PNG figures and CSV/Markdown tables in one folder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from slimlab.report import curves, layers, parallel, tradeoffs
from slimlab.report.fields import METRICS
from slimlab.report.page import render_page
from slimlab.report.references import read_references
from slimlab.report.spec import Figures
from slimlab.report.static import write_png
from slimlab.report.study import Study, load_study, runs_study
from slimlab.report.tables import comparison_table, runs_table, to_csv, to_markdown


def build_figures(study: Study, references: list[dict], layer_run: str | None = None) -> Figures:
    """Every figure the issue lists, or the sentence that says why the store cannot draw it."""
    figures = Figures()
    figures.add(parallel.parallel_figure(study))
    figures.add(tradeoffs.sparsity_chart(study, references))
    figures.add(tradeoffs.pareto_chart("pareto_size", study, METRICS["size"], METRICS["size"].label, references))
    figures.add(tradeoffs.latency_charts(study, references))
    figures.add(tradeoffs.pareto_chart("pareto_energy", study, METRICS["energy"], METRICS["energy"].label, references))
    figures.add([curves.curve_chart(study, "val_top1"), curves.curve_chart(study, "val_loss")])
    figures.add([layers.sparsity_chart(study, layer_run), layers.sqnr_chart(study, layer_run)])
    return figures


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
    tables = [comparison_table(loaded), runs_table(loaded)]
    for table in tables:
        (out / f"{table.key}.csv").write_text(to_csv(table))
        (out / f"{table.key}.md").write_text(f"## {table.title}\n\n{to_markdown(table)}")
    figures = build_figures(loaded, references, layer_run)
    for figure in figures.drawn:
        write_png(figure, out / f"{figure.key}.png")
    page = out / "index.html"
    page.write_text(render_page(loaded, tables, figures))
    return page
