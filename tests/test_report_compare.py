"""`slimlab compare`: id prefixes resolved, headline figures first with the device, then only the keys that differ."""
from __future__ import annotations

import pytest

from slimlab.errors import ConfigError
from slimlab.report.study import find_runs, flatten
from slimlab.report.tables import compare_rows, compare_runs, config_differences
from slimlab.store import RunRecord, Store


def _record(run_id: str, status: str = "done", metrics: dict | None = None, notes: dict | None = None,
            device: str = "cpu", **config) -> RunRecord:
    cfg = {"name": f"s:{run_id}", "seed": 0, "data": {"name": "cifar10_jpeg", "train_subset": 8000},
           "train": {"epochs": 8, "lr": 0.2}, "measure": {"batch_sizes": [1, 64]}, "steps": []}
    for dotted, value in config.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return RunRecord(run_id, status, cfg["name"], cfg, metrics or {}, notes or {}, {"device": device},
                     "non-finite loss" if status == "failed" else None, 0.0, 1.0, failure="diverged" if status == "failed" else None)


FLOAT = _record("aaaa1111", metrics={"top1": 61.5, "float_top1": 61.5, "model_size_bytes": 1.1e6, "latency_b1_median_ms": 3.25,
                                     "latency_b64_median_ms": 40.0, "macs": 4.1e7, "total_train_seconds": 500.0})
PRUNED = _record("bbbb2222", metrics={"top1": 60.25, "float_top1": 61.5, "model_size_bytes": 1.1e6, "latency_b1_median_ms": 3.5,
                                      "prune_sparsity": 0.8, "macs": 4.1e7, "total_train_seconds": 620.0},
                 notes={"latency_noisy": "spread 40%"},
                 steps=[{"kind": "prune", "method": "l1", "amount": 0.8}])
INT8 = _record("cccc3333", metrics={"top1": 61.0, "float_top1": 61.5, "model_size_bytes": 0.3e6, "quant_sqnr_db": 21.5},
               notes={"latency_status": "pending"}, steps=[{"kind": "quantize", "method": "static"}])
FAILED = _record("dddd4444", status="failed", train__lr=2.0)


def _row(rows: list[list[str]], label: str) -> list[str]:
    return next(r[1:] for r in rows if r[0] == label)


def test_flatten_gives_the_dotted_keys_set_takes():
    assert flatten({"train": {"lr": 0.1}, "steps": [{"kind": "prune", "amount": 0.5}], "measure": {"batch_sizes": [1, 64]}}) == {
        "train.lr": 0.1, "steps.0.kind": "prune", "steps.0.amount": 0.5, "measure.batch_sizes": [1, 64]}


def test_config_differences_lists_only_keys_that_differ_with_missing_as_none():
    diff = config_differences([FLOAT.config, PRUNED.config, FAILED.config])
    assert diff == {"train.lr": [0.2, 0.2, 2.0], "steps.0.kind": [None, "prune", None],
                    "steps.0.method": [None, "l1", None], "steps.0.amount": [None, 0.8, None]}
    assert config_differences([FLOAT.config, FLOAT.config]) == {}


def test_a_steps_defaults_are_shown_only_where_runs_with_that_step_differ():
    quant = [{"kind": "quantize", "method": "static", "observer": "minmax", "engine": "x86"}]
    a, b, c = ({"steps": []}, {"steps": quant}, {"steps": [{**quant[0], "observer": "histogram"}]})
    assert config_differences([a, b]) == {"steps.0.kind": [None, "quantize"], "steps.0.method": [None, "static"]}
    assert config_differences([a, b, c])["steps.0.observer"] == [None, "minmax", "histogram"]
    assert "steps.0.engine" not in config_differences([a, b, c])


def test_headline_figures_in_units_with_device_and_latency_states():
    figures, config = compare_rows([FLOAT, PRUNED, INT8, FAILED])
    labels = [r[0] for r in figures]
    assert labels[:4] == ["Name", "Status", "Error", "Data set"]
    assert labels.index("Top-1 accuracy (%)") < labels.index("Latency, batch 1, median (ms)") < labels.index("Inference device")
    assert _row(figures, "Top-1 accuracy (%)") == ["61.50", "60.25", "61.00", ""]
    assert _row(figures, "Top-1 change vs float parent (points)") == ["0", "-1.25", "-0.5", ""]
    assert _row(figures, "Size on disk (MB)") == ["1.10", "1.10", "0.3", ""]
    assert _row(figures, "Latency, batch 1, median (ms)") == ["3.25", "3.50 (noisy)", "pending", ""]
    assert _row(figures, "Latency, batch 64, median (ms)") == ["40.00", "", "pending", ""]
    assert _row(figures, "Inference device") == ["cpu", "cpu", "cpu", ""]
    assert _row(figures, "Sparsity of pruned layers (%)") == ["", "80.00", "", ""]
    assert _row(figures, "Quantization error, SQNR of logits (dB)") == ["", "", "21.50", ""]
    assert _row(figures, "Status") == ["done", "done", "done", "failed (diverged)"]
    assert "Energy" not in " ".join(labels)  # a figure no run has is left out
    assert [r[0] for r in config][:2] == ["train.lr", "steps.0.kind"]


def test_compare_text_is_one_column_per_run_figures_before_config():
    text = compare_runs([FLOAT, PRUNED])
    lines = text.splitlines()
    assert lines[0].split() == ["aaaa1111", "bbbb2222"]
    assert set(lines[1]) == {"-"}
    top1 = next(line for line in lines if line.startswith("Top-1 accuracy"))
    assert top1.split()[-2:] == ["61.50", "60.25"]
    config_at = next(i for i, line in enumerate(lines) if line.startswith("Config (keys that differ)"))
    assert all(not line.startswith("Top-1") for line in lines[config_at:])
    assert next(line for line in lines if line.startswith("steps.0.amount")).split()[-2:] == ["-", "0.8"]
    assert len({len(line) for line in lines[:3]}) == 1  # aligned columns
    assert "the same in every run" in compare_runs([FLOAT, FLOAT])


def test_find_runs_takes_prefixes_in_order_and_refuses_unknown_or_ambiguous(tmp_path):
    store = Store(tmp_path / "store")
    for run_id in ("abc123", "abd456", "xyz789"):
        store.start(run_id, {"name": run_id, "data": {"name": "synthetic"}}, run_id)
        store.finish(run_id, {"top1": 50.0}, {}, {"device": "cpu"}, [])
    assert [r.id for r in find_runs(store, ["xyz", "abc"])] == ["xyz789", "abc123"]
    with pytest.raises(ConfigError, match="matches 2 runs"):
        find_runs(store, ["ab"])
    with pytest.raises(ConfigError, match="no run with id starting 'nope'"):
        find_runs(store, ["nope"])
    with pytest.raises(ConfigError, match="at least one"):
        find_runs(store, [])
