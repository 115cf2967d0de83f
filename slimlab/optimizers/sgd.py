"""SGD with (Nesterov) momentum: the default optimizer."""
from __future__ import annotations

from slimlab.optimizers import decay_groups, register_optimizer


@register_optimizer("sgd", fine_tuning=True)
def sgd(model, cfg, example):
    """Plain SGD over every trainable parameter; the only state is one momentum buffer per parameter."""
    import torch  # here, not at the top: listing the optimizers (config validation) imports this file

    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(decay_groups(trainable, cfg), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)
