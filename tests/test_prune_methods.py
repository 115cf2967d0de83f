"""The pruning-method registry and the first-order Taylor score: names refused in one line, a method added by one
registered function, Taylor's ranking (exact, local and global, state left untouched), and Taylor through the step and a study."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import REPO, tiny_config
from slimlab.config import build_config
from slimlab.errors import ConfigError
from slimlab.prune import (LayerFilter, PruneContext, get_method, iterative_targets, layer_sparsity, load_sparse,
                           mask_sparsity, method_names, prune_l1_unstructured_, prune_structured_, prune_unstructured_,
                           register_method)
from slimlab.prune import methods as registry
from slimlab.store import Store

torch.set_num_threads(1)


def _batches(n=3, batch=16, features=6, classes=3, dead=(), seed=0):
    """Random (inputs, targets) batches; input features in `dead` are always zero, so their weights get no gradient."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, features, generator=generator)
        x[:, list(dead)] = 0
        out.append((x, torch.randint(0, classes, (batch,), generator=generator)))
    return out


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


# --- the registry ---------------------------------------------------------------------------------------------


def test_the_built_in_methods_are_registered_with_their_kind():
    assert method_names() == ["l1", "ln_structured", "random", "taylor"]
    assert method_names("unstructured") == ["l1", "random", "taylor"] and method_names("structured") == ["ln_structured"]
    assert get_method("taylor").needs_batches and not get_method("l1").needs_batches


def test_an_unknown_method_is_refused_in_one_line_that_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^unknown pruning method 'tayler'; known: l1, ln_structured, random, taylor$"):
        get_method("tayler")
    with pytest.raises(ConfigError, match=r"step 0 \(prune\): method: unknown pruning method 'tayler'; known: l1, ln_structured"):
        build_config({"steps": [{"kind": "prune", "method": "tayler"}]})
    with pytest.raises(ConfigError, match=r"unknown unstructured pruning method 'ln_structured'; known: l1, random, taylor$"):
        prune_unstructured_(_mlp(), 0.5, "ln_structured")


def test_the_cli_refuses_an_unknown_method_in_one_line_without_a_traceback(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tiny_config(steps=[{"kind": "prune", "method": "tayler"}])))
    done = subprocess.run([sys.executable, "-m", "slimlab", "run", str(tmp_path / "exp.yaml"), "--store", str(tmp_path / "store")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "unknown pruning method 'tayler'; known: l1, ln_structured, random, taylor" in done.stderr
    assert not (tmp_path / "store").exists()


def test_a_method_is_one_registered_function_and_the_step_config_accepts_it(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # the registration ends with the test

    @register_method("largest_first", "unstructured")
    def largest_first(weights, context):
        """-|w|: prunes the largest weights (a test method)."""
        return {name: -w.detach().abs() for name, w in weights.items()}

    model = _mlp()
    before = {n: p.detach().abs().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    masks = prune_unstructured_(model, 0.25, "largest_first")
    for name, mask in masks.items():  # every pruned weight was at least as large as every kept one
        assert before[name][~mask].min() >= before[name][mask].max()
    assert build_config({"steps": [{"kind": "prune", "method": "largest_first"}]}).steps[0]["method"] == "largest_first"


def _channel_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten())
    with torch.no_grad():  # channel c of the first conv has filter norm proportional to c + 1
        net[0].weight.copy_(torch.arange(1.0, 9.0)[:, None, None, None].expand(8, 3, 3, 3))
    return net


def test_a_structured_method_is_one_registered_function_too(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))

    @register_method("weakest_channels_kept", "structured")
    def weakest_channels_kept(weights, context):
        """Minus the L1 norm of each filter: removes the strongest channels (a test method)."""
        return {name: -w.detach().abs().reshape(w.shape[0], -1).sum(1) for name, w in weights.items()}

    example = torch.randn(1, 3, 8, 8)
    by_norm, reversed_ = _channel_net(), _channel_net()
    prune_structured_(by_norm, 0.5, example, select=LayerFilter(include=("0",)))
    prune_structured_(reversed_, 0.5, example, "weakest_channels_kept", select=LayerFilter(include=("0",)))
    assert by_norm[0].weight[:, 0, 0, 0].tolist() == [5.0, 6.0, 7.0, 8.0]
    assert reversed_[0].weight[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert reversed_[3].in_channels == 4 and reversed_(example).shape == (1, 4 * 4 * 4)


def test_a_score_of_the_wrong_shape_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register_method("per_row", "unstructured")(lambda weights, context: {n: w.detach().abs().sum(1) for n, w in weights.items()})
    with pytest.raises(ConfigError, match=r"no score of the weight's shape for 0.weight"):
        prune_unstructured_(_mlp(), 0.5, "per_row")


# --- Taylor -----------------------------------------------------------------------------------------------------


def test_taylor_prunes_a_large_weight_without_gradient_that_magnitude_keeps():
    data = _batches(dead=(0,))  # feature 0 is always zero: its weights cannot change the loss
    magnitude_model, taylor_model = _mlp(), _mlp()
    for model in (magnitude_model, taylor_model):
        with torch.no_grad():
            model[0].weight[:, 0] = 5.0  # the largest weights of the layer, and useless
    amount = 0.25  # 12 of the 48 first-layer weights
    by_magnitude = prune_l1_unstructured_(magnitude_model, amount)
    by_taylor = prune_unstructured_(taylor_model, amount, "taylor", batches=data)  # a list, or a function returning batches
    assert by_magnitude["0.weight"][:, 0].all()  # magnitude keeps the big ones
    assert not by_taylor["0.weight"][:, 0].any()  # Taylor scores them 0 and drops all 8 of them first
    for masks in (by_magnitude, by_taylor):  # exact count in every layer
        assert [int((~m).sum()) for m in masks.values()] == [12, 6]
    assert (taylor_model[0].weight[:, 0] == 0).all()


def test_taylor_score_is_the_mean_over_batches_of_abs_weight_times_gradient_and_reads_only_max_batches():
    model, data = _mlp(), _batches(n=5)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n.endswith("weight")}
    for x, y in data[:2]:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n in expected:
            expected[n] += (model.get_parameter(n) * model.get_parameter(n).grad).abs() / 2
    model.zero_grad(set_to_none=True)
    read = []

    def batches():
        for batch in data:
            read.append(1)
            yield batch

    weights = {n: model.get_parameter(n) for n in expected}
    scores = get_method("taylor").score(weights, PruneContext(model=model, batches=batches, max_batches=2))
    assert len(read) == 2
    for n in expected:
        torch.testing.assert_close(scores[n], expected[n])


def test_global_taylor_ranks_all_layers_on_one_threshold():
    model, data = _mlp(seed=3), _batches(n=2, seed=3)
    weights = {n: model.get_parameter(n) for n in ("0.weight", "2.weight")}
    scores = get_method("taylor").score(weights, PruneContext(model=model, batches=lambda: data))
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    drop = round(0.6 * flat.numel())
    threshold = flat.sort().values[drop - 1]
    masks = prune_unstructured_(model, 0.6, "taylor", "global", batches=lambda: data)
    assert sum(int((~m).sum()) for m in masks.values()) == drop  # exact over the layers together
    for n, mask in masks.items():  # kept exactly where the score is above the global threshold
        assert torch.equal(mask, scores[n] > threshold)
    per_layer = layer_sparsity(masks)
    assert abs(per_layer["0.weight"] - per_layer["2.weight"]) > 0.05  # not the same ratio per layer, as local gives
    local = prune_unstructured_(_mlp(seed=3), 0.6, "taylor", "local", batches=lambda: data)
    assert [round(s, 3) for s in layer_sparsity(local).values()] == [round(29 / 48, 3), round(14 / 24, 3)]


def test_iterative_taylor_masks_only_shrink_and_reach_each_target_exactly():
    model, data = _mlp(), _batches()
    masks = None
    for target in iterative_targets(0.8, 3):
        current = mask_sparsity(masks) if masks else 0.0
        new = prune_unstructured_(model, 1 - (1 - target) / (1 - current), "taylor", "global", masks=masks, batches=lambda: data)
        if masks is not None:
            assert all(not (new[n] & ~masks[n]).any() for n in new)  # nothing pruned comes back
        masks = new
        assert abs(mask_sparsity(masks) - target) < 1 / 72 + 1e-9


def test_taylor_leaves_the_model_as_it_found_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).train()
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    model(data[0][0]).sum().backward()  # a training step's gradients, as gradual pruning finds them
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    prune_unstructured_(model, 0.5, "taylor", batches=lambda: data)
    assert model.training and model[1].training
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())  # batch-norm statistics untouched


def test_taylor_without_batches_says_what_to_pass():
    with pytest.raises(ConfigError, match=r"method 'taylor' scores weights by their gradients: pass batches="):
        prune_unstructured_(_mlp(), 0.5, "taylor")


# --- through the step and a study ---------------------------------------------------------------------------------


def _experiment(step):
    return build_config({**tiny_config(**{"model.name": "lenet5", "train.epochs": 2, "train.max_batches_per_epoch": 3}),
                         "steps": [{"kind": "prune", "gradient_batches": 2, **step}]})


@pytest.mark.parametrize("step", [
    {"scope": "global", "amount": 0.8, "schedule": "iterative", "rounds": 2, "after_round": "weight_rewind", "rewind_epoch": 1,
     "control": "random_mask"},
    {"scope": "local", "amount": 0.6, "schedule": "gradual", "rounds": 3, "finetune_epochs": 2},
], ids=["iterative-late-rewind-random-mask", "gradual"])
def test_taylor_runs_the_schedules_and_lottery_options_to_the_target(step, tmp_path):
    from slimlab.run import run

    record = run(_experiment({"method": "taylor", **step}), store=tmp_path, progress=False)
    assert record.status == "done", record.error
    assert record.metrics["prune_sparsity"] == pytest.approx(step["amount"], abs=1e-3)
    weights = load_sparse((tmp_path / "runs" / record.id / "model_sparse.bin").read_bytes())
    layers = json.loads((tmp_path / "runs" / record.id / "prune_layers.json").read_text())
    assert layers["method"] == "taylor"
    zeros = sum(int((weights[f"{n}.weight"] == 0).sum()) for n in layers["layers"])
    assert zeros / sum(v["numel"] for v in layers["layers"].values()) == pytest.approx(step["amount"], abs=1e-3)


def test_a_study_grid_over_magnitude_and_taylor_stores_both_runs_with_their_method(tmp_path):
    from slimlab.executors import ExecOptions, execute
    from slimlab.plan import load_study, plan_stages

    base = tiny_config(**{"model.name": "lenet5", "train.epochs": 2, "train.max_batches_per_epoch": 3})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "methods", "base": "base.yaml",
        "set": {"steps": [{"kind": "prune", "scope": "global", "amount": 0.7, "after_round": "finetune", "gradient_batches": 2}]},
        "grid": {"steps.0.method": ["l1", "taylor"]}}))
    plan = plan_stages(load_study(tmp_path / "study.yaml"))
    assert len(plan.runs) == 2 and len(plan.trainings) == 1  # one dense parent for both methods
    store = Store(tmp_path / "store")
    outcome = execute(plan, store, "inline", ExecOptions(progress=False))
    assert sorted(outcome.statuses.values()) == ["done", "done"]
    records = {store.get(run_id).config["steps"][0]["method"]: store.get(run_id) for run_id in outcome.statuses}
    assert set(records) == {"l1", "taylor"}
    zeros = {}
    for method, record in records.items():
        assert record.metrics["prune_sparsity"] == pytest.approx(0.7, abs=1e-3)
        folder = store.run_dir(record.id)
        assert json.loads((folder / "prune_layers.json").read_text())["method"] == method
        zeros[method] = {k: v == 0 for k, v in load_sparse((folder / "model_sparse.bin").read_bytes()).items() if k.endswith("weight")}
    assert any(not torch.equal(zeros["l1"][k], zeros["taylor"][k]) for k in zeros["l1"])  # the methods chose other weights
