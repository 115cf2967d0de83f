"""Model registry: `create_model(name, num_classes=...)`, user factories `package.module:factory`, checkpoint weights."""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import sys
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from slimlab.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory `fn(num_classes, in_channels, image_size) -> nn.Module` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> dict[str, str]:
    """Registered model names matching a glob, with their one-line description."""
    _load_builtin()
    return {n: (f.__doc__ or "").strip().splitlines()[0] for n, f in sorted(_REGISTRY.items()) if fnmatch.fnmatch(n, pattern)}


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 weights: str | Path | None = None, **options) -> nn.Module:
    """Build a registered model or a user factory ('package.module:function'); optionally load a state-dict checkpoint.

    `options` go to the factory as keyword arguments (e.g. zero_init_residual=True for the ResNets)."""
    _load_builtin()
    if ":" in name:
        factory = _import_factory(name)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise ConfigError(f"model.name: unknown model '{name}'; known: {', '.join(sorted(_REGISTRY))}, or 'package.module:factory'")
    accepted = inspect.signature(factory).parameters
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in options if k not in accepted and not has_var_kw]
    if unknown:
        raise ConfigError(f"model.options: '{name}' takes no option {', '.join(map(repr, unknown))}")
    model = factory(**{k: v for k, v in offered.items() if has_var_kw or k in accepted}, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: factory '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive: a zip with the module's constants beside its code."""
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") for n in archive.namelist())


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (weights_only, so a checkpoint cannot run code); accepts {'model': sd} or {'state_dict': sd} too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: checkpoint {path} does not exist")
    fix = "save one with torch.save(model.state_dict(), PATH) (it is loaded weights-only, so that it cannot run code)"
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        raise ConfigError(f"model.weights: {path} is a TorchScript archive, not a state dict; {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; torch's own message advises weights_only=False
        what = "a pickle of more than tensors (a whole model?)" if "Weights only load failed" in str(exc) else "not a torch checkpoint"
        raise ConfigError(f"model.weights: {path} is {what}, not a state dict; {fix}") from None
    if not isinstance(blob, dict):
        raise ConfigError(f"model.weights: {path} holds a {type(blob).__name__}, not a state dict; save torch.save(model.state_dict(), PATH)")
    for key in ("model", "state_dict", "model_state"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    blob = {k.removeprefix("module."): v for k, v in blob.items()}
    try:
        model.load_state_dict(blob)
    except RuntimeError as exc:
        raise ConfigError(f"model.weights: {path} does not fit the model: {_misfit(model.state_dict(), blob) or str(exc).splitlines()[0]}; "
                           "check model.name and model.options (and the data's classes and channels) against the checkpoint") from None


def _misfit(expected: dict, found: dict) -> str:
    """What differs between a model's state dict and a checkpoint's, in one line: counts, and a few names each."""
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in expected if k not in found]
    unknown = [k for k in found if k not in expected]
    shapes = [f"{k} is {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} in the model" for k in found
              if k in expected and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = ([f"{len(missing)} of the model's {len(expected)} entries are not in the file ({some(missing)})"] if missing else []) + \
            ([f"{len(unknown)} entries of the file are not in the model ({some(unknown)})"] if unknown else []) + shapes[:2]
    return "; ".join(parts)


def check_factory(spec: str) -> None:
    """Import a user factory 'package.module:function' now, so that a study refuses a missing one before it starts."""
    _import_factory(spec)


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    module = _import_user_module(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module.__name__)
        known = f"; its functions: {', '.join(found)}" if found else ""
        raise ConfigError(f"model.name: '{module_name}' ({getattr(module, '__file__', '?')}) has no callable '{attr}'{known}")
    return factory


def _import_user_module(module_name: str):
    """Import a user's module as `python -m` would: from sys.path, else from the current folder (the `slimlab` script's
    own folder, not the current one, heads sys.path); a module that truly is not there gets how to make it findable."""
    here = os.getcwd()
    if here not in [os.path.abspath(p or ".") for p in sys.path]:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0]:
                return _import(module_name, here)  # found, but something it imports is missing: said in one line
        sys.path.insert(0, here)
        importlib.invalidate_caches()
    return _import(module_name, here)


def _import(module_name: str, here: str):
    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == top:
            raise ConfigError(f"model.name: no module named '{top}' in the current folder ({here}) or on sys.path; run "
                              f"slimlab from the folder that holds {top}.py (or the {top}/ package), or add that folder to "
                              f"PYTHONPATH, e.g. PYTHONPATH=/path/to/folder slimlab run ...") from exc
        raise ConfigError(f"model.name: module '{module_name}' was found, but importing it failed: {exc}; install "
                          f"'{exc.name}' or fix the import in it") from None
    except Exception as exc:  # a syntax error or an exception raised while the module runs
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"model.name: importing module '{module_name}' failed: {type(exc).__name__}: {first}") from None


def _load_builtin() -> None:
    from slimlab.models import lenet, resnet_cifar, resnet_imagenet, vgg  # noqa: F401
