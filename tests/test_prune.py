"""Pruning: sparsity reached, masks that only shrink, exact rewinding, controls, structured surgery, sparse storage, the step."""
import io
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimlab.config import TrainConfig, build_config
from slimlab.data.loader import DeviceLoader
from slimlab.data.synthetic import make_synthetic
from slimlab.errors import ConfigError
from slimlab.measure import count_macs, count_parameters
from slimlab.models import create_model
from slimlab.prune import (GradualPruning, LayerFilter, MaskKeeper, cubic_sparsity, initial_state, iterative_targets,
                           layer_sparsity, load_sparse, mask_sparsity, per_round_rate, prune_l1_unstructured_,
                           prune_ln_structured_, prune_random_unstructured_, random_masks_like, rewind_, save_sparse,
                           snapshot, storage_report)
from slimlab.prune.channel_groups import find_channel_groups
from slimlab.prune.lottery import SnapshotAtEpoch, train_until_epoch
from slimlab.store import Store
from slimlab.train import train

torch.set_num_threads(1)
CIFAR = torch.randn(2, 3, 32, 32)


class UserNet(nn.Module):
    """Not registered anywhere: a residual add, a depthwise conv, flatten of a 4x4 map into a hidden linear layer."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.branch = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1))
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.hidden, self.out = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.branch(x)
        x = F.adaptive_avg_pool2d(self.depthwise(x), 4).flatten(1)
        return self.out(F.relu(self.hidden(x)))


def loader(batch=16, n=64):
    split = make_synthetic(n, 10, 32, 3, seed=1)
    return DeviceLoader(split, batch, (0.3,) * 3, (0.25,) * 3, shuffle=True, augment=True, seed=0, drop_last=True)


TINY_TRAIN = TrainConfig(epochs=2, batch_size=16, max_batches_per_epoch=2, warmup_epochs=0, lr=0.05, channels_last=False, device="cpu")


# --- unstructured ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.3, 0.8, 0.9])
def test_local_pruning_reaches_the_same_ratio_in_every_layer(amount):
    masks = prune_l1_unstructured_(create_model("resnet20"), amount, scope="local")
    assert abs(mask_sparsity(masks) - amount) < 1e-3
    for name, ratio in layer_sparsity(masks).items():
        assert abs(ratio - amount) <= 0.5 / masks[name].numel() + 1e-9  # off by at most rounding one weight


@pytest.mark.parametrize("method", [prune_l1_unstructured_, prune_random_unstructured_])
def test_global_pruning_reaches_the_target_with_different_layer_ratios(method):
    model = create_model("resnet20")
    with torch.no_grad():  # layers of different scale, as after training, so one global threshold treats them differently
        for i, conv in enumerate(m for m in model.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.mul_(1 + i / 4)
    masks = method(model, 0.8, scope="global")
    assert abs(mask_sparsity(masks) - 0.8) < 1e-3
    ratios = list(layer_sparsity(masks).values())
    if method is prune_l1_unstructured_:
        assert max(ratios) - min(ratios) > 0.2
    assert all(torch.equal(model.get_parameter(n).detach() != 0, m) for n, m in masks.items())  # folded: zeros where pruned


@pytest.mark.parametrize("scope", ["local", "global"])
def test_iterative_masks_only_shrink_and_reach_the_target(scope):
    model, masks, history = create_model("resnet20"), None, []
    rate = per_round_rate(0.9, 3)
    for _ in range(3):
        masks = prune_l1_unstructured_(model, rate, scope=scope, masks=masks)
        with torch.no_grad():  # survivors move between rounds, as in training
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01 * (p != 0))
        history.append({n: m.clone() for n, m in masks.items()})
    for earlier, later in zip(history, history[1:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in earlier)
    assert abs(mask_sparsity(masks) - 0.9) < 1e-3
    assert iterative_targets(0.9, 3)[-1] == 0.9 and abs(iterative_targets(0.9, 3)[0] - rate) < 1e-12


def test_selection_spares_first_conv_and_classifier_and_rejects_empty():
    model = create_model("resnet20")
    masks = prune_l1_unstructured_(model, 0.5, select=LayerFilter(spare_first_conv=True, spare_classifier=True, exclude=("layer3.*",)))
    assert "conv1.weight" not in masks and "fc.weight" not in masks and not any(n.startswith("layer3") for n in masks)
    assert "layer1.0.conv1.weight" in masks
    with pytest.raises(ConfigError):
        prune_l1_unstructured_(model, 0.5, select=LayerFilter(include=("nothing*",)))
    with pytest.raises(ConfigError):
        prune_l1_unstructured_(model, 1.5)


def test_mask_keeper_holds_zeros_through_training():
    model = create_model("resnet20")
    masks = prune_l1_unstructured_(model, 0.7, scope="global")
    before = snapshot(model)
    train(model, loader(), TINY_TRAIN, callbacks=[MaskKeeper(masks)], progress=False)
    for name, mask in masks.items():
        weight = model.get_parameter(name).detach()
        assert (weight[~mask] == 0).all()
        assert not torch.equal(weight[mask], before[name][mask])  # the survivors did train


# --- lottery -----------------------------------------------------------------------------------------------


def test_weight_rewinding_restores_survivors_exactly_and_keeps_pruned_at_zero():
    model = create_model("resnet20")
    init = snapshot(model)
    train(model, loader(), TINY_TRAIN, progress=False)
    masks = prune_l1_unstructured_(model, 0.8, scope="global")
    rewind_(model, init, masks)
    for name, mask in masks.items():
        weight = model.get_parameter(name).detach()
        assert torch.equal(weight[mask], init[name][mask]) and (weight[~mask] == 0).all()
    assert torch.equal(model.layer1[0].bn1.running_mean, init["layer1.0.bn1.running_mean"])


def test_reinit_gives_new_weights_with_the_same_mask_and_random_mask_keeps_layer_sparsity():
    model = create_model("resnet20")
    init = snapshot(model)
    masks = prune_l1_unstructured_(model, 0.8, scope="global")
    fresh = initial_state(lambda: create_model("resnet20"), seed=1234)
    rewind_(model, fresh, masks)
    for name, mask in masks.items():
        weight = model.get_parameter(name).detach()
        assert torch.equal(weight != 0, mask)
        assert not torch.equal(weight[mask], init[name][mask])
    shuffled = random_masks_like(masks, seed=0)
    assert layer_sparsity(shuffled) == layer_sparsity(masks)
    assert any(not torch.equal(shuffled[n], masks[n]) for n in masks)


def test_late_rewinding_replay_reproduces_the_weights_at_epoch_k():
    torch.manual_seed(3)
    model = create_model("lenet5", in_channels=3, image_size=32)
    init = snapshot(model)
    keeper = SnapshotAtEpoch(1)
    train(model, loader(), TINY_TRAIN, callbacks=[keeper], progress=False)
    replay = create_model("lenet5", in_channels=3, image_size=32)
    replay.load_state_dict(init)
    state = train_until_epoch(replay, loader(), TINY_TRAIN, epoch=1)
    assert all(torch.equal(state[k], keeper.state[k]) for k in state)


def test_gradual_schedule_follows_the_cubic_and_reaches_the_target():
    assert cubic_sparsity(0, 0.9, interval=10, events=5) == 0 and cubic_sparsity(50, 0.9, interval=10, events=5) == 0.9
    values = [cubic_sparsity(t, 0.9, interval=10, events=5) for t in range(0, 60, 10)]
    assert values == sorted(values) and values[1] - values[0] > values[-1] - values[-2]  # fast first, slow at the end
    model = create_model("resnet20")
    pruner = GradualPruning(lambda m, a, masks: prune_l1_unstructured_(m, a, "global", masks=masks), 0.6, interval=1, events=3)
    train(model, loader(), TINY_TRAIN, callbacks=[pruner], progress=False)
    assert abs(mask_sparsity(pruner.masks) - 0.6) < 1e-3
    assert [round(s, 3) for _, s in pruner.sparsity_log] == [round(cubic_sparsity(t, 0.6, interval=1, events=3), 3) for t in (1, 2, 3)]


# --- structured --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_structured_resnet_is_smaller_and_works_forward_backward_and_saved(name, tmp_path):
    model = create_model(name)
    params, macs = count_parameters(model)["params"], count_macs(model, CIFAR[:1])["macs"]
    groups = prune_ln_structured_(model, 0.5, CIFAR[:1])
    assert any(g.residual for g in groups) and all(g.after == g.before // 2 for g in groups)
    assert model.layer1[0].conv1.out_channels < 64 and model.layer1[0].bn1.num_features == model.layer1[0].conv1.out_channels
    assert count_parameters(model)["params"] < 0.3 * params and count_macs(model, CIFAR[:1])["macs"] < 0.3 * macs
    model.train()
    model(CIFAR).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    path = tmp_path / "pruned.pt"
    torch.jit.save(torch.jit.trace(model, CIFAR[:1]), str(path))
    assert torch.allclose(torch.jit.load(str(path))(CIFAR), model(CIFAR), atol=1e-5)
    check = ("import sys, torch; m = torch.jit.load(sys.argv[1]); "
             "assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10); assert 'slimlab' not in sys.modules")
    subprocess.run([sys.executable, "-c", check, str(path)], check=True, cwd=tmp_path)


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "vgg11_bn"])
def test_structured_removal_is_exact_when_removed_channels_carry_nothing(name):
    """Zero half of every group's channels (filters and batch-norm affine): removing exactly them must not change the output."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        for group in (g for g in find_channel_groups(model, CIFAR[:1]) if g.prunable):
            dead = torch.randperm(group.size)[: group.size // 2]
            for layer in group.producers + group.channelwise:
                module = model.get_submodule(layer)
                module.weight[dead] = 0
                if module.bias is not None:
                    module.bias[dead] = 0
        expected = model(CIFAR)
        prune_ln_structured_(model, 0.5, CIFAR[:1])
        assert torch.allclose(model(CIFAR), expected, rtol=1e-4, atol=1e-5)


def test_structured_options_inner_only_and_global():
    model = create_model("resnet20")
    groups = prune_ln_structured_(model, 0.5, CIFAR[:1], residual_channels=False)
    assert not any(g.residual for g in groups) and model.fc.in_features == 64 and model.layer1[0].conv1.out_channels == 8
    model = create_model("resnet20")
    with torch.no_grad():
        model.layer2[0].conv1.weight.mul_(0.1)  # one weak layer: global ranking takes more from it
    groups = prune_ln_structured_(model, 0.3, CIFAR[:1], scope="global")
    removed = {g.producers[0]: 1 - g.after / g.before for g in groups}
    assert abs(sum(g.before - g.after for g in groups) / sum(g.before for g in groups) - 0.3) < 0.01
    assert removed["layer2.0.conv1"] > 0.9 and min(removed.values()) < 0.3


def test_user_model_prunes_through_the_same_verbs():
    x = torch.randn(2, 3, 16, 16)
    model = UserNet()
    masks = prune_l1_unstructured_(model, 0.6, scope="global")
    assert abs(mask_sparsity(masks) - 0.6) < 1e-3 and "hidden.weight" in masks
    model = UserNet()
    groups = prune_ln_structured_(model, 0.5, x)
    assert len(groups) == 3 and any(g.residual for g in groups)  # stem+branch+depthwise tied; branch inner; hidden
    assert model.stem.out_channels == 4 and model.depthwise.groups == 4 and model.hidden.in_features == 4 * 16
    assert model(x).shape == (2, 5)
    model(x).sum().backward()


class ScaledHead(nn.Module):
    """A learned per-feature scale on the pooled features: a (C,) parameter broadcast over an (N, C) tensor."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1) * self.gamma)


def test_a_parameter_broadcast_over_the_channels_blocks_their_pruning():
    x = torch.randn(2, 3, 8, 8)
    model = ScaledHead()
    prune_ln_structured_(model, 0.5, x, engine="slimlab")
    assert model.conv2.out_channels == 32 and model.conv1.out_channels == 8  # gamma ties conv2's channels; conv1's are free
    assert model(x).shape == (2, 10)
    model = ScaledHead()  # Torch-Pruning slices the raw parameter with conv2's channels; auto takes that
    prune_ln_structured_(model, 0.5, x)
    assert model.slimlab_structured_engine == "torch_pruning"
    assert model.conv2.out_channels == 16 and model.gamma.shape == (16,) and model(x).shape == (2, 10)


# --- sparse storage ----------------------------------------------------------------------------------------


def test_sparse_storage_of_a_90_percent_sparse_model_is_small_and_exact():
    model = create_model("resnet20")
    prune_l1_unstructured_(model, 0.9, scope="global")
    report = storage_report(model)
    assert report["sparse_bytes"] <= 0.25 * report["dense_bytes"]
    restored = load_sparse(save_sparse(model))
    state = model.state_dict()
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[k], state[k]) and restored[k].dtype == state[k].dtype for k in state)
    odd = {"half": torch.tensor([0.0, 1.5, 0.0, -2.0], dtype=torch.bfloat16), "count": torch.tensor(7), "empty": torch.zeros(0, 3)}
    back = load_sparse(save_sparse(odd))
    assert all(torch.equal(back[k], odd[k]) and back[k].shape == odd[k].shape for k in odd)


# --- the step ----------------------------------------------------------------------------------------------


def _quick_config(steps, **train):
    return build_config({
        "name": "prune-test", "seed": 0,
        "data": {"name": "synthetic", "val_size": 64, "test_subset": 128},
        "model": {"name": "resnet20"},
        "train": {"epochs": 1, "max_batches_per_epoch": 3, "batch_size": 64, "warmup_epochs": 0, "device": "cpu", **train},
        "measure": {"batch_sizes": [1, 8], "warmup": 1, "repeats": 5, "energy": False},
        "steps": steps})


def test_step_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError):
        _quick_config([{"kind": "prune", "rounds": 3}])
    with pytest.raises(ConfigError):
        _quick_config([{"kind": "prune", "method": "ln_structured", "after_round": "weight_rewind"}])
    with pytest.raises(ConfigError):
        _quick_config([{"kind": "prune", "amount": 1.0}])
    with pytest.raises(ConfigError, match="gradual"):  # a control there would be silently ignored
        _quick_config([{"kind": "prune", "schedule": "gradual", "rounds": 3, "control": "reinit"}])


def test_end_to_end_iterative_weight_rewinding(tmp_path):
    from slimlab.run import run

    step = {"kind": "prune", "method": "l1", "scope": "global", "amount": 0.8, "schedule": "iterative", "rounds": 2,
            "after_round": "weight_rewind"}
    record = run(_quick_config([step]), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    m = record.metrics
    assert abs(m["prune_sparsity"] - 0.8) < 1e-3
    assert abs(m["round1_sparsity"] - iterative_targets(0.8, 2)[0]) < 1e-3 and "round2_top1" in m and "round1_top1" in m
    assert m["prune_sparse_bytes"] < 0.5 * m["prune_dense_bytes"] and m["prune_macs_after"] == m["prune_macs_before"]
    assert m["prune_nonzero_macs_after"] < 0.4 * m["prune_nonzero_macs_before"] and "prune_latency_b8_speedup" in m
    folder = tmp_path / "runs" / record.id
    layers = json.loads((folder / "prune_layers.json").read_text())
    assert len(layers["rounds"]) == 2 and len(set(round(v["sparsity"], 2) for v in layers["layers"].values())) > 1
    weights = load_sparse((folder / "model_sparse.bin").read_bytes())
    pruned = sum(int((weights[n] == 0).sum()) for n in (f"{k}.weight" for k in layers["layers"]))
    assert abs(pruned / sum(v["numel"] for v in layers["layers"].values()) - 0.8) < 1e-3
    assert "no speedup expected" in record.notes["prune_latency"]


@pytest.mark.parametrize("step", [
    {"method": "l1", "scope": "global", "amount": 0.5, "schedule": "gradual", "rounds": 3, "finetune_epochs": 2},
    {"amount": 0.7, "after_round": "weight_rewind", "rewind_epoch": 1, "control": "reinit"},
    {"method": "random", "scope": "global", "amount": 0.7, "schedule": "iterative", "rounds": 2, "after_round": "lr_rewind",
     "control": "random_mask"},
], ids=["gradual", "late-rewind-reinit", "random-mask"])
def test_end_to_end_other_schedules_and_controls_reach_the_target(step, tmp_path):
    from slimlab.run import run

    record = run(_quick_config([{"kind": "prune", **step}]), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    assert abs(record.metrics["prune_sparsity"] - step["amount"]) < 1e-3 and "round1_top1" in record.metrics


@pytest.mark.parametrize("schedule", [{"schedule": "oneshot"}, {"schedule": "iterative", "rounds": 2}])
def test_a_random_mask_control_without_rewinding_starts_as_dense_as_its_mask(schedule, tmp_path, monkeypatch):
    from slimlab.prune import step as prune_step
    from slimlab.run import run

    starts = []  # (non-zero, kept by the masks) over the pruned layers, as each retraining begins
    original = prune_step._retrain

    def recording_retrain(model, cfg, context, callbacks, round_index):
        masks = callbacks[0].masks
        weights = dict(model.named_parameters())
        starts.append((sum(int((weights[n] != 0).sum()) for n in masks), sum(int(m.sum()) for m in masks.values())))
        return original(model, cfg, context, callbacks, round_index)

    monkeypatch.setattr(prune_step, "_retrain", recording_retrain)
    step = {"kind": "prune", "method": "l1", "scope": "global", "amount": 0.8, "after_round": "finetune",
            "control": "random_mask", **schedule}
    record = run(_quick_config([step]), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    nonzero, kept = starts[-1]
    assert nonzero == kept  # every weight the random mask keeps has a trained value, none starts at zero


def test_rewind_target_is_the_runs_initialization():
    torch.manual_seed(5)
    expected = create_model("resnet20").state_dict()  # what slimlab.run builds after torch.manual_seed(config.seed)
    state = initial_state(lambda: create_model("resnet20"), seed=5)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_end_to_end_structured_finetune(tmp_path):
    from slimlab.run import run

    step = {"kind": "prune", "method": "ln_structured", "amount": 0.5, "after_round": "finetune", "finetune_epochs": 1}
    record = run(_quick_config([step]), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    m = record.metrics
    assert m["prune_params_after"] < 0.35 * m["prune_params_before"] and m["prune_macs_after"] < 0.35 * m["prune_macs_before"]
    assert m["params"] == m["prune_params_after"] and "round1_top1" in m
    loaded = torch.jit.load(io.BytesIO((tmp_path / "runs" / record.id / "model.pt").read_bytes()))
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_a_control_reuses_the_dense_parent_and_the_tickets_earlier_rounds(tmp_path, monkeypatch):
    import sys

    from slimlab.run import run

    step = {"kind": "prune", "method": "l1", "scope": "global", "amount": 0.8, "schedule": "iterative", "rounds": 3,
            "after_round": "weight_rewind", "rewind_epoch": 1}
    ticket = run(_quick_config([step]), store=tmp_path, progress=False)
    trainings = []
    original = sys.modules["slimlab.prune.step"].train
    monkeypatch.setattr(sys.modules["slimlab.prune.step"], "train", lambda *a, **k: trainings.append(1) or original(*a, **k))
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: pytest.fail("the dense parent was trained again"))
    control = run(_quick_config([{**step, "control": "reinit"}]), store=tmp_path, progress=False)
    assert control.status == "done", control.error
    assert len(trainings) == 1  # only the last round is retrained
    for r in (1, 2):
        assert control.metrics[f"round{r}_top1"] == ticket.metrics[f"round{r}_top1"]
    assert control.metrics["round3_top1"] != ticket.metrics["round3_top1"] or control.metrics["top1"] != ticket.metrics["top1"]
    assert abs(control.metrics["prune_sparsity"] - 0.8) < 1e-3 and "prune_reuse" in control.notes
    # The reused rounds still count as its training time: three rounds of retraining, as the ticket's.
    history = Store(tmp_path).history(control.id)
    epochs = [rec for rec in history if "prune_round" in rec and "epoch" in rec]
    assert len(epochs) == 3 and control.metrics["prune_retrain_seconds"] == pytest.approx(sum(rec["seconds"] for rec in epochs))


def test_muon_retraining_keeps_the_pruned_weights_at_zero(tmp_path):
    """Muon rescales and rewrites whole filter banks each step; the masks must still hold after every round."""
    from slimlab.run import run

    step = {"method": "l1", "scope": "global", "amount": 0.8, "schedule": "iterative", "rounds": 2, "after_round": "finetune"}
    record = run(_quick_config([{"kind": "prune", **step}], optimizer="muon"), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    # Zeros counted in the saved model's weights, not in the masks (which hold whatever the optimizer did).
    run_dir = Store(tmp_path).run_dir(record.id)
    pruned = json.loads((run_dir / "prune_layers.json").read_text())["layers"]
    weights = torch.jit.load(str(run_dir / "model.pt")).state_dict()
    selected = [weights[f"{name}.weight"] for name in pruned]
    zeros = sum(int((w == 0).sum()) for w in selected) / sum(w.numel() for w in selected)
    assert abs(zeros - 0.8) < 1e-3 and len(selected) > 10


def test_pruned_weights_stay_zero_through_quantization_aware_training(tmp_path):
    from slimlab.run import run

    steps = [{"kind": "prune", "method": "l1", "scope": "global", "amount": 0.6, "after_round": "finetune"},
             {"kind": "quantize", "method": "qat", "qat_epochs": 2, "qat_lr": 0.5}]  # a high rate, to revive zeros past int8 rounding
    record = run(_quick_config(steps), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    # The int8 model's weights (batch norms folded in) are still 60% zero; QAT without the masks revives nearly all.
    assert record.metrics["sparsity"] > 0.55 and record.metrics["prune_sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_an_onnxruntime_model_after_structured_pruning_reports_the_pruned_counts(tmp_path):
    pytest.importorskip("onnxruntime")
    from slimlab.run import run

    steps = [{"kind": "prune", "method": "ln_structured", "amount": 0.5, "after_round": "finetune"},
             {"kind": "quantize", "method": "onnxruntime"}]
    record = run(_quick_config(steps), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    m = record.metrics
    assert (m["params"], m["macs"]) == (m["prune_params_after"], m["prune_macs_after"]) and m["params"] < 0.35 * m["prune_params_before"]


def test_a_study_trains_its_parent_once_when_a_late_rewind_follows_a_float_run(tmp_path, monkeypatch):
    import yaml

    from slimlab.executors import ExecOptions, get_executor
    from slimlab.plan import load_study, plan_stages

    base = _quick_config([]).model_dump(mode="json")
    base.pop("name")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    ticket = {"kind": "prune", "amount": 0.5, "after_round": "weight_rewind", "rewind_epoch": 1}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "set": {"train.epochs": 2},
        "variants": {"float": {}, "late1": {"steps": [ticket]}, "late2": {"steps": [{**ticket, "rewind_epoch": 2}]}}}))
    trainings = []
    original = sys.modules["slimlab.run"].train
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: trainings.append(1) or original(*a, **k))
    outcome = get_executor("inline")(plan_stages(load_study(tmp_path / "study.yaml")), Store(tmp_path / "store"), ExecOptions(progress=False))
    assert list(outcome.statuses.values()) == ["done"] * 3 and len(trainings) == 1  # the parent kept epochs 1 and 2
