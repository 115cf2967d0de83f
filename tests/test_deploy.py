"""A new user's path end to end (issue 24): their CNN from a module in the current folder, their image folder, the
`slimlab` command, int8; then the deployable file scored in a fresh process that has torch and the JPEGs, not slimlab."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import JPEG_ARCHIVE

CLASSES = ("airplane", "automobile", "bird")  # the first three in the archive, so the scan stops early
PER_CLASS = {"train": 100, "test": 40}

MYMODELS = '''
from torch import nn


def build(num_classes, in_channels=3):
    """A user's small CNN: separate ReLU modules, so eager int8 fuses and quantizes them."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
'''

# What a deployment writes: torch, numpy, PIL and the JSON beside the file; slimlab cannot be imported here at all.
SCORE = '''
import json, sys
sys.modules["slimlab"] = None  # any `import slimlab` now fails
from pathlib import Path
import numpy as np, torch
from PIL import Image

run, photos = Path(sys.argv[1]), Path(sys.argv[2])
spec = json.loads((run / "model_raw.json").read_text())
model = torch.jit.load(str(run / spec["file"]))
images, labels = [], []
for index, name in enumerate(spec["output"]["classes"]):
    for path in sorted((photos / "test" / name).glob("*.jpg")):
        images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8))
        labels.append(index)
x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # raw pixels, NCHW, no normalization here
with torch.no_grad():
    predicted = model(x).argmax(dim=1)
assert not any(m.split(".")[0] == "slimlab" for m, v in sys.modules.items() if v is not None)
print(json.dumps({"top1": 100.0 * int((predicted == torch.tensor(labels)).sum()) / len(labels), "images": len(labels)}))
'''


def _image_folder(root: Path) -> Path:
    """train/CLASS/ and test/CLASS/ of real CIFAR-10 JPEGs, copied as they are."""
    wanted = {(split, c): n for split, n in PER_CLASS.items() for c in CLASSES}
    with tarfile.open(JPEG_ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 4 and wanted.get(parts[1:3], 0) > 0:
                wanted[parts[1:3]] -= 1
                target = root.joinpath(*parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
            if not any(wanted.values()):
                return root
    raise AssertionError(f"the archive lacks images: {wanted}")


@pytest.mark.skipif(not JPEG_ARCHIVE.is_file(), reason=f"no CIFAR-10 JPEG archive at {JPEG_ARCHIVE}")
def test_a_users_model_and_folder_deploy_and_score_the_recorded_top1_without_slimlab(tmp_path):
    photos = _image_folder(tmp_path / "photos")
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "name": "mine",
        "data": {"name": "imagefolder", "path": "photos", "val_size": 60},
        "model": {"name": "mymodels:build"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05, "warmup_epochs": 0},
        "measure": {"latency": False, "energy": False},
        "steps": [{"kind": "quantize", "method": "static"}],
    }))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HOME": str(tmp_path)}  # the image cache
    slimlab_cli = Path(sys.executable).parent / "slimlab"
    done = subprocess.run([str(slimlab_cli), "run", "exp.yaml", "--store", "store", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)
    run = tmp_path / "store" / "runs" / record["id"]
    metrics, notes = record["metrics"], record["notes"]

    described = json.loads((run / "model.json").read_text())  # beside the file, and in the record
    assert notes["deployable_files"] == [described, json.loads((run / "model_raw.json").read_text())]
    assert described["output"]["classes"] == list(CLASSES) and described["input"]["shape"] == ["batch", 3, 32, 32]
    assert described["input"]["channels"] == "RGB" and described["normalization"]["inside_the_file"] is False
    train = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                      for p in sorted((photos / "train").rglob("*.jpg"))])
    own_mean = train.mean(axis=(0, 1, 2)) / 255  # the folder's own statistics, not CIFAR-10's constants
    assert np.allclose(described["normalization"]["mean"], own_mean, atol=1e-6)
    assert 0 < metrics["weight_payload_bytes"] < metrics["model_size_bytes"]

    scored = subprocess.run([sys.executable, "-I", "-c", SCORE, str(run), str(photos)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr[-2000:]
    fresh = json.loads(scored.stdout)
    assert fresh["images"] == 3 * PER_CLASS["test"]
    # Exactly: the file computes the loader's own float32 arithmetic on the same decoded pixels, in one batch of the
    # same 120 images, and top-1 is argmax on both sides (int8 logits tie; topk would break ties its own way).
    assert fresh["top1"] == metrics["top1"] == metrics["deployable_raw_top1"]
    assert metrics["top1"] > 100 / len(CLASSES)  # it learned something: the equality is not of two chance figures


ENGINES = {"torchscript": [], "torchscript int8": [{"kind": "quantize", "method": "static"}],
           "onnx": [{"kind": "quantize", "method": "onnxruntime"}], "torch.export": [{"kind": "quantize", "method": "static", "engine": "pt2e"}]}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_deployable_format_has_a_raw_twin_that_gives_the_measured_logits(engine, store_dir):
    """The file with the preprocessing inside, fed uint8 pixels, gives the logits of the normalized file fed what the
    loader makes of the same pixels, bit for bit; the run's own check of it equals its top-1."""
    import torch

    import slimlab
    from slimlab.config import build_config
    from slimlab.deployable import load_raw_file
    from slimlab.run import prepare_data
    from conftest import tiny_config

    if engine == "onnx":
        pytest.importorskip("onnxruntime")
    config = build_config(tiny_config(steps=ENGINES[engine], **{"train.epochs": 1, "measure.latency": False}))
    record = slimlab.run(config, store_dir, progress=False)
    fmt = record.notes["model_format"]
    run = store_dir / "runs" / record.id
    raw_spec = json.loads((run / "model_raw.json").read_text())
    assert fmt == raw_spec["format"] == engine.split()[0] and raw_spec["normalization"]["inside_the_file"] is True
    assert record.metrics["deployable_raw_top1"] == record.metrics["top1"]
    data = prepare_data(config, progress=False)
    images = data.test.images[:16]
    raw = load_raw_file((run / raw_spec["file"]).read_bytes(), fmt)(images)
    normalized_input = data.loader(data.test, 16, config).normalize(images)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
        reference = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: normalized_input.contiguous().numpy()})[0])
    elif fmt == "torch.export":
        reference = torch.export.load(str(run / "model.pt2")).module()(normalized_input)
    else:
        reference = torch.jit.load(str(run / "model.pt"))(normalized_input)
    assert torch.equal(raw, reference)
    if fmt == "torchscript":  # float pixels in [0, 255] work as well (ONNX and torch.export fix the input's dtype: uint8)
        assert torch.equal(load_raw_file((run / raw_spec["file"]).read_bytes(), fmt)(images.float()), raw)
