"""Exports read back with the trackers' own readers: TensorBoard's EventAccumulator and hparams parser, MLflow's client."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from slimlab.errors import MissingDependencyError
from slimlab.report.export import export_mlflow, export_tensorboard
from slimlab.store import Store

HISTORY = [{"epoch": 1, "train_loss": 2.0, "val_top1": 30.0, "val_loss": 1.9, "precision": "fp32"},
           {"epoch": 2, "train_loss": 1.5, "val_top1": 45.0, "val_loss": 1.5, "precision": "fp32"},
           {"epoch": 1, "prune_round": 1, "train_loss": 1.4, "val_top1": 44.0, "val_loss": 1.6, "precision": "fp32"},
           {"prune_round": 1, "sparsity": 0.5, "test_top1": 40.0}]


@pytest.fixture(scope="module")
def study_store(tmp_path_factory) -> Path:
    """A float run and a pruned one (done, with histories), a failed run, and one the store never saw."""
    store = Store(tmp_path_factory.mktemp("export") / "store")
    entries = []
    for run_id, variant, amount, metrics in (
            ("f10a7000", "float", 0.0, {"top1": 47.0, "float_top1": 47.0, "model_size_bytes": 1.1e6, "latency_b1_median_ms": 3.0}),
            ("9a12e500", "l1", 0.5, {"top1": 45.5, "float_top1": 47.0, "model_size_bytes": 1.1e6, "latency_b1_median_ms": 3.1,
                                     "prune_sparsity": 0.5, "round1_top1": 40.0}),
            ("fa11ed00", "l1", 0.9, None)):
        config = {"name": f"exp:{variant}", "seed": 0, "data": {"name": "synthetic"}, "model": {"name": "resnet20"},
                  "train": {"lr": 0.1}, "steps": [{"kind": "prune", "amount": amount}] if amount else []}
        store.start(run_id, config, config["name"])
        if metrics is None:
            store.fail(run_id, "non-finite loss at epoch 1", failure="diverged")
        else:
            store.finish(run_id, metrics, {}, {"device": "cpu"}, HISTORY[:2] if variant == "float" else HISTORY)
        entries.append({"id": run_id, "label": f"{variant}/steps.0.amount={amount}/seed=0", "variant": variant,
                        "point": {"steps.0.amount": amount, "seed": 0}})
    entries.append({"id": "0e0e0e0e", "label": "l1/steps.0.amount=0.8/seed=0", "variant": "l1", "point": {"steps.0.amount": 0.8, "seed": 0}})
    store.save_study({"name": "exp", "axes": ["steps.0.amount"], "runs": entries, "created": 1.0})
    return store.root


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_tensorboard = pytest.mark.skipif(not _installed("tensorboard"), reason="tensorboard is not installed: pip install -e '.[tensorboard]' (requirements-dev.txt has it)")
needs_mlflow = pytest.mark.skipif(not _installed("mlflow"), reason="mlflow is not installed: pip install -e '.[mlflow]' (requirements-dev.txt has it)")


@needs_tensorboard
def test_tensorboard_scalars_per_epoch_and_final_figures(study_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    export_tensorboard(study_store, "exp", tmp_path / "tb")
    exported = export_tensorboard(study_store, "exp", tmp_path / "tb")  # again: replaced, not doubled
    assert (exported.runs, exported.skipped) == (3, 1)
    assert all(len(list(d.glob("events.out.tfevents.*"))) == 1 for d in [exported.path, *exported.path.iterdir()] if d.is_dir())
    assert exported.open_with == f"tensorboard --logdir {tmp_path / 'tb'}"
    pruned = EventAccumulator(str(next((tmp_path / "tb").glob("l1_steps.0.amount=0.5_seed=0_9a12e500")))).Reload()
    val = pruned.Scalars("epoch/val_top1")
    assert [(e.step, e.value) for e in val] == [(1, 30.0), (2, 45.0), (3, 44.0)]  # training, then the retraining round
    assert [(e.step, e.value) for e in pruned.Scalars("prune_round/test_top1")] == [(1, 40.0)]
    assert not {"prune_round/train_loss", "epoch/prune_round", "prune_round/epoch"} & set(pruned.Tags()["scalars"])
    assert pruned.Scalars("final/top1")[0].value == pytest.approx(45.5)
    assert pruned.Scalars("final/top1_change")[0].value == pytest.approx(-1.5)
    assert pruned.Scalars("final/size")[0].value == pytest.approx(1.1)  # MB, as the label says
    assert pruned.Scalars("final/latency_b1")[0].value == pytest.approx(3.1)
    assert "epoch/precision" not in pruned.Tags()["scalars"]  # a string is not a scalar


@needs_tensorboard
def test_tensorboard_hparams_view_has_experiment_and_sessions(study_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    out = export_tensorboard(study_store, "exp", tmp_path / "tb").path
    top = EventAccumulator(str(out)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(top[metadata.EXPERIMENT_TAG])
    hparams = {h.name: h for h in experiment.hparam_infos}
    assert set(hparams) == {"variant", "steps.0.amount", "seed"}
    assert [v.number_value for v in hparams["steps.0.amount"].domain_discrete.values] == [0.0, 0.5, 0.9]
    assert hparams["variant"].type == api_pb2.DATA_TYPE_STRING
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    assert metric_tags[:2] == ["final/top1", "final/top1_change"] and "final/latency_b1" in metric_tags

    sessions = {}
    for folder in out.iterdir():
        if folder.is_dir():
            content = EventAccumulator(str(folder)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
            start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
            end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
            sessions[folder.name[-8:]] = (start, end)
    assert set(sessions) == {"f10a7000", "9a12e500", "fa11ed00"}  # the pending run has no session
    start, end = sessions["9a12e500"]
    assert start.hparams["variant"].string_value == "l1" and start.hparams["steps.0.amount"].number_value == 0.5
    assert start.group_name == "l1/steps.0.amount=0.5"  # seeds of one configuration group together
    assert end.status == api_pb2.STATUS_SUCCESS and sessions["fa11ed00"][1].status == api_pb2.STATUS_FAILURE


@needs_mlflow
def test_mlflow_runs_params_metrics_and_history_read_back(study_store, tmp_path):
    from mlflow.tracking import MlflowClient

    exported = export_mlflow(study_store, "exp", tmp_path / "mlflow")
    assert exported.path == (tmp_path / "mlflow" / "mlflow.db").resolve() and exported.path.is_file()
    assert (exported.runs, exported.skipped) == (3, 1)
    client = MlflowClient(tracking_uri=f"sqlite:///{exported.path}")
    experiment = client.get_experiment_by_name("exp")
    runs = {r.data.tags["slimlab.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"f10a7000", "9a12e500", "fa11ed00"}
    pruned = runs["9a12e500"]
    assert pruned.info.run_name == "l1/steps.0.amount=0.5/seed=0" and pruned.info.status == "FINISHED"
    assert pruned.data.params["steps.0.amount"] == "0.5" and pruned.data.params["data.name"] == "synthetic"
    assert pruned.data.metrics["top1"] == 45.5 and pruned.data.metrics["prune_sparsity"] == 0.5
    assert pruned.data.tags["slimlab.device"] == "cpu" and pruned.data.tags["slimlab.variant"] == "l1"
    history = client.get_metric_history(pruned.info.run_id, "epoch/val_top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 30.0), (2, 45.0), (3, 44.0)]
    failed = runs["fa11ed00"]
    assert failed.info.status == "FAILED" and "non-finite loss" in failed.data.tags["slimlab.error"]
    config = yaml.safe_load(Path(client.download_artifacts(pruned.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["steps"] == [{"kind": "prune", "amount": 0.5}]


@needs_mlflow
def test_mlflow_export_again_keeps_one_mlflow_run_per_slimlab_run(study_store, tmp_path):
    from mlflow.tracking import MlflowClient

    export_mlflow(study_store, "exp", tmp_path / "mlflow")
    store = Store(study_store)
    store.update_metrics("f10a7000", {"top1": 47.25}, {})  # a changed record is exported again, the rest kept
    path = export_mlflow(study_store, "exp", tmp_path / "mlflow").path
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.data.tags["slimlab.run_id"] for r in runs) == ["9a12e500", "f10a7000", "fa11ed00"]
    assert next(r for r in runs if r.data.tags["slimlab.run_id"] == "f10a7000").data.metrics["top1"] == 47.25


def test_a_missing_tracker_names_the_extra(monkeypatch, study_store, tmp_path):
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorboard", "mlflow"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    monkeypatch.setattr("importlib.import_module", lambda name: refuse(name))
    with pytest.raises(MissingDependencyError, match=r"slimlab\[tensorboard\]"):
        export_tensorboard(study_store, "exp", tmp_path / "tb")
    with pytest.raises(MissingDependencyError, match=r"slimlab\[mlflow\]"):
        export_mlflow(study_store, "exp", tmp_path / "mlflow")


@needs_tensorboard
def test_tensorboard_hparams_plugin_lists_the_session_groups_with_their_metrics(study_store, tmp_path):
    """The request TensorBoard's HPARAMS tab makes, answered by its own backend (tensorboard is pinned in
    requirements-dev.txt, since these are its internals)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    out = export_tensorboard(study_store, "exp", tmp_path / "tb").path
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(out))
    multiplexer.Reload()

    board = type("Board", (), {"data_provider": data_provider.MultiplexerDataProvider(multiplexer, str(out))})()

    statuses = [api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING, api_pb2.STATUS_UNKNOWN]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=statuses)
    answer = list_session_groups.Handler(context.RequestContext(), backend_context.Context(board), "", request).run()
    groups = {g.name: g for g in answer.session_groups}
    assert set(groups) == {"float/steps.0.amount=0.0", "l1/steps.0.amount=0.5", "l1/steps.0.amount=0.9"}
    pruned = {m.name.tag: m.value for m in groups["l1/steps.0.amount=0.5"].metric_values}
    assert pruned["final/top1"] == pytest.approx(45.5) and pruned["final/sparsity"] == pytest.approx(50.0)
    assert groups["l1/steps.0.amount=0.9"].sessions[0].status == api_pb2.STATUS_FAILURE
