"""`slimlab explore`: a trained model, its data and an accuracy budget in; the fastest configuration within it out.

A producer of plans (docs/explore.md): each stage turns evidence already in the store into run configs and hands them
to the executors that exist, so `-j N`, SLURM and resume-after-kill are theirs.
"""
from slimlab.explore.config import ExploreConfig, load_explore_config
from slimlab.explore.search import Explored, explore

__all__ = ["ExploreConfig", "Explored", "explore", "load_explore_config"]
