"""The training loop and its extras: the weight average and Lookahead (their arithmetic, resuming them after a kill),
the recipe's data options end to end, retraining configs that switch off what each extra declares, and bf16 on CPU."""
import copy

import pytest
import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.data import ImageSplit
from slimlab.data.loader import DeviceLoader
from slimlab.models import create_model
from slimlab.store import Store
from slimlab.extras.lookahead import Lookahead
from slimlab.extras.weight_average import WeightAverage
from slimlab.train import TrainState, train


def test_weight_average_follows_its_decay_and_copies_counters():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update()  # warm-up decay min(0.5, 2/11) = 2/11
    assert torch.allclose(average.average["0.weight"], start + 9 / 11)
    assert int(average.average["1.num_batches_tracked"]) == 7
    assert torch.equal(model[0].weight, start + 1)  # the live weights are left alone


def test_lookahead_moves_the_slow_weights_part_way_every_k_steps():
    model = nn.Linear(2, 1, bias=False)
    start = model.weight.detach().clone()
    lookahead = Lookahead(model, steps=2, alpha=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.update(0)  # step 1 of 2: nothing happens
    assert torch.equal(model.weight, start + 1)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.update(1)  # step 2: slow moves half way to start + 2, and SGD restarts from it
    assert torch.allclose(model.weight, start + 1) and torch.allclose(lookahead.slow[0], start + 1)


def _loader():
    generator = torch.Generator().manual_seed(0)
    split = ImageSplit(torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8, generator=generator), torch.arange(64) % 10)
    return DeviceLoader(split, 16, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=True, alternate_flips=True, drop_last=True)


@pytest.mark.parametrize("lookahead_steps, extra", [
    (None, {}),
    (5, {}),  # 5 does not divide the 4 steps per epoch: the phase must survive
    (5, {"optimizer": "muon"}),  # Muon's groups keep their own learning rates across a resume
])
def test_weight_average_and_lookahead_finish_training_and_resume_exactly(lookahead_steps, extra):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0, ema_decay=0.9, lookahead_steps=lookahead_steps, **extra)
    torch.manual_seed(0)
    straight = create_model("resnet20", num_classes=10)
    initial = {k: v.clone() for k, v in straight.state_dict().items()}
    states = []
    train(straight, _loader(), cfg, save_checkpoint=lambda state: states.append(copy.deepcopy(state)), progress=False)
    raw_final = states[-1].model
    assert "ema" in states[-1].extra and ("lookahead" in states[-1].extra) == (lookahead_steps is not None)
    assert not torch.equal(straight.state_dict()["fc.weight"], raw_final["fc.weight"])  # finished on the average
    assert torch.equal(straight.state_dict()["fc.weight"], states[-1].extra["ema"]["average"]["fc.weight"])

    resumed = create_model("resnet20", num_classes=10)
    resumed.load_state_dict(initial)
    after_one = TrainState.from_dict(states[0].to_dict())  # as if killed after epoch 1
    train(resumed, _loader(), cfg, resume=after_one, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("finish", [{"train.ema_decay": 0.9, "train.lookahead_steps": 2},
                                    {"train.lookahead_steps": 3}],  # 8 steps: the slow weights sync once more at the end
                         ids=["average", "lookahead-sync"])
def test_a_run_with_the_recipe_options_reports_the_validation_of_the_weights_it_ends_on(finish, tmp_path):
    import slimlab
    from conftest import tiny_config
    from slimlab.config import build_config

    config = build_config(tiny_config(**{"train.uncropped_final_epochs": 1, "data.alternate_flips": True,
                                         "data.crop_padding_mode": "reflect", **finish}))
    record = slimlab.run(config, store=tmp_path / "store", progress=False)
    assert record.status == "done", record.error
    last = Store(tmp_path / "store").history(record.id)[-1]
    assert record.metrics["val_top1"] == last["final_val_top1"]
    assert 0 <= last["val_top1"] <= 100
    assert record.notes["train_precision"] == "fp32"


def test_retraining_after_pruning_never_averages_and_ends_uncropped_like_its_parent():
    from slimlab.prune.lottery import retrain_config

    parent = TrainConfig(epochs=20, ema_decay=0.998, uncropped_final_epochs=2)
    finetune = retrain_config(parent, "finetune", finetune_epochs=1, finetune_lr=0.01)
    assert finetune.ema_decay is None and finetune.uncropped_final_epochs == 1 and finetune.epochs == 1
    rewind = retrain_config(parent, "weight_rewind", finetune_epochs=1, finetune_lr=0.01)
    assert rewind.ema_decay is None and rewind.uncropped_final_epochs == 2 and rewind.epochs == 20
    assert finetune.lr == 0.01 and finetune.muon_lr == pytest.approx(parent.muon_lr * 0.01 / parent.lr)  # Muon scaled alike
    with_copies = TrainConfig(epochs=20, lookahead_steps=5, ema_decay=0.998, optimizer="muon")
    for after_round in ("finetune", "weight_rewind"):
        retrain = retrain_config(with_copies, after_round, finetune_epochs=1, finetune_lr=0.01)
        assert retrain.lookahead_steps is None and retrain.ema_decay is None and retrain.optimizer == "muon"
        TrainConfig.model_validate(retrain.model_dump())  # still a valid config, as QAT builds its own by validation


def test_what_fine_tuning_switches_off_comes_from_each_extras_own_declaration(monkeypatch):
    """A new extra that keeps a copy of the weights is switched off for retraining by its declaration alone."""
    from slimlab import extras
    from slimlab.prune.lottery import retrain_config
    from slimlab.train import fine_tuning_overrides

    assert fine_tuning_overrides(TrainConfig()) == {"ema_decay": None, "lookahead_steps": None}
    extras.extras()  # the built-in extras first, so the patched registry keeps them
    monkeypatch.setitem(extras._REGISTRY, "copycat", extras.Extra(lambda c: None, False, {"label_smoothing": 0.0}, False))
    monkeypatch.setitem(extras._REGISTRY, "harmless", extras.Extra(lambda c: None, True, {"nesterov": False}, False))
    retrain = retrain_config(TrainConfig(label_smoothing=0.1), "lr_rewind", finetune_epochs=1, finetune_lr=0.01)
    assert retrain.label_smoothing == 0.0 and retrain.nesterov  # switched off / left alone, as each declared


def test_cpu_bf16_trains_in_bf16_where_the_cpu_has_it_and_says_what_it_used(monkeypatch):
    from slimlab import train as train_module

    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0, cpu_bf16=True)
    if not train_module.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    runs = []
    for _ in range(2):  # bf16 on CPU is still a function of the seed
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=10)
        history = train(model, _loader(), cfg, progress=False)
        runs.append((history[-1], model.state_dict()["fc.weight"].clone()))
    assert runs[0][0]["precision"] == "bf16-autocast"
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][1].dtype == torch.float32  # the weights themselves stay fp32

    torch.manual_seed(0)
    fp32 = create_model("resnet20", num_classes=10)
    fp32_history = train(fp32, _loader(), cfg.model_copy(update={"cpu_bf16": False}), progress=False)
    assert fp32_history[-1]["precision"] == "fp32"
    assert fp32_history[-1]["train_loss"] != runs[0][0]["train_loss"]  # bf16 really ran

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)  # an older CPU falls back and records it
    assert train_module.training_precision(torch.device("cpu"), cfg) == "fp32"
