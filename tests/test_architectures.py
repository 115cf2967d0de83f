"""Every method on the architectures people bring: torchvision's own model classes (slimlab/models/zoo.py), each
compressed by every method and checked for being what it claims (slimlab/suite.py). A cell passes, or refuses in one
line naming the layer or operation; never a traceback, never a success that did nothing."""
from __future__ import annotations

import functools

import pytest
import torch

from slimlab import suite
from slimlab.models.zoo import ARCHITECTURES, build_architecture
from slimlab.prune import tp_engine

MODELS = list(ARCHITECTURES)
METHODS = list(suite.METHODS)
MIN_PASS_FRACTION = 0.95


@pytest.fixture(autouse=True)
def _short_tracer_limit(monkeypatch):
    monkeypatch.setattr(tp_engine, "TIME_LIMIT_S", 20)  # Swin's loop is refused after 20 s instead of 60


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> suite.Probe:
    return suite.make_probe(build_architecture(name), size=ARCHITECTURES[name].input_size)


@functools.lru_cache(maxsize=None)
def _cell(name: str, method: str) -> suite.Cell:
    torch.manual_seed(0)
    return suite.run_cell(name, method, _probe(name))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_each_cell_passes_or_refuses_in_one_line(name, method):
    cell = _cell(name, method)
    assert cell.status in ("pass", "refused"), f"{name} x {method}: {cell.message}"
    if cell.status == "refused":
        assert "\n" not in cell.message and len(cell.message) < 600 and "Traceback" not in cell.message
        assert any(word in cell.message for word in (type(_probe(name).model).__name__, "layer", "op", "engine")), cell.message


def test_the_suite_covers_the_families_and_passes_95_percent():
    assert len(MODELS) >= 18 and len({a.family for a in ARCHITECTURES.values()}) >= 12
    cells = [_cell(n, m) for m in METHODS for n in MODELS]
    passed = [c for c in cells if c.status == "pass"]
    assert len(passed) / len(cells) >= MIN_PASS_FRACTION, [(c.model, c.method, c.message) for c in cells if c.status != "pass"]


CONVOLUTIONAL = [n for n in MODELS if n not in ("vit", "swin")]


def test_pt2e_passes_on_every_convolutional_model():
    assert [n for n in CONVOLUTIONAL if _cell(n, "static pt2e").status != "pass"] == []


def test_structured_pruning_prunes_at_least_as_many_models_as_torch_pruning():
    ours = {n for n in MODELS if _cell(n, "structured").status == "pass"}
    theirs = {n for n in MODELS if _cell(n, "torch-pruning").status == "pass"}
    assert theirs <= ours and len(ours) >= len(theirs)
    for name in ours:  # halving the channels leaves about a quarter of a conv between two pruned groups
        assert _cell(name, "structured").figures["params_left"] <= suite.structured_max_left(_probe(name).model)


def test_onnxruntime_passes_on_vgg_alexnet_and_the_attention_models():
    assert {n: _cell(n, "static onnxruntime").status for n in ("vgg11_bn", "alexnet", "vit", "swin")} == dict.fromkeys(
        ("vgg11_bn", "alexnet", "vit", "swin"), "pass")


def test_an_int8_graph_torch_cannot_run_is_refused_in_one_line():
    """MNASNet at 32 px ends on a 1x1 map, where torch.ao's converted int8 mean fails at run time."""
    from slimlab.errors import SlimlabError
    from slimlab.quantize import StaticConfig, quantize_static

    probe = suite.make_probe(build_architecture("mnasnet0_5"), size=32)
    with pytest.raises(SlimlabError, match=r"^x86: the converted int8 model of MNASNet does not run: .*try engine pt2e or onnxruntime$"):
        quantize_static(probe.model, StaticConfig(engine="x86"), probe.calibration)


def test_the_quantization_check_fails_a_wrong_int8_model():
    """The floor is a real check: on ResNet-18 it is the full 8 dB, and an int8 model whose output is off (here its
    logits negated, -6 dB; a wrong scale or a layer fed the wrong tensor lands near 0 dB) does not pass."""
    from slimlab.quantize import StaticConfig, quantize_static

    probe = _probe("resnet18")
    assert probe.floor("static") == suite.SQNR_FLOOR_DB["static"]
    quantized = quantize_static(probe.model, StaticConfig(engine="x86"), probe.calibration)
    figures, _ = suite._check_quantized(probe, quantized, probe.floor("static"))
    assert figures["sqnr_db"] >= 8 and figures["int8_layers"] == figures["layers"]

    class Negated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = quantized

        def forward(self, x):
            return -self.inner(x)

    with pytest.raises(AssertionError, match="under the 8.0 dB floor"):
        suite._check_quantized(probe, Negated(), probe.floor("static"))


def test_onnx_quantization_of_attention_leaves_nothing_in_the_working_folder(tmp_path, monkeypatch):
    """ORT's shape inference gives up on Swin's reshapes and dumps the model where the process runs: not in a user's folder."""
    monkeypatch.chdir(tmp_path)
    assert _cell("swin", "static onnxruntime").status == "pass"
    cell = suite.run_cell("swin", "static onnxruntime", _probe("swin"))
    assert cell.status == "pass" and list(tmp_path.iterdir()) == []
