"""Plug-in packages: a registry package whose every module registers itself on import, so adding an extension
(a training extra, an optimizer, a pruning method) is adding a file, and no list of its code is kept anywhere."""
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

