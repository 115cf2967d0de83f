"""slimlab: train, quantize, prune and measure neural networks, and compare the trade-offs."""
from __future__ import annotations

import importlib
import sys
import types

# The public API: each name and the module that defines it, imported on first use, so that `import slimlab` (and with
# it every `slimlab.x` import, the CLI's included) loads no torch until something asks for it: `slimlab --help`,
# `status` and `studies` stay torch-free (measured with `python -X importtime`; tests/test_cli.py checks it).
_API = {
    "ExperimentConfig": "slimlab.config", "config_hash": "slimlab.config", "load_config": "slimlab.config",
    "list_datasets": "slimlab.data", "load_dataset": "slimlab.data",
    "ConfigError": "slimlab.errors", "SlimlabError": "slimlab.errors",
    "ExecOptions": "slimlab.executors", "execute": "slimlab.executors",
    "create_model": "slimlab.models", "list_models": "slimlab.models", "register_model": "slimlab.models",
    "load_study": "slimlab.plan", "plan_stages": "slimlab.plan",
    "run": "slimlab.run",
    "Store": "slimlab.store", "load_runs": "slimlab.store",
}
__all__ = list(_API)
__version__ = "0.1.0"


class _Package(types.ModuleType):
    """slimlab's module type: API names resolve on first use, and the function `run` is never replaced by the module
    `slimlab.run`, which Python binds here when that module is imported."""

    def __getattr__(self, name: str):
        if name not in _API:
            raise AttributeError(f"module 'slimlab' has no attribute {name!r}")
        value = getattr(importlib.import_module(_API[name]), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_API})


sys.modules[__name__].__class__ = _Package
