"""Pruning: verbs on a plain nn.Module, a registry of methods (scores) they rank by, and the `prune` experiment step
(registered by slimlab/prune/step.py)."""
from __future__ import annotations

from slimlab.lazy import lazy_api

# The public API: each name and the module that defines it.
_API = {
    "PruneStepConfig": "slimlab.prune.config",
    "PruneContext": "slimlab.prune.methods",
    "get_method": "slimlab.prune.methods",
    "list_methods": "slimlab.prune.methods",
    "method_names": "slimlab.prune.methods",
    "register_method": "slimlab.prune.methods",
    "initial_state": "slimlab.prune.lottery",
    "random_masks_like": "slimlab.prune.lottery",
    "reinitialized_state": "slimlab.prune.lottery",
    "rewind_": "slimlab.prune.lottery",
    "snapshot": "slimlab.prune.lottery",
    "GradualPruning": "slimlab.prune.schedules",
    "cubic_sparsity": "slimlab.prune.schedules",
    "iterative_targets": "slimlab.prune.schedules",
    "per_round_rate": "slimlab.prune.schedules",
    "LayerFilter": "slimlab.prune.selection",
    "select_layers": "slimlab.prune.selection",
    "load_sparse": "slimlab.prune.sparse_io",
    "save_sparse": "slimlab.prune.sparse_io",
    "storage_report": "slimlab.prune.sparse_io",
    "apply_prune": "slimlab.prune.step",
    "prune_ln_structured_": "slimlab.prune.structured",
    "prune_structured_": "slimlab.prune.structured",
    "MaskKeeper": "slimlab.prune.unstructured",
    "apply_masks_": "slimlab.prune.unstructured",
    "current_masks": "slimlab.prune.unstructured",
    "layer_sparsity": "slimlab.prune.unstructured",
    "mask_sparsity": "slimlab.prune.unstructured",
    "prune_l1_unstructured_": "slimlab.prune.unstructured",
    "prune_random_unstructured_": "slimlab.prune.unstructured",
    "prune_unstructured_": "slimlab.prune.unstructured",
}
__all__ = ["PruneStepConfig", "LayerFilter", "select_layers", "prune_unstructured_", "prune_structured_",
           "prune_l1_unstructured_", "prune_random_unstructured_", "prune_ln_structured_", "register_method", "get_method",
           "method_names", "list_methods", "PruneContext", "apply_masks_", "current_masks", "mask_sparsity", "layer_sparsity", "MaskKeeper",
           "GradualPruning", "cubic_sparsity", "iterative_targets", "per_round_rate", "snapshot", "rewind_", "initial_state",
           "reinitialized_state", "random_masks_like", "save_sparse", "load_sparse", "storage_report"]


__getattr__, __dir__ = lazy_api(__name__, _API)
