"""Quantization: int8 weights and file size, error figures, per-layer table, reload, calibration data, user models, engines."""
from __future__ import annotations

import copy
import io
import json
import sys
from itertools import islice

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

import slimlab
from slimlab.config import TrainConfig, build_config
from slimlab.data import ImageSplit
from slimlab.data.loader import DeviceLoader
from slimlab.data.synthetic import make_synthetic
from slimlab.errors import ConfigError, MissingDependencyError, SlimlabError
from slimlab.measure import serialize_deployable
from slimlab.quantize import (DynamicConfig, QATConfig, QATSchedule, QuantizeStepConfig, StaticConfig, apply_quantize,
                              compare_logits, convert_qat_, layer_table, prepare_qat_, quantize_dynamic_, quantize_onnxruntime,
                              quantize_static_, to_reduced_float)
from slimlab.quantize.fusion import fusable_groups
from slimlab.quantize.layers import is_quantized_layer, weighted_layers
from slimlab.quantize.qat import calibrate_observers_
from slimlab.quantize.torch_engine import float_reference, graph_mode
from slimlab.run import StepContext, prepare_data
from slimlab.train import evaluate, train

MEAN, STD = (0.3,) * 3, (0.25,) * 3
# torchao's bar for int8: noise at most 1% of the signal's power. Per-channel int8 with fused BN keeps each layer near
# 30-40 dB; the error accumulated over ResNet-20's 21 layers must still leave the logits above 20 dB.
MIN_SQNR_DB = 20.0


def _batches(split: ImageSplit, batch_size: int, count: int) -> list[torch.Tensor]:
    loader = DeviceLoader(split, batch_size, MEAN, STD)
    return [x for x, _ in list(loader)[:count]]


@pytest.fixture(scope="module")
def splits() -> tuple[ImageSplit, ImageSplit]:
    return make_synthetic(512, 10, 32, 3, seed=1), make_synthetic(128, 10, 32, 3, seed=2)


@pytest.fixture(scope="module")
def trained(splits) -> nn.Module:
    """ResNet-20 after 24 SGD steps on the synthetic bands (100% on held-out images): trained weights and BN statistics."""
    torch.manual_seed(0)
    model = slimlab.create_model("resnet20")
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=0, label_smoothing=0, device="cpu", channels_last=False)
    # Flips only: a random crop would shift the bright band that defines the class.
    train(model, DeviceLoader(splits[0], 64, MEAN, STD, shuffle=True, augment=True, crop_padding=0), cfg, progress=False)
    assert evaluate(model, DeviceLoader(splits[1], 64, MEAN, STD))["top1"] > 90
    return model.eval()


@pytest.fixture(scope="module")
def static_int8(trained, splits):
    """(float model, its per-channel histogram int8 PTQ) calibrated on training images only."""
    model = copy.deepcopy(trained)
    return trained, quantize_static_(model, StaticConfig(observer="histogram", per_channel=True), _batches(splits[0], 32, 4))


def test_static_weights_are_int8_in_range(static_int8):
    _, quantized = static_int8
    layers = weighted_layers(quantized)
    assert len(layers) == 22 and all(is_quantized_layer(m) for _, m in layers)  # 21 convs + fc, none left float
    for name, module in layers:
        weight = module.weight()
        assert weight.dtype == torch.qint8, name
        assert weight.qscheme() == torch.per_channel_affine and not weight.q_per_channel_zero_points().any(), name  # symmetric
        assert weight.q_per_channel_scales().numel() == weight.shape[0], name
        assert -128 <= weight.int_repr().min() and weight.int_repr().max() <= 127, name
    with pytest.raises(SlimlabError, match="already quantized"):
        quantize_static_(quantized, StaticConfig(), [torch.zeros(1, 3, 32, 32)])


def test_static_sqnr_above_threshold_on_held_out_images(static_int8, splits):
    float_model, quantized = static_int8
    error = compare_logits(float_model, quantized, _batches(splits[1], 64, 2))
    assert error["sqnr_db"] > MIN_SQNR_DB
    assert error["top1_agreement"] >= 95 and error["rel_l2"] < 0.1 and 0 <= error["kl"] < 0.05


@pytest.mark.parametrize("engine, observer, per_channel", [("x86", "moving_average", False), ("fbgemm", "minmax", True),
                                                          ("qnnpack", "histogram", False)])
def test_every_engine_and_observer_gives_int8_above_threshold(trained, splits, engine, observer, per_channel):
    previous = torch.backends.quantized.engine  # process-wide: the kernels follow the engine set at conversion
    try:
        config = StaticConfig(engine=engine, observer=observer, per_channel=per_channel)
        quantized = quantize_static_(copy.deepcopy(trained), config, _batches(splits[0], 32, 3))
        assert all(m.weight().dtype == torch.qint8 for _, m in weighted_layers(quantized))
        assert compare_logits(trained, quantized, _batches(splits[1], 64, 2))["sqnr_db"] > MIN_SQNR_DB
    finally:
        torch.backends.quantized.engine = previous


def test_layer_table_lists_every_quantized_layer(static_int8, splits):
    float_model, quantized = static_int8
    rows = layer_table(float_reference(float_model, quantized), quantized, _batches(splits[1], 32, 1))
    float_layers = {n for n, m in float_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {r["name"] for r in rows} == float_layers
    assert all(r["weight_dtype"] == "int8" and r["sqnr_db"] > 15 and r["local_sqnr_db"] > 15 for r in rows)


def test_int8_file_is_a_quarter_of_float():
    torch.manual_seed(0)
    model = slimlab.create_model("resnet18").eval()
    example = torch.randn(2, 3, 32, 32)
    float_bytes, _ = serialize_deployable(model, example[:1])
    quantized = quantize_static_(model, StaticConfig(observer="minmax"), [example])
    int8_bytes, fmt = serialize_deployable(quantized, example[:1])
    assert fmt == "torchscript"
    assert 0.24 < len(int8_bytes) / len(float_bytes) < 0.27  # 1/4 plus scales, zero points and TorchScript code


def test_saved_int8_model_reloads_with_identical_outputs(static_int8, splits):
    _, quantized = static_int8
    x = _batches(splits[1], 16, 1)[0]
    blob, fmt = serialize_deployable(quantized, x[:1])
    reloaded = torch.jit.load(io.BytesIO(blob))
    assert fmt == "torchscript"
    with torch.inference_mode():
        assert torch.equal(reloaded(x), quantized(x))


def test_dynamic_quantization_of_a_cnn_converts_only_the_linear_layer(trained):
    quantized = quantize_dynamic_(copy.deepcopy(trained), DynamicConfig())
    rows = layer_table(trained, quantized, [torch.randn(4, 3, 32, 32)])
    assert [r["name"] for r in rows if r["weight_dtype"] == "int8"] == ["fc"]
    assert all(r["weight_dtype"] == "float32" for r in rows if r["type"] == "Conv2d") and len(rows) == 22


def _context(overrides: list[str] = ()) -> StepContext:
    raw = {"data": {"name": "synthetic", "val_size": 64, "test_subset": 64, "options": {"train_size": 256, "test_size": 64}},
           "model": {"name": "resnet20"}, "train": {"epochs": 1, "batch_size": 32, "max_batches_per_epoch": 2, "device": "cpu",
                                                    "warmup_epochs": 0}}
    config = build_config(raw)
    return StepContext(config, prepare_data(config, progress=False), progress=False)


def test_params_and_macs_stay_the_same_through_quantization():
    """LeNet-5 has no batch norm to fold, so int8 and dynamic models have exactly the float model's layers."""
    from slimlab.measure import count_macs, count_parameters

    torch.manual_seed(0)
    model = slimlab.create_model("lenet5", in_channels=1, image_size=28).eval()
    example = torch.randn(4, 1, 28, 28)
    expected = {**count_parameters(model), **count_macs(copy.deepcopy(model), example)}
    assert expected["params"] == 61_706 and expected["macs"] == 416_520
    static = quantize_static_(copy.deepcopy(model), StaticConfig(observer="minmax"), [example])
    dynamic = quantize_dynamic_(copy.deepcopy(model), DynamicConfig())
    for quantized in (static, dynamic):
        counts = {**count_parameters(quantized), **count_macs(quantized, example)}
        assert (counts["params"], counts["macs"]) == (expected["params"], expected["macs"])


def test_dynamic_step_says_the_convolutions_stayed_float(trained):
    context = _context()
    apply_quantize(copy.deepcopy(trained), QuantizeStepConfig(method="dynamic", error_batches=1), context)
    assert context.metrics["quant_layers_quantized"] == 1 and context.metrics["quant_layers_float"] == 21
    assert context.metrics["quant_weight_fraction_quantized"] < 0.01
    assert "convolutions run in float" in context.notes["quant_layers"]


def test_calibration_never_touches_the_test_split(trained):
    context = _context()
    test = context.data.test
    context.data.test = ImageSplit(torch.full_like(test.images, 255), test.labels)  # brighter than any training image
    calls = []
    for name in ("calibration_loader", "test_loader", "train_loader"):
        original = getattr(context, name)
        setattr(context, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    quantized = apply_quantize(copy.deepcopy(trained), QuantizeStepConfig(observer="minmax", calibration_batches=2,
                                                                          calibration_batch_size=32), context)
    assert calls[0] == "calibration_loader" and "train_loader" not in calls
    # The input quantizer's range comes from calibration images alone: test pixels (255) would push it past 2.8.
    stub = quantized.quant
    top = float(stub.scale) * (127 - int(stub.zero_point))
    white = (255 - MEAN[0] * 255) / (STD[0] * 255)
    assert top < white - 0.2
    assert json.loads(context.artifacts["quant_layers.json"])[0]["name"] == "conv1"


def test_on_class_sorted_data_subsets_and_the_calibration_sample_cover_every_class():
    raw = {"data": {"name": "synthetic", "val_size": 0, "train_subset": 200, "test_subset": 100,
                    "options": {"train_size": 1000, "test_size": 500, "sorted_by_class": True}},
           "model": {"name": "resnet20"}, "train": {"device": "cpu"}}
    context = StepContext(build_config(raw), prepare_data(build_config(raw), progress=False), progress=False)
    for split in (context.data.train, context.data.test):
        counts = split.labels.bincount(minlength=10)
        assert counts.min() >= counts.max() - 1 > 0, counts  # balanced, not the first classes stored
    # Two calibration batches of 32 images: stored order would give one class or two; a shuffled sample nearly all.
    labels = torch.cat([y for _, y in islice(context.calibration_loader(32), 2)])
    assert len(labels.unique()) >= 8
    first = torch.cat([y for _, y in islice(context.test_loader(batch_size=32, shuffle=True), 1)])
    assert len(first.unique()) >= 6


class ConcatNet(nn.Module):
    """Two branches joined by a plain torch.cat, their output ranges 20x apart (as DenseNet or Inception blocks can)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.b.weight.mul_(20), self.b.bias.mul_(20)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


def test_a_plain_concat_goes_to_fx_mode_instead_of_sharing_one_scale():
    torch.manual_seed(0)
    model = ConcatNet().eval()
    batches = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    quantized = quantize_static_(copy.deepcopy(model), StaticConfig(observer="minmax"), batches)
    assert graph_mode(quantized) == "fx"  # eager int8 runs but puts both branches on one scale: rel. L2 above 1
    assert compare_logits(model, quantized, batches)["rel_l2"] < 0.3


class PreActivation(nn.Module):
    """A batch norm that runs before its conv, named conv1/bn1/relu1, in a forward torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.relu1, self.conv1 = nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        self.add = FloatFunctional()
        self.head = nn.Linear(8, 10)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-1, 1), self.bn1.weight.uniform_(0.5, 2)

    def forward(self, x):
        if x.shape[0] > 0:  # data-dependent control flow: not traceable
            x = self.stem(x)
        return self.head(self.add.add(x, self.conv1(self.relu1(self.bn1(x)))).mean((2, 3)))


def test_fusion_guessed_from_names_is_checked_and_a_fused_skip_is_refused(trained):
    torch.manual_seed(0)
    with pytest.raises(SlimlabError, match="fusing PreActivation's conv-bn.*changed its output"):
        quantize_static_(PreActivation().eval(), StaticConfig(observer="minmax"), [torch.randn(8, 3, 8, 8)])
    with pytest.raises(ConfigError, match="'layer1.0.bn1' is fused into 'layer1.0.conv1'"):
        quantize_static_(copy.deepcopy(trained), StaticConfig(observer="minmax", skip=("layer1.0.bn1",)), [torch.randn(4, 3, 32, 32)])


class UserNet(nn.Module):
    """Not written for eager quantization: plain `+` residual, functional ReLU, mean pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.body(x)
        return self.head(x.mean((2, 3)))


def test_unregistered_user_model_quantizes_through_the_same_verbs():
    torch.manual_seed(0)
    model, x = UserNet().eval(), torch.randn(8, 3, 32, 32)
    quantized = quantize_static_(copy.deepcopy(model), StaticConfig(), [x])
    assert isinstance(quantized, torch.fx.GraphModule)  # FX graph mode took over where eager mode cannot add
    assert all(m.weight().dtype == torch.qint8 for _, m in weighted_layers(quantized))
    assert compare_logits(model, quantized, [x])["sqnr_db"] > MIN_SQNR_DB
    blob, fmt = serialize_deployable(quantized, x[:1])
    assert fmt == "torchscript" and torch.equal(torch.jit.load(io.BytesIO(blob))(x), quantized(x))

    qat = prepare_qat_(copy.deepcopy(model).train(), QATConfig(), x[:1])
    qat(x)
    assert weighted_layers(convert_qat_(qat))[0][1].weight().dtype == torch.qint8


class SharedReluBlock(nn.Module):
    """torchvision's habit: one ReLU module called twice, which fusing into the first conv would break."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.add = FloatFunctional()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.add.add(out, x))


def test_fusion_follows_the_data_flow():
    assert fusable_groups(SharedReluBlock()) == [["conv1", "bn1"], ["conv2", "bn2"]]
    vgg_groups = fusable_groups(slimlab.create_model("vgg11_bn"))
    assert len(vgg_groups) == 8 and vgg_groups[0] == ["features.0", "features.1", "features.2"]
    torch.manual_seed(0)
    model, x = SharedReluBlock().eval(), torch.randn(8, 3, 16, 16)
    quantized = quantize_static_(copy.deepcopy(model), StaticConfig(observer="minmax"), [x])
    assert graph_mode(quantized) == "eager" and compare_logits(model, quantized, [x])["sqnr_db"] > MIN_SQNR_DB


def test_skip_and_auto_skip_leave_layers_float(trained, splits):
    calibration = _batches(splits[0], 32, 2)
    skipped = quantize_static_(copy.deepcopy(trained), StaticConfig(observer="minmax", skip=("fc", "layer3.*")), calibration)
    rows = layer_table(float_reference(trained, skipped), skipped, calibration[:1])
    assert {r["name"] for r in rows if r["weight_dtype"] == "float32"} == {"fc"} | {r["name"] for r in rows if r["name"].startswith("layer3")}
    assert torch.isfinite(skipped(calibration[0])).all()

    auto = quantize_static_(copy.deepcopy(trained), StaticConfig(observer="minmax", auto_skip_worst_k=2), calibration)
    rows = layer_table(float_reference(trained, auto), auto, calibration[:1])
    assert sum(r["weight_dtype"] == "float32" for r in rows) == 2
    with pytest.raises(ConfigError, match="nothere"):
        quantize_static_(copy.deepcopy(trained), StaticConfig(skip=("nothere",)), calibration)


def test_evaluating_a_qat_model_leaves_its_observers_alone(trained, splits):
    model = prepare_qat_(copy.deepcopy(trained).train(), QATConfig(), torch.zeros(1, 3, 32, 32))
    calibrate_observers_(model, _batches(splits[0], 32, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bright = ImageSplit(torch.full_like(splits[1].images[:64], 255), splits[1].labels[:64])  # far outside the calibrated range
    evaluate(model, DeviceLoader(bright, 32, MEAN, STD))
    # Observed ranges and the on/off flags as they were. (Scales may still be filled in: fused fake-quantizers derive
    # them from the ranges at their first forward with fake quantization on.)
    state = {k: v for k, v in model.state_dict().items() if any(w in k for w in ("min", "max", "enabled"))}
    assert len(state) > 40 and not [k for k, v in state.items() if not torch.equal(v, before[k])]


def test_qat_trains_through_the_loop_and_converts(trained, splits):
    model = prepare_qat_(copy.deepcopy(trained).train(), QATConfig(), torch.zeros(1, 3, 32, 32))
    calibrate_observers_(model, _batches(splits[0], 32, 4))  # scales from calibration data before the first step
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.005, warmup_epochs=0, schedule="cosine", max_batches_per_epoch=2,
                      device="cpu", channels_last=False)
    seen = []
    schedule = QATSchedule(freeze_bn_epoch=1, freeze_observer_epoch=1)
    probe = type("Probe", (), {"on_epoch_end": lambda self, e, m, r: seen.append((m.conv1.freeze_bn, int(m.conv1.weight_fake_quant.observer_enabled)))})()
    train(model, DeviceLoader(splits[0], 32, MEAN, STD, shuffle=True), cfg, callbacks=[schedule, probe], progress=False)
    assert seen == [(False, 1), (True, 0)]  # BN statistics and scales frozen from the second epoch
    held_out = DeviceLoader(splits[1], 64, MEAN, STD)
    fake_quantized = copy.deepcopy(model).eval()
    quantized = convert_qat_(model)
    assert all(m.weight().dtype == torch.qint8 for _, m in weighted_layers(quantized))
    # The int8 kernels compute what fine-tuning simulated, and the fine-tuned model still classifies.
    assert compare_logits(fake_quantized, quantized, _batches(splits[1], 64, 2))["sqnr_db"] > MIN_SQNR_DB
    assert evaluate(quantized, held_out)["top1"] >= evaluate(trained, held_out)["top1"] - 2


def test_reduced_float_keeps_fp32_interface(trained, splits):
    x = _batches(splits[1], 16, 1)[0]
    bf16 = to_reduced_float(copy.deepcopy(trained), "bf16")
    assert bf16(x).dtype == torch.float32 and next(bf16.parameters()).dtype == torch.bfloat16
    assert compare_logits(trained, bf16, [x])["sqnr_db"] > 25


def test_onnxruntime_engine_quantizes_and_reloads(trained, splits):
    ort = pytest.importorskip("onnxruntime")
    model = quantize_onnxruntime(copy.deepcopy(trained), StaticConfig(engine="onnxruntime", observer="minmax"), _batches(splits[0], 32, 2))
    assert all(r["weight_dtype"] == "int8" for r in model.layer_rows()) and len(model.layer_rows()) == 22
    x = _batches(splits[1], 64, 1)[0]
    assert compare_logits(trained, model, [x])["sqnr_db"] > MIN_SQNR_DB
    session = ort.InferenceSession(model.deployable(x)[0], providers=["CPUExecutionProvider"])
    assert torch.equal(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x))


def test_missing_engine_package_is_named(monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import of it now fails, as if not installed
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        quantize_onnxruntime(trained, StaticConfig(engine="onnxruntime"), [torch.zeros(1, 3, 32, 32)])


def test_step_config_rejects_what_cannot_work():
    with pytest.raises(ConfigError, match="unknown method"):
        build_config({"steps": [{"kind": "quantize", "method": "int3"}]})
    with pytest.raises(ConfigError, match="auto_skip_worst_k"):
        build_config({"steps": [{"kind": "quantize", "method": "dynamic", "auto_skip_worst_k": 1}]})
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        StaticConfig(engine="tensorrt")
    step = build_config({"steps": [{"kind": "quantize", "method": "onnxruntime"}]}).steps[0]
    assert step["method"] == "onnxruntime" and step["per_channel"] is True  # defaults filled in, so the hash sees them


@pytest.mark.parametrize("method, optimizer", [("static", "sgd"), ("qat", "sgd"), ("qat", "muon"), ("onnxruntime", "sgd")])
def test_quantize_step_end_to_end_through_run(tmp_path, method, optimizer):
    if method == "onnxruntime":
        pytest.importorskip("onnxruntime")
    config = build_config({
        "data": {"name": "synthetic", "val_size": 64, "test_subset": 64, "options": {"train_size": 256, "test_size": 64}},
        "model": {"name": "resnet20"},
        "train": {"epochs": 1, "batch_size": 32, "max_batches_per_epoch": 3, "device": "cpu", "warmup_epochs": 0, "optimizer": optimizer},
        "measure": {"latency": False, "energy": False, "eval_batch_size": 64},
        "steps": [{"kind": "quantize", "method": method, "observer": "minmax", "calibration_batches": 2,
                   "calibration_batch_size": 32, "qat_epochs": 1}]})
    record = slimlab.run(config, store=tmp_path, progress=False)
    assert record.status == "done", record.error
    m = record.metrics
    for key in ("quant_sqnr_db", "quant_rel_l2", "quant_top1_agreement", "quant_kl", "float_top1", "top1", "model_size_bytes"):
        assert isinstance(m[key], (int, float)), key
    assert m["quant_layers_quantized"] == 22 and m["quant_calibration_images"] == 64
    assert "calibrated on 64 validation images" in record.notes["quant_method"]
    run_dir = tmp_path / "runs" / record.id
    assert (run_dir / "quant_layers.json").exists()
    assert (run_dir / ("model.onnx" if method == "onnxruntime" else "model.pt")).exists()
    # no prune step ran: zeros and a smaller count are named for what they are, never `sparsity`
    assert "sparsity" not in m and 0 <= m["zero_weight_fraction"] < 0.05
    assert "not sparsity" in record.notes["zero_weight_fraction"] and "params" in record.notes


@pytest.mark.parametrize("observer", ["minmax", "histogram"])
def test_onnxruntime_calibrates_on_a_short_last_batch(trained, splits, observer):
    pytest.importorskip("onnxruntime")
    batches = _batches(splits[0], 16, 2) + [_batches(splits[0], 6, 1)[0]]  # 38 images: not a multiple of the batch
    model = quantize_onnxruntime(copy.deepcopy(trained), StaticConfig(engine="onnxruntime", observer=observer), batches)
    x = _batches(splits[1], 64, 1)[0]
    assert compare_logits(trained, model, [x])["sqnr_db"] > MIN_SQNR_DB


def test_uniform_calibration_batches_keep_every_image_one_batch_at_a_time():
    from slimlab.quantize.onnx_runtime import uniform_batches

    batches = [torch.full((16, 1), 0.0), torch.full((16, 1), 1.0), torch.full((6, 1), 2.0)]
    stream = uniform_batches(batches)
    assert not isinstance(stream, list)  # a generator: ORT is fed as it asks
    pieces = list(stream)
    assert {p.shape[0] for p in pieces} == {2} and torch.equal(torch.cat(pieces), torch.cat(batches))
