"""A study file expands into validated configs (grid x variants) before anything runs; the seed table reads the store."""
import json

import pytest

from conftest import tiny_config
from slimlab.errors import ConfigError
from slimlab.plan import load_study
from slimlab.report.tables import seed_table
from slimlab.report.study import load_study as report_study
from slimlab.store import Store


def _study(tmp_path, body: str):
    (tmp_path / "base.yaml").write_text(json.dumps(tiny_config()))
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def test_grid_times_variants(tmp_path):
    path = _study(tmp_path, "name: s\nbase: base.yaml\ngrid:\n  seed: [0, 1]\nvariants:\n  float: {}\n"
                            "  static:\n    steps: [{kind: quantize, method: static}]\n")
    planned = load_study(path).runs
    assert [p.label for p in planned] == ["float/seed=0", "static/seed=0", "float/seed=1", "static/seed=1"]
    assert planned[3].config.seed == 1 and planned[3].config.steps[0]["method"] == "static"
    assert planned[0].config.name == "s:float/seed=0"
    assert len({p.config.model_dump_json() for p in planned}) == 4


def test_a_bad_variant_fails_the_whole_study_before_it_runs(tmp_path):
    path = _study(tmp_path, "base: base.yaml\nvariants:\n  ok: {}\n  bad:\n    train.lr: -1\n")
    with pytest.raises(ConfigError, match=r"bad.*train\.lr"):
        load_study(path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_study(_study(tmp_path, "base: base.yaml\ngird: {}\n"))


def test_seed_table_layout(tmp_path):
    store = Store(tmp_path / "store")
    for i, (variant, metrics) in enumerate([("float", {"top1": 80.0}),  # superseded by the same variant's later run
                                            ("float", {"top1": 86.3, "model_size_bytes": 1_265_969, "total_train_seconds": 2904.8,
                                                       "latency_b1_median_ms": 1.7}),
                                            ("static", {"top1": 86.31, "float_top1": 86.3, "model_size_bytes": 470_783,
                                                        "total_train_seconds": 2904.8, "latency_b1_median_ms": 1.2,
                                                        "quant_rel_l2": 0.064, "quant_sqnr_db": 23.9})]):
        run_id = f"id{i}"
        store.start(run_id, {"data": {"name": "cifar10_jpeg"}}, f"seed-q:{variant}/data.name=cifar10_jpeg")
        store.finish(run_id, metrics, {}, {}, [])
    table = seed_table(report_study(store.root, "seed-q"))
    lines = table.splitlines()
    assert "float | cifar10_jpeg" in lines[0] and "static | cifar10_jpeg" in lines[0] and lines[0].count("float") == 1
    assert "80.00" not in lines[1]
    assert lines[1].startswith("Accuracy") and "86.30" in lines[1] and "86.31" in lines[1]
    assert "1.266" in lines[2] and "0.471" in lines[2]  # MB on disk
    assert "NA" in lines[6] and "23.90" in lines[6]      # float has no quantization error
    assert "0.064" in lines[5] and "0.010" in lines[7]   # rel. L2; +0.01 points vs float
    assert lines[8].startswith("Inference device") and "NA" in lines[8]  # these runs recorded no latency note


def test_seed_table_shows_a_run_another_command_made_first(tmp_path):
    """A study that found its float model in the store (trained by a bench script, under another name) shows it."""
    store = Store(tmp_path / "store")
    store.start("bench1", {"data": {"name": "cifar10_jpeg"}}, "resnet20-cifar10")
    store.finish("bench1", {"top1": 87.75}, {}, {}, [])
    store.start("static1", {"data": {"name": "cifar10_jpeg"}}, "seed-q:static")
    store.finish("static1", {"top1": 87.54, "float_top1": 87.75}, {}, {}, [])
    store.save_study({"name": "seed-q", "axes": ["variant"], "runs": [
        {"id": "bench1", "label": "float", "variant": "float", "point": {"data.name": "cifar10_jpeg"}},
        {"id": "static1", "label": "static", "variant": "static", "point": {"data.name": "cifar10_jpeg"}}]})
    header, accuracy = seed_table(report_study(store.root, "seed-q")).splitlines()[:2]
    assert header.index("float | cifar10_jpeg") < header.index("static | cifar10_jpeg")
    assert "87.75" in accuracy and "87.54" in accuracy


def test_a_nested_mapping_changes_only_the_keys_it_names(tmp_path):
    path = _study(tmp_path, "base: base.yaml\nset:\n  train: {epochs: 1}\nvariants:\n  a: {model: {options: {zero_init_residual: true}}}\n")
    config = load_study(path).runs[0].config
    base = tiny_config()["train"]
    assert config.train.epochs == 1 and config.train.lr == base["lr"] and config.train.batch_size == base["batch_size"]
    assert config.model.name == "resnet20" and config.model.options == {"zero_init_residual": True}


@pytest.mark.parametrize("body, match", [
    ("base: base.yaml\nvariants: [a, b]\n", "variants: expected a mapping"),
    ("base: base.yaml\ngrid: [seed]\n", "grid: expected a mapping"),
    ("base: base.yaml\nvariants:\n  a: 3\n", "variants: a: expected a mapping"),
    ("base: base.yaml\nset: {train.epochs: [1\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping of keys to values"),
])
def test_a_malformed_study_file_fails_in_one_sentence(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_study(_study(tmp_path, body))


def test_seed_table_keeps_one_column_per_grid_point(tmp_path):
    store = Store(tmp_path / "store")
    for seed, top1 in ((0, 86.1), (1, 86.7)):
        store.start(f"id{seed}", {"data": {"name": "cifar10_jpeg"}}, f"seed-q:float/seed={seed}/data.name=cifar10_jpeg")
        store.finish(f"id{seed}", {"top1": top1}, {}, {}, [])
    header, accuracy = seed_table(report_study(store.root, "seed-q")).splitlines()[:2]
    assert "float/seed=0 | cifar10_jpeg" in header and "float/seed=1 | cifar10_jpeg" in header
    assert "86.10" in accuracy and "86.70" in accuracy


def test_set_steps_applies_to_the_variants_that_have_that_step(tmp_path):
    body = ("base: base.yaml\nvariants:\n  float: {}\n"
            "  pruned: {steps: [{kind: prune, amount: 0.5, rounds: 1}]}\n")
    study = load_study(_study(tmp_path, body), ["steps.0.amount=0.8"])
    configs = {r.variant: r.config for r in study.runs}
    assert configs["float"].steps == [] and configs["pruned"].steps[0]["amount"] == 0.8
    with pytest.raises(ConfigError, match="--set steps.1.amount=0.8: no run of the study has that step"):
        load_study(_study(tmp_path, body), ["steps.1.amount=0.8"])


def test_an_experiment_file_given_to_study_says_to_use_run(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(tiny_config()))
    with pytest.raises(ConfigError, match="looks like an experiment file: use `slimlab run`"):
        load_study(path)
