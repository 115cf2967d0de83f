"""Which layers a pruning verb may touch: by type and name glob, optionally sparing the first convolution and the classifier."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from slimlab.errors import ConfigError

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "linear": (nn.Linear,)}


@dataclass(frozen=True)
class LayerFilter:
    """Layers of `types` whose module name matches an `include` glob and no `exclude` glob."""

    types: tuple[str, ...] = ("conv", "linear")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    spare_first_conv: bool = False
    spare_classifier: bool = False

    def __post_init__(self):
        unknown = [t for t in self.types if t not in LAYER_TYPES]
        if unknown:
            raise ConfigError(f"layer types {unknown} unknown; choose from {sorted(LAYER_TYPES)}")


def select_layers(model: nn.Module, layer_filter: LayerFilter | None = None) -> dict[str, nn.Module]:
    """Selected layers by module name, in registration order; raises ConfigError when nothing matches."""
    f = layer_filter or LayerFilter()
    kinds = tuple(t for name in f.types for t in LAYER_TYPES[name])
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]
    # Registration order stands in for execution order: true for every slimlab model and nearly all user models.
    convs = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES["conv"])]
    weighted = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES["conv"] + LAYER_TYPES["linear"])]
    spared = set()
    if f.spare_first_conv and convs:
        spared.add(convs[0])
    if f.spare_classifier and weighted:
        spared.add(weighted[-1])
    chosen = {n: m for n, m in candidates if n not in spared and any(fnmatch.fnmatchcase(n, p) for p in f.include)
              and not any(fnmatch.fnmatchcase(n, p) for p in f.exclude)}
    if not chosen:
        raise ConfigError(f"no layer to prune: nothing of types {list(f.types)} matches include={list(f.include)} "
                          f"exclude={list(f.exclude)} in {type(model).__name__}")
    return chosen
