"""Intel Neural Compressor's `autotune` on explore's own validation and calibration images (run by bench/explore.py in
INC's environment): `python bench/explore_inc.py EXPLORE_CONFIG_JSON OUT_DIR` writes OUT_DIR/inc.json and inc_pick.pt2."""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import torch


def _data(cfg):
    """The validation split (served as the held-out view's test split) and the calibration images, normalized."""
    from slimlab.config import build_config
    from slimlab.explore.trials import data_section
    from slimlab.run import prepare_data

    config = build_config({"data": data_section(cfg), "model": {"name": cfg.model}, "train": {"epochs": 0, "device": "cpu"}})
    data = prepare_data(config, progress=False, device="cpu")
    validation = list(data.loader(data.test, 500, config))
    calibration = [x for x, _ in data.loader(data.val, 64, config, shuffle=True)]
    return validation, calibration


def main() -> None:
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import INT8StaticQuantConfig, TuningConfig, autotune

    from slimlab.explore.config import ExploreConfig
    from slimlab.models import create_model

    cfg, out = ExploreConfig(**json.loads(sys.argv[1])), Path(sys.argv[2])
    validation, calibration = _data(cfg)
    model = create_model(cfg.model, 10, 3, 32, weights=cfg.weights).eval()
    scores: list[float] = []

    def eval_fn(candidate) -> float:
        with torch.no_grad():
            right = sum((candidate(x).argmax(1) == y).sum().item() for x, y in validation)
        scores.append(right / sum(len(y) for _, y in validation))
        return scores[-1]

    def run_fn(prepared) -> None:
        with torch.no_grad():
            for x in calibration:
                prepared(x)

    started = time.monotonic()
    example = (torch.randn(4, 3, 32, 32),)
    exported = export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    space = [INT8StaticQuantConfig.get_config_set_for_tuning()]  # INC's own tuning space for static int8
    picked = autotune(exported, TuningConfig(config_set=space, tolerable_loss=0.01), eval_fn=eval_fn, run_fn=run_fn,
                      example_inputs=example)
    seconds = time.monotonic() - started
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(picked, example, dynamic_shapes=({0: torch.export.Dim.AUTO},)), buffer)
    (out / "inc_pick.pt2").write_bytes(buffer.getvalue())
    config = getattr(picked, "qconfig", None)
    summary = {"seconds": seconds, "trials": len(scores) - 1, "baseline_val_top1": scores[0] * 100,
               "val_top1_change": (scores[-1] - scores[0]) * 100 if len(scores) > 1 else None,
               "config": str({k[0] if isinstance(k, tuple) else k: v.to_dict() for k, v in config.items()} if isinstance(config, dict) else config)[:300]}
    (out / "inc.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
