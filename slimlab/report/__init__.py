"""Reports read the store only; they never import training code. One module per question: what is in the store for a
study (study.py), what each figure means (metrics.py), which tables (tables.py) and figures (figures.py) it gets, how
a report is written (page.py), which run to recommend (recommend.py), and exports to trackers (export.py)."""
from slimlab.report.page import write_report, write_runs_report
from slimlab.report.recommend import format_recommendation, recommend, write_experiment
from slimlab.report.study import find_runs, list_studies, load_study, runs_study

__all__ = ["find_runs", "format_recommendation", "list_studies", "load_study", "recommend", "runs_study", "write_experiment",
           "write_report", "write_runs_report"]
