"""PT2E engine (torchao): int8 program, SQNR, mixed precision, QAT, the .pt2 file reloaded without slimlab, engine auto."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import slimlab
from slimlab.config import TrainConfig
from slimlab.data.loader import DeviceLoader
from slimlab.data.synthetic import make_synthetic
from slimlab.quantize import QATConfig, QATSchedule, StaticConfig, convert_qat, prepare_qat, quantize_static
from slimlab.quantize import auto
from slimlab.quantize.error import logit_error
from slimlab.quantize.pt2e import PT2EModule, export_program, save_program
from slimlab.train import train

pytest.importorskip("torchao")
SIZE = 16  # small images: ResNet-20's graph is the same, its convolutions cheaper
MIN_SQNR_DB = 25.0


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return slimlab.create_model("resnet20").eval()


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, SIZE, SIZE, generator=generator) for _ in range(3)]


@pytest.fixture(scope="module")
def ptq(resnet, batches) -> PT2EModule:
    return quantize_static(resnet, StaticConfig(engine="pt2e", observer="minmax"), batches[:2])


def _sqnr(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return logit_error(reference(x), model(x))["sqnr_db"]


def test_ptq_program_has_int8_weights_and_small_error(resnet, ptq, batches):
    before = copy.deepcopy(resnet.state_dict())
    rows = ptq.layer_table(batches[2:])
    assert len(rows) == 22 and {r["weight_dtype"] for r in rows} == {"int8"}  # 21 convs + fc
    assert all(r["local_sqnr_db"] > 20 for r in rows)
    program = ptq.exported(batches[0])
    int8 = [t for t in (*program.state_dict.values(), *program.constants.values()) if t.dtype == torch.int8]
    assert len(int8) == 22 and not any(t.dtype == torch.float32 and t.dim() == 4 for t in program.state_dict.values())
    assert _sqnr(resnet, ptq.program, batches[2]) > MIN_SQNR_DB
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())  # the input model is left as it was
    assert torch.backends.quantized.engine == "x86"


def test_compiled_program_matches_and_file_reloads_without_slimlab(resnet, ptq, batches, tmp_path):
    x = batches[2][:4]
    with torch.no_grad():
        reference = ptq.program(x)
    assert logit_error(reference, ptq(x))["sqnr_db"] > 30  # int8 kernels vs quantize/dequantize in float
    blob, fmt = ptq.deployable(x)
    float_file = save_program(export_program(resnet, x))
    assert fmt == "torch.export" and len(blob) < 0.5 * len(float_file)  # int8 weights, no float copy left beside them
    (tmp_path / "model.pt2").write_bytes(blob)
    torch.save(x, tmp_path / "x.pt")
    # torch registers the quantize/dequantize ops the program calls on this import (part of torch, not of torchao).
    code = ("import sys, torch, torch.ao.quantization.fx._decomposed; ep = torch.export.load(sys.argv[1] + '/model.pt2'); x = torch.load(sys.argv[1] + '/x.pt');"
            "torch.save(ep.module()(x), sys.argv[1] + '/y.pt'); assert not any(m.startswith(('slimlab', 'torchao')) for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "y.pt"), reference)


def test_skip_by_name_and_auto_skip_worst_k(resnet, ptq, batches):
    skipped = quantize_static(resnet, StaticConfig(engine="pt2e", observer="minmax", skip=("layer3", "fc")), batches[:2])
    dtypes = {r["name"]: r["weight_dtype"] for r in skipped.layer_rows()}
    assert all(d == ("float32" if n.startswith(("layer3", "fc")) else "int8") for n, d in dtypes.items())
    worst = sorted(ptq.layer_table(batches[:2]), key=lambda r: r["local_sqnr_db"])[:2]
    auto_skipped = quantize_static(resnet, StaticConfig(engine="pt2e", observer="minmax", auto_skip_worst_k=2), batches[:2])
    assert {r["name"] for r in auto_skipped.layer_rows() if r["weight_dtype"] == "float32"} == {r["name"] for r in worst}


class ConcatDepthwise(nn.Module):
    """A user model: two branches concatenated (different ranges), a depthwise conv, functional relu, no BN modules."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.depthwise, self.head = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.cat([torch.relu(self.a(x)), 4 * torch.relu(self.b(x))], dim=1)
        return self.head(torch.relu(self.depthwise(x)).mean((2, 3)))


def test_user_model_with_concat_and_depthwise(batches):
    torch.manual_seed(0)
    model = ConcatDepthwise().eval()
    quantized = quantize_static(model, StaticConfig(engine="pt2e", observer="histogram"), batches[:2])
    assert [r["weight_dtype"] for r in quantized.layer_rows()] == ["int8"] * 4
    assert _sqnr(model, quantized.program, batches[2]) > MIN_SQNR_DB


def test_qat_through_the_training_loop(resnet):
    split = make_synthetic(64, 10, SIZE, 3, seed=1)
    loader = DeviceLoader(split, 32, (0.3,) * 3, (0.25,) * 3, shuffle=True)
    model = prepare_qat(resnet, QATConfig(engine="pt2e"), next(iter(loader))[0])
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("conv1.weight")}
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01, warmup_epochs=0, label_smoothing=0, device="cpu", channels_last=False)
    train(model, loader, cfg, progress=False, callbacks=[QATSchedule(1, 1)])
    assert model.bn_frozen and any(not torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # it trained
    x = next(iter(loader))[0]
    fake_quantized = model.eval()(x).detach()
    quantized = convert_qat(model)
    assert {r["weight_dtype"] for r in quantized.layer_rows()} == {"int8"}
    with torch.no_grad():
        assert logit_error(fake_quantized, quantized.program(x))["sqnr_db"] > MIN_SQNR_DB


def test_auto_keeps_the_fastest_accurate_engine():
    figures = {"fast_wrong": {"sqnr_db": 5.0, "latency_ms": {1: 0.1, 64: 1.0}},
               "a": {"sqnr_db": 30.0, "latency_ms": {1: 1.0, 64: 10.0}},
               "b": {"sqnr_db": 29.0, "latency_ms": {1: 1.1, 64: 8.0}}}
    assert auto.choose(figures, tolerance_db=3.0) == "b"  # 10% slower at b1, 20% faster at b64; fast_wrong is too far off
    assert auto.choose(figures, tolerance_db=0.5) == "a"


def test_auto_measures_each_engine(resnet, batches, monkeypatch):
    monkeypatch.setattr(auto, "available_engines", lambda: ["x86", "onnxruntime"])  # no compilation in this test
    engine = torch.backends.quantized.engine
    model = quantize_static(resnet, StaticConfig(engine="auto", observer="minmax", auto_batch_sizes=(1, 8)), batches[:1])
    selection = model.engine_selection
    assert set(selection["candidates"]) == {"x86", "onnxruntime"}
    assert selection["chosen"] == auto.choose(selection["candidates"], 3.0)
    assert all(set(c["latency_ms"]) == {1, 8} and c["sqnr_db"] > 20 for c in selection["candidates"].values())
    assert torch.backends.quantized.engine == engine


def test_quantization_restores_the_engine_setting(resnet, batches):
    x = batches[2][:2]
    assert torch.backends.quantized.engine == "x86"
    model = quantize_static(resnet, StaticConfig(engine="qnnpack", observer="minmax"), batches[:1])
    assert torch.backends.quantized.engine == "x86"
    with torch.no_grad():
        out = model(x)
        assert torch.backends.quantized.engine == "x86"  # the model switches to its engine around its own call only
        torch.backends.quantized.engine = "qnnpack"
        try:
            assert torch.equal(model(x), out)
        finally:
            torch.backends.quantized.engine = "x86"
    slimlab.quantize.quantize_dynamic_(copy.deepcopy(resnet), slimlab.quantize.DynamicConfig(engine="fbgemm"))
    assert torch.backends.quantized.engine == "x86"
