"""Pruning: verbs on a plain nn.Module, a registry of methods (scores) they rank by, and the `prune` experiment step."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from slimlab.prune.config import PruneStepConfig
from slimlab.prune.methods import PruneContext, get_method, list_methods, method_names, register_method
from slimlab.prune.lottery import initial_state, random_masks_like, reinitialized_state, rewind_, snapshot
from slimlab.prune.schedules import GradualPruning, cubic_sparsity, iterative_targets, per_round_rate
from slimlab.prune.selection import LayerFilter, select_layers
from slimlab.prune.sparse_io import load_sparse, save_sparse, storage_report
from slimlab.prune.step import apply_prune
from slimlab.prune.structured import prune_ln_structured_, prune_structured_
from slimlab.prune.unstructured import (MaskKeeper, apply_masks_, current_masks, layer_sparsity, mask_sparsity,
                                        prune_l1_unstructured_, prune_random_unstructured_, prune_unstructured_)
from slimlab.steps import register_step

if TYPE_CHECKING:
    from slimlab.steps import StepContext


@register_step("prune", PruneStepConfig)
def apply(model: nn.Module, cfg: PruneStepConfig, context: StepContext) -> nn.Module:
    """The `prune` step: see slimlab.prune.step.apply_prune."""
    return apply_prune(model, cfg, context)


__all__ = ["PruneStepConfig", "LayerFilter", "select_layers", "prune_unstructured_", "prune_structured_",
           "prune_l1_unstructured_", "prune_random_unstructured_", "prune_ln_structured_", "register_method", "get_method",
           "method_names", "list_methods", "PruneContext", "apply_masks_", "current_masks", "mask_sparsity", "layer_sparsity", "MaskKeeper",
           "GradualPruning", "cubic_sparsity", "iterative_targets", "per_round_rate", "snapshot", "rewind_", "initial_state",
           "reinitialized_state", "random_masks_like", "save_sparse", "load_sparse", "storage_report"]
