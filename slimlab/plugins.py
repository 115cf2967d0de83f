"""Plug-in packages: a registry package whose every module registers itself on import, so adding an extension
(a training extra, an optimizer, a pruning method) is adding a file, and no list of them is kept anywhere."""
from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType


@functools.cache
def package_modules(package: str) -> tuple[ModuleType, ...]:
    """Import every module of `package` once (their decorators fill its registry); the modules, in name order."""
    root = importlib.import_module(package)
    return tuple(importlib.import_module(f"{package}.{info.name}") for info in sorted(pkgutil.iter_modules(root.__path__)))


def plugin_fields(package: str) -> tuple[type, ...]:
    """The config-field classes (`...Fields`, pydantic) that the modules of a plug-in package define: TrainConfig is
    composed from them, so an extra or optimizer that brings a key needs no edit anywhere else."""
    return tuple(value for module in package_modules(package) for name, value in vars(module).items()
                 if name.endswith("Fields") and isinstance(value, type) and value.__module__ == module.__name__)
