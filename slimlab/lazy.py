"""A package whose public names resolve on first use (PEP 562): importing one of its modules (a config class) then
initializes nothing else, so slimlab.config can validate a step without importing the step's code."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_api(package: str, api: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose `api` maps each public name to its module."""

    def __getattr__(name: str):
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(api[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *api})

    return __getattr__, __dir__
