"""Muon: the orthogonalization, which weights count as scale-invariant, and what one step does to each group."""
import math

import pytest
import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.muon import Muon, orthogonalize, scale_invariant_parameters
from slimlab.optimizers import make_optimizer


@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (64, 64)])
def test_orthogonalize_sends_every_singular_value_near_one(shape):
    generator = torch.Generator().manual_seed(0)
    rank = min(shape)
    left = torch.linalg.qr(torch.randn(shape[0], rank, generator=generator)).Q
    right = torch.linalg.qr(torch.randn(shape[1], rank, generator=generator)).Q
    matrix = left @ torch.diag(torch.logspace(-1, 1, rank)) @ right.T  # singular values 0.1 to 10
    singular = torch.linalg.svdvals(orthogonalize(matrix))
    assert singular.min() > 0.6 and singular.max() < 1.25, singular  # the quintic iteration's band, not exactly 1


def _mixed_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # feeds a batch norm
                         nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),  # does not
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_only_convolutions_feeding_a_batch_norm_are_scale_invariant_and_the_probe_leaves_the_model_alone():
    model = _mixed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(16, 3, 8, 8)
    rng_before = torch.get_rng_state()
    invariant = scale_invariant_parameters(model, example)
    assert invariant == {model[0].weight}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's random stream goes on as if nothing happened


def test_one_step_pins_and_orthogonalizes_convolutions_and_gives_the_rest_sgd():
    model = _mixed_model()
    cfg = TrainConfig(optimizer="muon", lr=0.1, muon_lr=0.05, momentum=0.0, muon_momentum=0.0, weight_decay=0.0)
    optimizer = make_optimizer(model, cfg, torch.randn(16, 3, 8, 8))
    assert isinstance(optimizer, Muon)
    pinned, free = [g for g in optimizer.param_groups if g["orthogonalize"]]
    assert pinned["params"] == [model[0].weight] and pinned["pin_norm"] and free["params"] == [model[3].weight]
    with torch.no_grad():
        model[0].weight.mul_(3)  # off the pinned norm: the step puts it back before moving
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(16, 3, 8, 8)).square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()

    pinned_start = start["0.weight"] * math.sqrt(8) / start["0.weight"].norm()
    step = (pinned_start - model[0].weight).reshape(8, -1) / 0.05
    assert torch.allclose(step, orthogonalize(grads["0.weight"].reshape(8, -1)), atol=1e-5)
    step = (start["3.weight"] - model[3].weight).reshape(4, -1) / 0.05
    assert torch.allclose(step, orthogonalize(grads["3.weight"].reshape(4, -1)), atol=1e-5)
    for name in ("0.bias", "1.weight", "6.weight"):  # plain SGD at lr
        assert torch.allclose(model.state_dict()[name], start[name] - 0.1 * grads[name], atol=1e-6), name


def test_muon_without_an_example_batch_is_refused():
    with pytest.raises(ValueError, match="example batch"):
        make_optimizer(_mixed_model(), TrainConfig(optimizer="muon"))
