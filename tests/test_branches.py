"""Training-time branches: they fold exactly into the original architecture, resume, and refuse what they cannot do."""
import copy

import pytest
import torch
from torch import nn

from slimlab.branches import BranchedConvBN, add_branches, fold_branches
from slimlab.config import TrainConfig, build_config
from slimlab.errors import ConfigError, SlimlabError
from slimlab.models import create_model
from slimlab.train import FRESH_TRAINING_ONLY, TrainState, train
from test_train import _loader


def _trained_branches(kind: str) -> tuple[nn.Module, list[torch.Tensor]]:
    """A model with branches after a few SGD steps, so every batch norm has its own non-trivial statistics."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    add_branches(model, kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    for x in batches * 3:
        loss = nn.functional.cross_entropy(model(x), torch.arange(16) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, batches


@pytest.mark.parametrize("kind, per_conv", [("pointwise", 1), ("asymmetric", 2), ("both", 3)])
def test_branches_fold_into_the_original_architecture_and_compute_the_same(kind, per_conv):
    plain = create_model("resnet20", num_classes=10)
    model, batches = _trained_branches(kind)
    wrapped = [m for m in model.modules() if isinstance(m, BranchedConvBN)]
    assert len(wrapped) == 19 and all(len(m.branches) == per_conv for m in wrapped)  # stem + 18 block convs, not the 1x1 shortcuts
    model.eval()
    with torch.no_grad():
        branched = [model(x) for x in batches]
    fold_branches(model, batches)
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) == 272_474
    plain.load_state_dict(model.state_dict())  # same keys and shapes: loads into the plain model
    plain.eval()
    with torch.no_grad():
        for x, expected in zip(batches, branched):
            assert torch.allclose(plain(x), expected, atol=1e-4, rtol=1e-4)


def test_folded_batch_norms_hold_the_statistics_of_their_inputs():
    """Retraining (pruning, QAT) runs the folded model in train mode, where each batch norm normalizes with batch
    statistics: the running ones must be those of the folded convolution's output, or the function would jump."""
    model, batches = _trained_branches("pointwise")
    pairs = [(m.conv, m.bn) for m in model.modules() if isinstance(m, BranchedConvBN)]  # folding puts these back
    fold_branches(model, batches)
    outputs = {}
    handles = [conv.register_forward_hook(lambda m, i, o, bn=bn: outputs.setdefault(bn, []).append(o)) for conv, bn in pairs]
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    assert len(outputs) == len(pairs) == 19
    for bn, seen in outputs.items():
        seen = torch.cat(seen).transpose(0, 1).flatten(1)
        assert torch.allclose(bn.running_mean, seen.mean(1), atol=1e-4, rtol=1e-3)
        assert torch.allclose(bn.running_var, seen.var(1, unbiased=False), atol=1e-4, rtol=1e-3)


def test_a_forward_that_does_not_follow_the_registration_order_is_refused_at_folding():
    class BatchNormAfterReLU(nn.Module):  # registered conv, bn; but the forward puts a ReLU between them
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(torch.relu(self.conv(x)))

    model = BatchNormAfterReLU()
    add_branches(model, "pointwise")
    model(torch.randn(8, 3, 8, 8))  # one training step's worth of batch-norm statistics
    with torch.no_grad():
        model.conv.bn.bias.fill_(1.0)  # a shift, so applying it before or after the ReLU makes a difference
    with pytest.raises(SlimlabError, match="the folded model differs from the branched one"):
        fold_branches(model, [torch.randn(8, 3, 8, 8)])


def test_a_model_without_conv_bn_pairs_or_with_branches_already_is_refused():
    with pytest.raises(SlimlabError, match="train.branches: LeNet5 has no kxk convolution"):
        add_branches(create_model("lenet5", num_classes=10, in_channels=1, image_size=28), "pointwise")
    model = create_model("resnet20", num_classes=10)
    add_branches(model, "pointwise")
    with pytest.raises(SlimlabError, match="already has training-time branches"):
        add_branches(model, "pointwise")


def test_training_with_branches_resumes_exactly_and_ends_folded():
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0, ema_decay=0.9, lookahead_steps=3, branches="pointwise")
    torch.manual_seed(0)
    straight = create_model("resnet20", num_classes=10)
    initial = copy.deepcopy(straight.state_dict())
    states = []
    train(straight, _loader(), cfg, save_checkpoint=lambda state: states.append(copy.deepcopy(state)), progress=False)
    assert any(".branches." in key for key in states[0].model)  # checkpoints hold the branches...
    assert straight.state_dict().keys() == initial.keys()  # ...the trained model does not

    resumed = create_model("resnet20", num_classes=10)
    resumed.load_state_dict(initial)
    train(resumed, _loader(), cfg, resume=TrainState.from_dict(states[0].to_dict()), progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_branches_are_a_first_training_option_only():
    assert FRESH_TRAINING_ONLY["branches"] == "none"
    step = {"kind": "prune", "method": "l1", "amount": 0.5, "after_round": "weight_rewind", "rewind_epoch": 1}
    with pytest.raises(ConfigError, match=r"steps\[0\].rewind_epoch: train.branches folds the model only after training"):
        build_config({"train": {"branches": "pointwise"}, "steps": [step]})
    with pytest.raises(ConfigError, match="train.branches"):
        build_config({"train": {"branches": "diagonal"}})
