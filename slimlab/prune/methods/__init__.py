"""Registry of pruning methods: one registered scoring function per file, looked up by the name a config gives.

An unstructured method scores every weight (the lowest-scoring survivors are zeroed); a structured method scores
every output channel of a layer (the lowest-scoring channels are removed). Both take the selected layers' weights and
a `PruneContext`, so a method that needs gradients asks the context for training batches and the loss, and one that
needs nothing ignores it. The method files in this package (which import torch) load on the first lookup, not when
this module is imported, as slimlab.steps loads its steps.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal

from slimlab.errors import ConfigError
from slimlab.plugins import package_modules

if TYPE_CHECKING:
    import torch
    from torch import nn

Kind = Literal["unstructured", "structured"]
Batch = tuple["torch.Tensor", "torch.Tensor"]  # (inputs, targets)


@dataclass(frozen=True)
class PruneContext:
    """What a score may use besides the weights: the model, training batches and the loss (gradient scores), a seed.

    `batches` holds (inputs, targets) on the model's device: a list, or a function returning a fresh iterable (a
    loader), so that each round of iterative pruning reads new batches. `loss(logits, targets)` defaults to
    cross-entropy where a score needs one.
    """

    model: nn.Module | None = None
    batches: Iterable[Batch] | Callable[[], Iterable[Batch]] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    max_batches: int = 8
    seed: int = 0
    norm: float = 1.0  # ln_structured: the n of the Ln norm

    def gradient_batches(self) -> Iterator[Batch]:
        """At most `max_batches` (inputs, targets) batches, read afresh on each call."""
        source = self.batches() if callable(self.batches) else self.batches
        return itertools.islice(source or (), self.max_batches)


# weights by parameter name ("layer1.0.conv1.weight") -> scores by the same names; higher = kept. Unstructured
# scores have the weight's shape, structured ones one value per output channel.
Score = Callable[[dict[str, "torch.Tensor"], PruneContext], dict[str, "torch.Tensor"]]


@dataclass(frozen=True)
class PruneMethod:
    """A registered method: its name, whether it removes single weights or whole channels, and its score."""

    name: str
    kind: Kind
    score: Score
    needs_batches: bool = False

    @property
    def summary(self) -> str:
        return (self.score.__doc__ or "").strip().splitlines()[0] if self.score.__doc__ else ""


_METHODS: dict[str, PruneMethod] = {}


def register_method(name: str, kind: Kind, needs_batches: bool = False) -> Callable[[Score], Score]:
    """Register `score(weights, context) -> scores` as the pruning method `name` (unstructured or structured)."""
    if kind not in ("unstructured", "structured"):
        raise ConfigError(f"register_method({name!r}): kind must be 'unstructured' or 'structured', got {kind!r}")

    def wrap(fn: Score) -> Score:
        _METHODS[name] = PruneMethod(name, kind, fn, needs_batches)
        return fn

    return wrap


def method_names(kind: Kind | None = None) -> list[str]:
    """Registered method names, all or of one kind, sorted."""
    _load_builtin()
    return sorted(n for n, m in _METHODS.items() if kind is None or m.kind == kind)


def list_methods() -> dict[str, str]:
    """Registered method names with their kind and one-line description, for listings."""
    _load_builtin()
    return {n: f"{m.kind}: {m.summary}" for n, m in sorted(_METHODS.items())}


def get_method(name: str, kind: Kind | None = None) -> PruneMethod:
    """The method registered as `name` (of `kind`, when given); a ConfigError lists the known names otherwise."""
    _load_builtin()
    method = _METHODS.get(name)
    if method is None or (kind is not None and method.kind != kind):
        what = f"{kind} pruning method" if kind else "pruning method"
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(method_names(kind))}")
    return method


def _load_builtin() -> None:
    # Every file in this package registers its method on import, so adding a method is adding a file: no list to edit.
    package_modules(__name__)
