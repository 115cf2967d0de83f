"""Muon (Jordan et al. 2024, the algorithm in slimlab/muon.py) for the convolution weights, SGD for the rest.

Its config fields (`muon_lr`, `muon_momentum`) are `MuonFields` in fields.py, a base of TrainConfig (flat `train:` keys)."""
from __future__ import annotations

from slimlab.optimizers import decay_groups, register_optimizer


# A fine-tune's own peak rate scales muon_lr by the same factor as lr, so it is as gentle on the convolutions.
@register_optimizer("muon", fine_tuning=True, rates=("muon_lr",))
def muon(model, cfg, example):
    """Orthogonalized steps for 4-D weights (norm-pinned where `example` shows them scale-invariant), SGD at lr for
    batch norms, biases and the classifier."""
    from slimlab.muon import Muon, scale_invariant_parameters  # torch, imported only when a Muon run starts

    if example is None:
        raise ValueError("the muon optimizer needs an example batch to find the scale-invariant convolution weights")
    trainable = [p for p in model.parameters() if p.requires_grad]
    invariant = scale_invariant_parameters(model, example())
    convs, rest = [p for p in trainable if p.ndim == 4], [p for p in trainable if p.ndim != 4]
    orthogonal = {"lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "orthogonalize": True}
    groups = [{"params": [p for p in convs if p in invariant], "pin_norm": True, **orthogonal},
              {"params": [p for p in convs if p not in invariant], "weight_decay": cfg.weight_decay, **orthogonal},
              *decay_groups(rest, cfg)]
    return Muon([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                nesterov=cfg.nesterov and cfg.momentum > 0)
