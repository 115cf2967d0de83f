"""Reports read the store only; they never import training code: tables, figures, Pareto fronts, recommendations."""
from slimlab.report.recommend import format_recommendation, recommend, write_experiment
from slimlab.report.study import list_studies, load_study
from slimlab.report.write import write_report

__all__ = ["format_recommendation", "list_studies", "load_study", "recommend", "write_experiment", "write_report"]
