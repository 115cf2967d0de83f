"""The second structured engine: Torch-Pruning's dependency graph, for what slimlab's own channel tracer refuses.

slimlab's tracer (channel_groups.py) follows convolutions, norms, residual adds and flattening, and blocks anything
else: concatenations, grouped convolutions, permutes with LayerNorm and linear layers on the last dimension, attention.
Torch-Pruning (Fang et al., CVPR 2023) traces those too: it slices concatenations, keeps grouped convolutions'
groups whole and prunes attention head dimensions. `engine: auto` tries the own tracer first and takes Torch-Pruning
when the tracer refuses or leaves the model at more than AUTO_MAX_LEFT of its parameters (measured in
docs/coverage.md: which engine pruned each model).
"""
from __future__ import annotations

import torch
from torch import nn

import contextlib
import signal
import threading

from slimlab.errors import ConfigError, SlimlabError, require
from slimlab.models.calls import first_calls
from slimlab.prune.methods import PruneContext

# Torch-Pruning's tracer can loop on some graphs (torchvision's Swin: "Maximum recursive depth reached", then minutes
# without an answer); past this many seconds it is stopped and the engine refuses. Only enforceable in the main thread.
TIME_LIMIT_S = 60


class _TimeLimit(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _importance(method: str, context: PruneContext):
    tp = require("torch_pruning", "prune", "the torch_pruning structured engine")
    if method == "ln_structured":
        return tp.importance.GroupMagnitudeImportance(p=context.norm)
    raise ConfigError(f"method {method!r} has no Torch-Pruning counterpart; use engine 'slimlab' or method 'ln_structured'")


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose outputs reach the model's output unchanged in width: the last weighted layer run."""
    called = first_calls(model, example, (nn.Linear, nn.modules.conv._ConvNd))
    return [model.get_submodule(called[-1])] if called else []


def prune_torch_pruning_(model: nn.Module, amount: float, example: torch.Tensor, method: str, scope: str,
                         selected: set[str], round_to: int, context: PruneContext) -> list[tuple[str, int, int]]:
    """Remove the `amount` fraction of channels from every group Torch-Pruning finds, in place.

    Returns (layer, output channels before, after) per selected layer whose width changed."""
    tp = require("torch_pruning", "prune", "the torch_pruning structured engine")
    importance = _importance(method, context)
    names = {m: n for n, m in model.named_modules()}
    ignored = _output_layers(model, example) + [m for m, n in names.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
                                                and n not in selected]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    before = {n: _width(m) for m, n in names.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    try:
        with _time_limit(TIME_LIMIT_S):
            _run_pruner(tp, model, example, importance, amount, scope, ignored, heads, round_to)
    except _TimeLimit:
        raise SlimlabError(f"Torch-Pruning did not finish tracing {type(model).__name__} within {TIME_LIMIT_S} s") from None
    except Exception as exc:  # noqa: BLE001  (its tracer raises many types; the user gets one line)
        raise SlimlabError(f"Torch-Pruning could not prune {type(model).__name__}: {type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:200]}") from exc
    for m in heads:  # Torch-Pruning slices the projections; the module's own bookkeeping follows them
        m.head_dim = m.embed_dim // m.num_heads
    _check_forward(model, example)
    return [(n, before[n], _width(m)) for m, n in names.items() if n in before and _width(m) != before[n]]


def _check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Torch-Pruning can return a model whose forward fails (a reshape to a width read from the code, not the tensor):
    refused in one line, so that `auto` keeps the own tracer's result."""
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # noqa: BLE001  (whatever the user's forward raises)
        raise SlimlabError(f"Torch-Pruning left {type(model).__name__} unable to run ({type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:160]}): a width it cannot see in the graph") from None
    if not isinstance(out, torch.Tensor) or out.shape[0] != example.shape[0]:
        raise SlimlabError(f"Torch-Pruning left {type(model).__name__} giving {type(out).__name__} of the wrong shape")


def _run_pruner(tp, model, example, importance, amount, scope, ignored, heads, round_to) -> None:
    # Its warnings (guessed dimensions of raw parameters) stay visible: slimlab silences no library's warnings.
    pruner = tp.pruner.MetaPruner(model.eval(), example, importance=importance, pruning_ratio=amount,
                                  global_pruning=scope == "global", ignored_layers=ignored, num_heads=heads,
                                  round_to=round_to if round_to > 1 else None)
    pruner.step()


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels
