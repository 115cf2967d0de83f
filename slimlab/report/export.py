"""Export a study to the trackers people already use: MLflow (a local SQLite file, no server) and TensorBoard event
files (scalars per epoch and the hparams view). Both read the store only; the trackers are optional extras."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from slimlab.errors import require
from slimlab.report.metrics import METRICS, latency_batches, latency_metric
from slimlab.report.study import Study, StudyRun, flatten, load_study

HPARAM_METRICS = ["top1", "top1_change", "size", "sparsity", "macs", "quant_sqnr", "train_time"]  # then latencies


@dataclass(frozen=True)
class Exported:
    """Where an export went, how many runs it holds, and the command that opens it."""

    path: Path
    runs: int
    skipped: int  # runs the study lists that the store has no record of yet (pending)
    open_with: str


def _runs(study: Study) -> tuple[list[StudyRun], int]:
    """The runs with a record (done, failed, running), and how many the store has not seen."""
    exportable = [r for r in study.runs if r.record is not None]
    return exportable, len(study.runs) - len(exportable)


def _hparams(run: StudyRun) -> dict[str, str | float | bool]:
    """The run's place in the study: its variant and every point value (seed included), as hparams-friendly scalars."""
    found: dict[str, str | float | bool] = {"variant": run.variant}
    for key, value in run.point.items():
        found[key] = value if isinstance(value, (str, bool, int, float)) else json.dumps(value, sort_keys=True)
    return found


def _history_scalars(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series: `epoch/<key>` after every epoch (training, then each retraining round, in order, as the
    report's curves count them) and `prune_round/<key>` after each pruning round (step = the round)."""
    epochs = [e for e in history if "epoch" in e]
    rounds = [e for e in history if "prune_round" in e and "epoch" not in e]
    scalars: dict[str, list[tuple[int, float]]] = {}
    for prefix, entries, steps in (("epoch", epochs, range(1, len(epochs) + 1)), ("prune_round", rounds, [e["prune_round"] for e in rounds])):
        for step, entry in zip(steps, entries):
            for key, value in entry.items():
                if key not in ("epoch", "prune_round") and _number(value):
                    scalars.setdefault(f"{prefix}/{key}", []).append((step, float(value)))
    return scalars


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _final_metrics(study: Study) -> list:
    """The headline metrics for the hparams view, each a Metric with a label and unit; latencies per batch size."""
    return [METRICS[k] for k in HPARAM_METRICS] + [latency_metric(b) for b in latency_batches(r.metrics for r in study.runs)]


def _run_dir_name(run: StudyRun) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", f"{run.label}_{run.id[:8]}")


# --- TensorBoard -------------------------------------------------------------------------------------------------


def export_tensorboard(store_root: str | Path, study: str | None, out_dir: str | Path) -> Exported:
    """Write TensorBoard event files into `out_dir`: one folder per run with its scalars per epoch (`epoch/val_top1`,
    ...), its final figures (`final/top1`, ...) and its hparams session; the hparams experiment at the top. Exporting
    again into the same folder replaces the event files it wrote."""
    require("tensorboard", "tensorboard", "TensorBoard export")
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2

    loaded = load_study(store_root, study)
    runs, skipped = _runs(loaded)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _final_metrics(loaded)
    hparams = {run.id: _hparams(run) for run in runs}

    for run in runs:
        writer = _fresh_writer(out / _run_dir_name(run))
        when = run.record.created
        _write(writer, _session_start(hparams[run.id], run.group, when), 0, when)
        history = loaded.history(run) if run.status == "done" else []
        last = sum("epoch" in e for e in history)  # the final figures sit at the last epoch
        for tag, points in _history_scalars(history).items():
            for step, y in points:
                _write(writer, Summary(value=[Summary.Value(tag=tag, simple_value=y)]), step, when)
        finals = [Summary.Value(tag=f"final/{m.key}", simple_value=v) for m in metrics if (v := m.read(run.metrics)) is not None]
        if finals:
            _write(writer, Summary(value=finals), last, run.record.updated)
        status = api_pb2.STATUS_SUCCESS if run.status == "done" else (
            api_pb2.STATUS_FAILURE if run.status == "failed" else api_pb2.STATUS_RUNNING)
        if status != api_pb2.STATUS_RUNNING:
            _write(writer, _session_end(status, run.record.updated), last, run.record.updated)
        writer.close()

    writer = _fresh_writer(out)
    _write(writer, _experiment(list(hparams.values()), metrics, loaded.name), 0, min((r.record.created for r in runs), default=0))
    writer.close()
    return Exported(out, len(runs), skipped, f"tensorboard --logdir {out}")


def _fresh_writer(folder: Path):
    """An event writer for `folder`, its earlier event files removed: exporting again replaces, never doubles, a run."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    return EventFileWriter(str(folder))


def _write(writer, summary, step: int, wall_time: float) -> None:
    from tensorboard.compat.proto.event_pb2 import Event

    writer.add_event(Event(summary=summary, step=step, wall_time=wall_time))


def _plugin_summary(tag: str, **content):
    """A Summary carrying hparams plugin data, laid out as TensorBoard's own hparams writer does (a null tensor)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**content))
    return Summary(value=[Summary.Value(tag=tag, metadata=data, tensor=metadata.NULL_TENSOR)])


def _session_start(hparams: dict, group: str, start: float):
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=start)
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    return _plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info)


def _session_end(status: int, end: float):
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    return _plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end))


def _experiment(sessions: list[dict], metrics: list, name: str):
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata

    infos = []
    for key in dict.fromkeys(k for s in sessions for k in s):
        seen = list(dict.fromkeys(s[key] for s in sessions if key in s))
        if all(isinstance(v, bool) for v in seen):
            kind, values = api_pb2.DATA_TYPE_BOOL, [struct_pb2.Value(bool_value=v) for v in seen]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            kind, values = api_pb2.DATA_TYPE_FLOAT64, [struct_pb2.Value(number_value=v) for v in sorted(seen)]
        else:
            kind, values = api_pb2.DATA_TYPE_STRING, [struct_pb2.Value(string_value=str(v)) for v in seen]
        infos.append(api_pb2.HParamInfo(name=key, type=kind, domain_discrete=struct_pb2.ListValue(values=values)))
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"final/{m.key}"), display_name=m.label) for m in metrics]
    experiment = api_pb2.Experiment(name=name, hparam_infos=infos, metric_infos=metric_infos)
    return _plugin_summary(metadata.EXPERIMENT_TAG, experiment=experiment)


# --- MLflow ------------------------------------------------------------------------------------------------------


def export_mlflow(store_root: str | Path, study: str | None, out_dir: str | Path) -> Exported:
    """Write a study into an MLflow tracking store at `out_dir/mlflow.db` (SQLite: no server; artifacts in
    `out_dir/artifacts`): one MLflow run per run, its config as params and `config.yaml`, every figure as a metric and
    the history per epoch as metric steps. Exporting again replaces the runs whose record changed."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # an export makes no network request
    require("mlflow", "mlflow", "MLflow export")
    from mlflow.tracking import MlflowClient

    loaded = load_study(store_root, study)
    runs, skipped = _runs(loaded)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    with _quiet("mlflow", "alembic"):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(loaded.name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            loaded.name, artifact_location=(out / "artifacts" / loaded.name).as_uri())
        exported = {r.data.tags.get("slimlab.run_id"): r for r in _all_runs(client, experiment_id)}
        for run in runs:
            previous = exported.get(run.id)
            if previous is not None:
                if previous.data.tags.get("slimlab.updated") == repr(run.record.updated):
                    continue
                client.delete_run(previous.info.run_id)
            _log_mlflow_run(client, experiment_id, loaded, run)
    return Exported(out / "mlflow.db", len(runs), skipped, f"mlflow ui --backend-store-uri {uri}")


def _all_runs(client, experiment_id: str) -> list:
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _log_mlflow_run(client, experiment_id: str, study: Study, run: StudyRun) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    record = run.record
    start, end = int(record.created * 1000), int(record.updated * 1000)
    tags = {"slimlab.run_id": record.id, "slimlab.study": study.name, "slimlab.variant": run.variant,
            "slimlab.group": run.group, "slimlab.status": run.status, "slimlab.updated": repr(record.updated),
            "slimlab.device": record.env.get("device", ""), "slimlab.data": record.config.get("data", {}).get("name", "")}
    if record.error:
        tags["slimlab.error"] = record.error[:8000]
        tags["mlflow.note.content"] = f"{run.status} ({run.failure}): {record.error}"[:8000]
    created = client.create_run(experiment_id, start_time=start, tags=tags, run_name=run.label)
    run_id = created.info.run_id
    params = [Param(k[:250], _param(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(record.config).items()]
    params += [Param(f"point.{k}", str(v)) for k, v in run.point.items() if f"point.{k}" not in {p.key for p in params}]
    for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])
    metrics = [Metric(k, float(v), end, 0) for k, v in record.metrics.items() if _number(v)]
    if run.status == "done":
        for tag, points in _history_scalars(study.history(run)).items():
            metrics += [Metric(tag, y, start, step) for step, y in points]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
    client.log_text(run_id, yaml.safe_dump(record.config, sort_keys=False), "config.yaml")
    status = {"done": "FINISHED", "failed": "FAILED"}.get(run.status)
    if status:
        client.set_terminated(run_id, status, end_time=end)


def _param(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _quiet:
    """Silence the trackers' INFO logging (database migrations) for the duration of an export."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.levels = [log.level for log in self.loggers]
        for log in self.loggers:
            log.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for log, level in zip(self.loggers, self.levels):
            log.setLevel(level)
