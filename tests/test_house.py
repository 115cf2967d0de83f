"""The house rules that keep slimlab easy to change, checked on the source itself: short functions, imports that flow
one way, and one way to write a file."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from slimlab import atomic

PACKAGE = Path(__file__).resolve().parents[1] / "slimlab"
MAX_FUNCTION_LINES = 60
# Flow: config -> plan -> executors -> run -> (data, models, train, compression) -> measure -> store -> report.
# A module may import what comes later in the flow, never what comes before it.
MAY_NOT_IMPORT = {
    "slimlab.quantize": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli", "slimlab.report"),
    "slimlab.prune": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli", "slimlab.report"),
    "slimlab.train": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli", "slimlab.report",
                      "slimlab.quantize", "slimlab.prune"),
    "slimlab.measure": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli", "slimlab.report",
                        "slimlab.quantize", "slimlab.prune", "slimlab.train"),
    "slimlab.store": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli", "slimlab.report",
                      "slimlab.quantize", "slimlab.prune", "slimlab.train", "slimlab.measure"),
    "slimlab.report": ("slimlab.run", "slimlab.plan", "slimlab.executors", "slimlab.cli"),
    "slimlab.steps": ("slimlab.run",),
    "slimlab.explore": ("slimlab.cli",),  # above the plan: it makes plans from the store's runs, the CLI calls it
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST):
    """Every module a file imports, at the top, inside functions or under TYPE_CHECKING alike."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_every_function_fits_on_one_screen():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_imports_flow_one_way():
    wrong = []
    for name, tree in _modules():
        for prefix, forbidden in MAY_NOT_IMPORT.items():
            if name == prefix or name.startswith(prefix + "."):
                wrong += [f"{name} imports {m}" for m in _imports(tree) if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not wrong, wrong


def test_the_rule_catches_a_wrong_import():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from slimlab.run import StepContext\n")
    assert list(_imports(tree)) == ["typing", "slimlab.run"]


def test_one_atomic_write_helper():
    writers = [name for name, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") and isinstance(node.value, ast.Name)
               and node.value.id == "os" and name != "slimlab.atomic"]
    assert not writers, f"renames outside slimlab.atomic: {writers}"


def test_atomic_write_fsyncs_and_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "record.json"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic.write_atomic(target, b"old")
    assert target.read_bytes() == b"old" and len(synced) == 1
    assert target.stat().st_mode & 0o040  # group-readable, for stores shared on a cluster
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]  # no temporary file left behind


def test_torch_objects_are_written_through_the_same_helper(tmp_path):
    import torch

    atomic.save_torch_atomic({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["w"].tolist() == [0, 1, 2]


def test_config_names_no_registry_package_at_import_time():
    """config.py checks names against the registries when it validates, not when it is imported."""
    tree = ast.parse((PACKAGE / "config.py").read_text())
    top = [m for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for m in _imports(node)]
    assert "slimlab.errors" in top  # the check sees module-level imports
    fillers = ("slimlab.data", "slimlab.models", "slimlab.steps", "slimlab.prune", "slimlab.quantize", "slimlab.train")
    assert not [m for m in top if m.startswith(fillers)], top


@pytest.mark.parametrize("folder", ["prune", "quantize"])
def test_compression_steps_name_no_extra_and_ask_their_declarations(folder):
    from slimlab.extras import extras

    keys = {key for extra in extras().values() for key in extra.off}
    assert keys  # the weight average and Lookahead at least
    naming = [(path.name, key) for path in (PACKAGE / folder).rglob("*.py") for key in keys if key in path.read_text()]
    assert not naming, naming


def test_train_config_names_every_plugin_fields_class_and_no_plugin_code():
    """TrainConfig's bases are written out (issue 27): every `...Fields` class an extra or optimizer brings is one of
    them, so a forgotten key fails here, and config.py imports their config-only fields.py, never a plug-in's code."""
    from slimlab.config import TrainConfig
    from slimlab.plugins import package_modules

    declared = {value for package in ("slimlab.extras", "slimlab.optimizers") for module in package_modules(package)
                for name, value in vars(module).items() if name.endswith("Fields") and isinstance(value, type)}
    assert {"LookaheadFields", "WeightAverageFields", "MuonFields"} <= {c.__name__ for c in declared}
    assert declared <= set(TrainConfig.__mro__), declared - set(TrainConfig.__mro__)
    assert {"lookahead_steps", "ema_decay", "muon_lr"} <= set(TrainConfig.model_fields)
    tree = ast.parse((PACKAGE / "config.py").read_text())
    plugins = {m for m in _imports(tree) if m.startswith(("slimlab.extras", "slimlab.optimizers"))}
    assert {"slimlab.extras.fields", "slimlab.optimizers.fields"} <= plugins  # the check sees them
    assert plugins <= {"slimlab.extras.fields", "slimlab.optimizers.fields", "slimlab.optimizers"}, plugins  # + the registry


def test_every_step_kind_is_validated_by_the_class_it_runs_with():
    """config.step_configs is a static map; the steps registry must agree with it, kind for kind."""
    from slimlab.config import step_configs
    from slimlab.steps import step_kinds

    assert {kind: entry.config_type for kind, entry in step_kinds().items()} == step_configs()


def test_the_report_answers_each_question_in_one_module_and_defines_each_metric_once():
    """Issue 27: at most 8 modules in slimlab/report/, and the record keys a metric reads (the latency's spelling
    included) written only in metrics.py, so a renamed key or a new unit is one edit."""
    modules = sorted(p.name for p in (PACKAGE / "report").glob("*.py"))
    assert len(modules) <= 8, modules
    from slimlab.report.metrics import METRICS

    record_keys = {"_median_ms", "model_size_bytes", "total_train_seconds", "quant_sqnr_db", "prune_sparsity",
                   "prune_nonzero_macs_after", "prune_sparse_bytes", "train_energy_j", "weight_payload_bytes"}
    assert all(m.read({key: 1.0 for key in record_keys | {"top1", "float_top1", "quant_rel_l2", "nonzero_params", "macs"}})
               is not None for m in METRICS.values())  # the list covers what the metrics read
    states = {'"latency_noisy"', '"latency_status"', '"float_top1"', '"energy_b'}  # the latency states, read once too
    elsewhere = [(name, key) for name in modules if name != "metrics.py"
                 for key in record_keys | states if key in (PACKAGE / "report" / name).read_text()]
    assert not elsewhere, elsewhere
