"""The coverage record of a run: per layer int8 or float and why, per channel group pruned or why not, a summary in
`show`, and a compression step that compresses nothing fails in one line instead of recording a run that claims it."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from torch import nn

import slimlab
from conftest import tiny_config
from slimlab.config import build_config
from slimlab.display import record_lines
from slimlab.errors import SlimlabError
from slimlab.quantize import DynamicConfig, quantize_dynamic_
from slimlab.quantize.coverage import explain, layer_coverage, per_module, refuse_no_op, summary


def _run(store_dir, steps):
    return slimlab.run(build_config(tiny_config(steps=steps, **{"train.epochs": 1})), store_dir, progress=False)


def test_a_quantized_run_records_why_each_float_layer_stayed_float(store_dir):
    record = _run(store_dir, [{"kind": "quantize", "method": "static", "skip": ["fc"]}])
    assert record.status == "done", record.error
    rows = json.loads((store_dir / "runs" / record.id / "quant_layers.json").read_text())
    floats = [r for r in rows if r["weight_dtype"] == "float32"]
    assert [(r["name"], r["reason"]) for r in floats] == [("fc", "user skip")]
    assert all(r["reason"] == "" for r in rows if r["weight_dtype"] == "int8")
    line = record.notes["coverage"][0]
    assert line == f"quantize (static, x86): {len(rows) - 1} of {len(rows)} layers int8; 1 float: 1 user skip"
    assert any(f"coverage: {line}" in text for text in record_lines(record))


def test_a_quantization_that_leaves_every_layer_float_fails_in_one_line(store_dir):
    with pytest.raises(SlimlabError) as caught:  # resnet20: fc is its only Linear
        _run(store_dir, [{"kind": "quantize", "method": "dynamic", "skip": ["fc"]}])
    message = str(caught.value)
    assert message.startswith("dynamic quantization left all 22 weighted layers float (21 no dynamic kernel, 1 user skip")
    assert message.endswith("nothing was compressed") and "\n" not in message


def test_a_pruned_run_records_its_engine_and_the_groups_it_kept(store_dir):
    record = _run(store_dir, [{"kind": "prune", "method": "ln_structured", "amount": 0.5, "after_round": "none"}])
    assert record.status == "done", record.error
    line = record.notes["coverage"][0]
    assert line.startswith("prune (ln_structured, engine slimlab): ") and "channel groups pruned" in line
    assert "feeds the output" in line and record.metrics["prune_params_after"] < 0.5 * record.metrics["prune_params_before"]


class Attention(nn.Module):
    """A transformer block's attention as torchvision writes Swin's: the projection's weight read, never called."""

    def __init__(self):
        super().__init__()
        self.qkv, self.mha, self.head = nn.Linear(8, 24), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        q, k, v = nn.functional.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
        return self.head(self.mha(q, k, v)[0].mean(1))


def test_dynamic_quantization_of_attention_keeps_read_projections_float_and_says_why():
    model, x = Attention().eval(), torch.randn(2, 5, 8)
    expected = model(x)
    quantized = quantize_dynamic_(model, DynamicConfig(), example=x)
    assert torch.allclose(quantized(x), expected, atol=0.05)  # before: AttributeError / TypeError inside attention
    rows = explain(layer_coverage(quantized), Attention(), "dynamic", known_reasons=quantized.slimlab_float_reasons)
    why = {r["name"]: r["reason"] for r in rows}
    assert why["head"] == "" and "never called" in why["qkv"] and "torch's attention" in why["mha.out_proj"]
    assert summary(rows).startswith("1 of 3 layers int8; 2 float: 1 unsupported op (")


def test_every_engine_counts_the_same_layers_of_an_attention_model_with_a_shared_convolution():
    """Issue 24 from outside: x86 hid nn.MultiheadAttention's input projection (4 of 5 int8, fraction 0.91 where 0.72 is
    true), ONNX Runtime counted the attention's activation matmuls as layers and each call of a shared module apart."""
    from slimlab.quantize import StaticConfig, quantize_static
    from slimlab.quantize.coverage import per_module

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.conv = nn.Conv2d(3, 8, 4, stride=4), nn.Conv2d(8, 8, 1)
            self.mha, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            t = self.conv(torch.relu(self.conv(self.patch(x)))).flatten(2).transpose(1, 2)
            return self.head(self.mha(t, t, t, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model, batches = Block().eval(), [torch.randn(8, 3, 16, 16) for _ in range(2)]
    total = sum(p.numel() for n, p in model.named_parameters() if "weight" in n)
    for engine in ("x86", "pt2e", "onnxruntime"):
        rows = per_module(layer_coverage(quantize_static(model, StaticConfig(engine=engine), batches)), model)
        assert sum(r["weights"] for r in rows) == total and [r["name"] for r in rows].count("conv") == 1, engine
    # torch.ao swaps nn.MultiheadAttention for its quantizable twin only in some forms: where it did not, the rows
    # list out_proj alone, and the input projection is added, float, with why
    rows = [{"name": "patch", "type": "Conv2d", "weight_dtype": "int8", "weights": 384},
            {"name": "mha.out_proj", "type": "Linear", "weight_dtype": "float32", "weights": 64},
            {"name": "head", "type": "Linear", "weight_dtype": "int8", "weights": 24}]
    rows = explain(per_module(rows, model), model, "static", engine="x86")
    assert rows[-2] == {"name": "mha.in_proj", "type": "MultiheadAttention", "weight_dtype": "float32", "weights": 192,
                        "reason": "unsupported op (torch's attention reads this projection's weight itself)"}
    # and a layer no row lists at all (its parent reads its weight, as Swin's attention does) is a float row too
    assert rows[-1] == {"name": "conv", "type": "Conv2d", "weight_dtype": "float32", "weights": 64,
                        "reason": "unsupported op (its parent reads the weight; the module is never called)"}
    assert summary(rows) == ("2 of 5 layers int8; 3 float: 2 unsupported op (torch's attention reads this projection's "
                             "weight itself), 1 unsupported op (its parent reads the weight; the module is never called)")


class ShapeScaledAttention(nn.Module):
    """Attention as people write it, its scale a Python number read from the tensor's shape: torch.ao's x86 engine
    fails on it inside its observers, and Torch-Pruning returns a model whose reshape no longer fits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 16, heads: int = 2):
        super().__init__()
        self.heads, self.patch = heads, nn.Conv2d(in_channels, width, 8, stride=8)
        self.qkv, self.proj, self.head = nn.Linear(width, 3 * width), nn.Linear(width, width), nn.Linear(width, num_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        return self.head((t + self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))).mean(1))


def test_an_error_from_below_is_one_line_naming_where_with_the_traceback_kept(tmp_path, capsys):
    """Issue 24 from outside: an engine's AttributeError reached the user as a traceback."""
    from slimlab.cli import main

    raw = tiny_config(**{"model.name": "tests.test_coverage:ShapeScaledAttention", "train.epochs": 0,
                         "steps": [{"kind": "quantize", "method": "static", "engine": "x86"}]})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "run.yaml"), "--store", str(tmp_path / "s")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("slimlab: error: run ") and " failed in slimlab/quantize/" in line and "Traceback" not in line
    kept = next((tmp_path / "s" / "runs").glob("*/error.txt")).read_text()
    assert kept.startswith("Traceback") and kept.strip().splitlines()[-1].split(":")[0] in line


def test_torch_pruning_that_breaks_the_forward_pass_is_refused_and_auto_falls_back(tmp_path):
    from slimlab.prune.structured import prune_structured_

    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model, example = ShapeScaledAttention().eval(), torch.randn(2, 3, 32, 32)
    with pytest.raises(SlimlabError, match="Torch-Pruning left ShapeScaledAttention unable to run"):
        prune_structured_(copy.deepcopy(model), 0.5, example, engine="torch_pruning")
    with pytest.raises(SlimlabError, match="^no structured engine could prune ShapeScaledAttention: slimlab: .*torch_pruning: Torch-Pruning left"):
        prune_structured_(model, 0.5, example, engine="auto")
    assert model(example).shape == (2, 10)  # left as it was


def test_a_layer_pattern_that_names_no_module_is_one_line_before_any_record(tmp_path, capsys):
    """Issue 24 from outside: a skip typo failed after the training and left a failed run in the store."""
    from slimlab.cli import main

    for step in ({"kind": "quantize", "method": "static", "skip": ["nosuchlayer"]},
                 {"kind": "prune", "method": "l1", "amount": 0.5, "include": ["layer1.*", "nosuch*"]}):
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny_config(steps=[step])))
        assert main(["run", str(tmp_path / "run.yaml"), "--store", str(tmp_path / "s")]) == 2
        key = "skip" if "skip" in step else "include"
        assert f"steps[0].{key}: pattern '{step[key][-1]}' matches no module of CifarResNet (its modules: conv1, bn1," in capsys.readouterr().err
    assert not (tmp_path / "s" / "runs").exists()


def test_dynamic_quantization_of_a_transformer_encoder_keeps_the_layers_it_reads_float():
    """Issue 24 from outside: nn.TransformerEncoderLayer's fast-path check reads linear1.weight; swapped, it raised
    AttributeError: 'function' object has no attribute 'device'."""
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2)
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(16 * 5, 3)).eval()
    x = torch.randn(2, 5, 16)
    expected = model(x)
    quantized = quantize_dynamic_(model, DynamicConfig(), example=x)
    assert torch.allclose(quantized(x), expected, atol=0.05)
    rows = explain(per_module(layer_coverage(quantized), model), model, "dynamic", known_reasons=quantized.slimlab_float_reasons)
    assert summary(rows) == "1 of 9 layers int8; 8 float: 8 unsupported op (torch's attention reads this projection's weight itself)"


class ConcatResidual(nn.Module):
    """Two branches concatenated, then added to their input: every channel group is tied to the stem's."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(in_channels, 32, 3, padding=1), nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(32, 16, 1)
        self.head, self.fc = nn.Conv2d(32, 64, 1), nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1) + x
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def test_structured_pruning_far_short_of_its_amount_says_so(store_dir):
    """Issue 24 from outside: 50% of the channels asked, 15% of the parameters removed, and the run read as a success."""
    config = tiny_config(steps=[{"kind": "prune", "method": "ln_structured", "amount": 0.5, "after_round": "none"}],
                         **{"train.epochs": 0, "model.name": "tests.test_coverage:ConcatResidual"})
    record = slimlab.run(build_config(config), store_dir, progress=False)
    line = record.notes["coverage"][0]
    left = record.metrics["prune_params_after"] / record.metrics["prune_params_before"]
    assert left > 0.625 and f"SHORT of amount 0.5: {1 - left:.0%} of the parameters removed" in line, line


def test_onnx_node_scopes_map_back_to_the_float_models_module_names():
    """Swin's nested Sequentials came out of ONNX as 'features.1.features.1.0.mlp.mlp.0': no skip pattern or layer
    count could match them."""
    from slimlab.quantize.layers import called_module
    from slimlab.quantize.onnx_runtime import module_of

    assert module_of("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_of("/features/features.1/features.1.0/attn/MatMul") == "features.1.0.attn"
    assert module_of("/features/features.1/features.1.0/mlp/mlp.0/Gemm") == "features.1.0.mlp.0"
    assert module_of("/fc/Gemm") == "fc" and module_of("/Flatten") == ""
    assert called_module("conv_1", {"conv", "fc"}) == "conv" and called_module("block_1", {"block_1"}) == "block_1"


def test_refuse_no_op_names_the_first_layer():
    rows = [{"name": "features.0", "type": "Conv2d", "weight_dtype": "float32", "reason": "no dynamic kernel"}]
    with pytest.raises(SlimlabError, match="left all 1 weighted layers float .*first: features.0 Conv2d"):
        refuse_no_op(rows, "dynamic")


def test_the_report_has_a_coverage_table_per_variant(tmp_path):
    from slimlab.report.study import load_study
    from slimlab.report.tables import build_tables, coverage_table
    from slimlab.store import Store

    store, runs = Store(tmp_path / "store"), []
    lines = {"float": [], "int8": ["quantize (static, x86): 6 of 8 layers int8; 2 float: 2 unsupported op (attention)"], "ort": None}
    for variant, coverage in lines.items():
        config = {"name": f"c:{variant}/seed=0", "seed": 0, "data": {"name": "synthetic"}, "model": {"name": "resnet20"},
                  "steps": [{"kind": "quantize", "method": "onnxruntime"}] if coverage is None else []}
        store.start(variant, config, config["name"])
        if coverage is None:  # a variant no seed finished is in the table with why (it was left out)
            store.fail(variant, "RunFailed: run 1234 failed in slimlab/quantize/onnx_runtime.py: export failed\nmore")
        else:
            store.finish(variant, {"top1": 50.0}, {"coverage": coverage}, {"device": "cpu"}, [])
        runs.append({"id": variant, "label": f"{variant}/seed=0", "variant": variant, "point": {"seed": 0}, "training": None})
    (store.root / "studies").mkdir()
    (store.root / "studies" / "c.json").write_text(json.dumps({"name": "c", "source": "c.yaml", "updated": 0.0, "axes": ["seed"], "runs": runs}))
    study = load_study(store.root, "c")
    assert coverage_table(study).rows == [["int8", "quantize (static, x86)", "6 of 8 layers int8; 2 float: 2 unsupported op (attention)"],
                                          ["ort", "quantize (onnxruntime)", "failed (error): RunFailed: run 1234 failed in "
                                           "slimlab/quantize/onnx_runtime.py: export failed"]]
    assert "coverage" in [t.key for t in build_tables(study)]


def test_a_float_baseline_timed_under_load_is_flagged_and_so_are_its_speedups(store_dir, monkeypatch):
    """Issue 26: a new user's run recorded a 156.9x speed-up over a float baseline timed 140x too slow, unflagged."""
    import slimlab.measure
    from slimlab.deployable import inherit_flags

    real = slimlab.measure.measure_latency
    calls = []

    def measure(model, example, *args, **kwargs):
        calls.append(type(model).__name__)
        result = {**real(model, example, *args, **kwargs), "disturbed": ""}  # this machine's own load is not the test's
        return {**result, "disturbed": "another process held the CPU"} if len(calls) == 1 else result  # the first baseline

    monkeypatch.setattr(slimlab.measure, "measure_latency", measure)
    record = _run(store_dir, [{"kind": "quantize", "method": "static"}])
    flagged = record.notes["latency_flagged"]
    assert "float_eager_latency_b1_median_ms" in flagged and "speedup_b1_vs_float_eager" in flagged
    assert "speedup_b4_vs_float_eager" not in flagged and "speedup_b1_vs_float_compiled" not in flagged
    assert "another process held the CPU" in record.notes["float_baselines_noisy"]
    assert inherit_flags(["latency_b4_median_ms"], {"speedup_b4_vs_float_compiled": 2.0, "speedup_b1_vs_float_eager": 1.0}) == [
        "latency_b4_median_ms", "speedup_b4_vs_float_compiled"]
