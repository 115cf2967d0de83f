"""slimlab: train, quantize, prune and measure neural networks, and compare the trade-offs."""
from slimlab.config import ExperimentConfig, config_hash, load_config
from slimlab.data import list_datasets, load_dataset
from slimlab.errors import ConfigError, SlimlabError
from slimlab.executors import ExecOptions, execute
from slimlab.models import create_model, list_models, register_model
from slimlab.plan import load_study, plan_stages
from slimlab.run import run
from slimlab.store import Store, load_runs

__all__ = ["ExperimentConfig", "config_hash", "load_config", "list_datasets", "load_dataset", "ConfigError", "SlimlabError",
           "create_model", "list_models", "register_model", "run", "Store", "load_runs", "load_study", "plan_stages",
           "execute", "ExecOptions"]
__version__ = "0.1.0"
