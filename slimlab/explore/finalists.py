"""The finalists: the test split read once each, the recommended deployable file and a snippet that loads it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from slimlab.config import ExperimentConfig, build_config
from slimlab.explore.config import ExploreConfig
from slimlab.store import RunRecord, Store

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "torch.export": ".pt2", "state_dict": ".pt"}
# One line that loads and runs each format without slimlab; x is a float batch, normalized as the snippet says.
LOADERS = {
    "torchscript": "import torch; model = torch.jit.load('{file}').eval(); logits = model(x)",
    "torch.export": "import torch, torch.ao.quantization.fx._decomposed; model = torch.export.load('{file}').module(); logits = model(x)",
    "onnx": "import onnxruntime as ort; s = ort.InferenceSession('{file}'); logits = s.run(None, {{s.get_inputs()[0].name: x.numpy()}})[0]",
}


def test_config(cfg: ExploreConfig, record: RunRecord) -> ExperimentConfig:
    """The trial's config with the user's dataset itself in place of its held-out view: the same validation split
    carved out, and the test split the one scored."""
    raw = dict(record.config)
    heldout = raw["data"]
    raw["data"] = {"name": heldout["options"]["of"], "val_size": cfg.val_size, "options": heldout["options"]["options"],
                   **({"path": heldout["path"]} if heldout.get("path") else {})}
    return build_config(raw, "explore finalist")


def _load(store: Store, record: RunRecord, config: ExperimentConfig, data) -> torch.nn.Module:
    from slimlab.deployable import load_deployable
    from slimlab.models import create_model

    if record.notes.get("model_format") != "state_dict":
        return load_deployable(store.run_dir(record.id), torch.device("cpu"))
    c, h, _ = data.dataset.image_shape  # a plain float model saved as its weights
    model = create_model(config.model.name, data.dataset.num_classes, c, h, **config.model.options)
    model.load_state_dict(torch.load(store.run_dir(record.id) / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def read_test_split(cfg: ExploreConfig, store: Store, record: RunRecord) -> dict:
    """Top-1 of the trial's saved deployable file on the test split, once: a figure already recorded is returned as
    it is, so a rerun never reads the test images again for the same finalist."""
    if "test_top1" in record.metrics:
        return {k: record.metrics[k] for k in ("test_top1", "test_top5")}
    from slimlab.run import prepare_data
    from slimlab.train import evaluate

    config = test_config(cfg, record)
    data = prepare_data(config, progress=False, device="cpu")
    model = _load(store, record, config, data)
    with torch.no_grad():
        result = evaluate(model, data.loader(data.test, config.measure.eval_batch_size, config), amp=False)
    figures = {"test_top1": result["top1"], "test_top5": result["top5"]}
    store.update_metrics(record.id, figures, {"test_top1": f"the saved deployable file on the {len(data.test)}-image test "
                                              f"split of {config.data.name}, read once for this finalist of explore"})
    return figures


def write_deployable(store: Store, record: RunRecord, out: Path, normalize: str) -> tuple[Path, str]:
    """Copy the recommended run's deployable file into `out`, and its twin with the preprocessing inside (raw uint8
    pixels in) with the JSON that describes each, where the run wrote them; return the file and a line that runs it."""
    from slimlab.deployable import RAW_FILES

    fmt = record.notes.get("model_format", "torchscript")
    run_dir = store.run_dir(record.id)
    source = next(p for p in (run_dir / n for n in ("model.pt2", "model.onnx", "model.pt")) if p.exists())
    target = out / f"recommended{SUFFIXES.get(fmt, source.suffix)}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    copies = {source: target}
    raw = run_dir / RAW_FILES.get(fmt, "none")
    if raw.exists():
        copies[raw] = out / f"recommended_raw{target.suffix}"
        shutil.copyfile(raw, copies[raw])
    for file, copy in copies.items():  # what to feed each: normalization, input size, channel order, class names
        if file.with_suffix(".json").exists():
            described = {**json.loads(file.with_suffix(".json").read_text()), "file": copy.name}
            copy.with_suffix(".json").write_text(json.dumps(described, indent=1) + "\n")
    loader = LOADERS.get(fmt, "import torch; weights = torch.load('{file}')  # a state dict for your model class")
    return target, f"{loader.format(file=target.name)}  # x: float NCHW images, {normalize}"
