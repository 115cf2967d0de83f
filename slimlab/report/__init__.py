"""Reports read the store only; they never import training code: tables, figures, Pareto fronts, recommendations."""
from slimlab.report.recommend import format_recommendation, recommend, write_experiment
from slimlab.report.study import find_runs, list_studies, load_study, runs_study
from slimlab.report.write import write_report, write_runs_report

__all__ = ["find_runs", "format_recommendation", "list_studies", "load_study", "recommend", "runs_study", "write_experiment",
           "write_report", "write_runs_report"]
