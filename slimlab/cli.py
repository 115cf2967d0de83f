"""Thin command line: parse arguments, build a config, call the library, print for people or as JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys

from slimlab.errors import SlimlabError


def _store(args, must_exist: bool = False, index: bool = True, readonly: bool = False):
    """The result store; commands that only read it refuse a folder that holds none (a mistyped --store)."""
    from pathlib import Path

    from slimlab.store import Store

    root = Path(args.store)
    if must_exist and not ((root / "index.sqlite").is_file() or (root / "runs").is_dir()):
        raise SlimlabError(f"no slimlab store at {args.store} (no index.sqlite or runs/ there); pass --store DIR or set SLIMLAB_STORE")
    return Store(root, index=index, readonly=readonly)


def _reader(args):
    """The store of a command that only reads: it must exist, and it is opened read-only (nothing is created, changed
    or deleted, so a store this user may only read works)."""
    return _store(args, must_exist=True, readonly=True)


def cmd_run(args) -> int:
    from slimlab.config import config_hash, load_config
    from slimlab.errors import ConfigError
    from slimlab.run import run

    config = load_config(args.config, args.overrides)
    store = _store(args)
    run_id = config_hash(config)
    existing = store.get(run_id)
    if existing is not None and existing.status == "done" and not (args.force or args.retrain):
        _say(args, f"run {run_id} is already done; skipped (--force runs it again, --retrain trains it again too)")
    try:
        record = run(config, store, progress=not args.quiet and not args.json, force=args.force, retrain=args.retrain)
    except ConfigError as exc:  # a model or data set refused before the run started (no record): name the file too
        if not str(exc).startswith(str(args.config)) and store.get(run_id) is None:
            raise ConfigError(f"{args.config}: {exc}") from None
        raise
    if args.json:
        print(json.dumps(record.to_json(), sort_keys=True))
    else:
        _print_record(record)
    if args.report and record.status == "done":
        from slimlab.report import write_runs_report

        page = write_runs_report(args.store, [record.id], args.report)
        print(f"report: {page.resolve()}", file=sys.stderr if args.json else sys.stdout)
    return 0 if record.status == "done" else 1


def cmd_study(args) -> int:
    from slimlab.executors import ExecOptions, execute, get_executor
    from slimlab.plan import load_study, plan_stages

    study = load_study(args.study, args.overrides)  # every config validated before anything runs
    get_executor(args.executor)  # an unknown name fails before anything is written
    if args.detach and args.executor != "slurm":
        raise SlimlabError(f"--detach: only the slurm executor submits and returns; the {args.executor} executor runs the study here")
    _check_factories(study)
    options = ExecOptions(jobs=args.jobs, gpus=_gpus(args), retries=args.retries, max_same_failures=args.max_same_failures,
                          force=args.force, retrain=args.retrain, detach=args.detach, progress=not args.quiet,
                          slurm={**study.slurm, **_slurm_flags(args)})
    plan = plan_stages(study, device=_planned_device(args, options))
    if args.dry_run:
        return _print_dry_run(plan, args.store)
    _check_inputs(study)
    outcome = execute(plan, _store(args), args.executor, options)
    for line in outcome.messages[:20]:  # what failed, and what was retried
        print(f"slimlab: {line}", file=sys.stderr)
    if len(outcome.messages) > 20:
        print(f"slimlab: ... and {len(outcome.messages) - 20} more; `slimlab status {study.name}` lists every failed run", file=sys.stderr)
    counts = {s: list(outcome.statuses.values()).count(s) for s in sorted(set(outcome.statuses.values()))}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"{study.name}: {len(plan.runs)} runs: {summary}" + (f"; {outcome.stopped}" if outcome.stopped else ""))
    if outcome.submitted:
        print(f"submitted; follow it with: slimlab status {study.name} --store {args.store}")
        return 0
    return 0 if counts.get("done", 0) == len(plan.runs) else 1


def _check_factories(study) -> None:
    """Every user factory (model.name package.module:function) imports here, before the study writes anything."""
    from slimlab.errors import ConfigError
    from slimlab.models import check_factory

    for name in sorted({run.config.model.name for run in study.runs if ":" in run.config.model.name}):
        try:
            check_factory(name)
        except ConfigError as exc:
            raise ConfigError(f"{study.source}: {exc}") from None


def _check_inputs(study) -> None:
    """Each distinct data set and model of the study loaded and built once here, before anything is recorded: weights
    or a data folder that do not fit the model stop the study in one line instead of failing every run."""
    from slimlab.errors import ConfigError
    from slimlab.run import check_inputs

    seen = set()
    for run in study.runs:
        key = json.dumps([run.config.data.model_dump(mode="json"), run.config.model.model_dump(mode="json")], sort_keys=True)
        if key not in seen:
            seen.add(key)
            try:
                check_inputs(run.config)
            except SlimlabError as exc:
                raise ConfigError(f"{study.source} ({run.label}): {exc}") from None


def cmd_explore(args) -> int:
    from pathlib import Path

    from slimlab.executors import ExecOptions, get_executor
    from slimlab.explore import explore, load_explore_config
    from slimlab.explore.outputs import format_result

    flags = {"model": args.model, "weights": args.weights, "data": args.data, "max_drop": args.max_drop,
             "minimize": args.minimize, "time_budget": args.time_budget, "name": args.name, "val_size": args.val_size}
    cfg = load_explore_config(args.file, flags)  # every bad value refused here, before any work
    get_executor(args.executor)
    _check_energy_counter(cfg.minimize, cfg.device, args.executor)
    options = ExecOptions(jobs=args.jobs, retries=args.retries, progress=False, slurm=_slurm_flags(args))
    out = Path(args.out or f"explore-{cfg.name}")
    result = explore(cfg, _store(args), out, args.executor, options, say=print)
    print(format_result(cfg, result))  # one line when nothing keeps the budget
    print(f"Report: {out / 'report.html'}")
    return 0 if result.pick else 1


def _check_energy_counter(minimize: str, device: str, executor: str) -> None:
    """An energy objective needs a readable counter where the trials are timed: checked here for the local executor
    (a cluster's compute nodes may have one its login node lacks)."""
    from slimlab.errors import ConfigError
    from slimlab.measure import energy_unreadable

    if minimize.startswith("energy") and executor == "local" and (why := energy_unreadable(device)):
        raise ConfigError(f"--minimize {minimize}: no energy is measured here: {why}; minimize latency_bN, size, payload "
                          "or macs instead, or run where RAPL or NVML is readable")


def _gpus(args) -> list[str]:
    if args.gpus:
        return [g.strip() for g in args.gpus.split(",") if g.strip()]
    if args.executor != "local" or args.jobs_given:
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # one worker per GPU on a GPU machine


def _planned_device(args, options) -> str | None:
    """What train.device `auto` means where the runs execute: a GPU where one is given to each run, else this machine."""
    if args.executor == "slurm":
        return "cuda" if int(options.slurm.get("gpus_per_run", 0) or 0) > 0 else "cpu"
    return "cuda" if options.gpus else None


def _slurm_flags(args) -> dict:
    flags = {"partition": args.partition, "time_min": args.time_min, "cpus_per_run": args.cpus_per_run,
             "mem_gb": args.mem_gb, "gpus_per_run": args.gpus_per_run, "max_parallel": args.max_parallel}
    return {k: v for k, v in flags.items() if v is not None}


def _print_dry_run(plan, store_root) -> int:
    from slimlab.status import plan_statuses

    statuses = plan_statuses(store_root, [r.id for r in plan.runs])
    counts = {s: list(statuses.values()).count(s) for s in ("done", "failed", "running", "stale", "to run")}
    trainings = f"{len(plan.trainings)} training{'s' if len(plan.trainings) != 1 else ''}"
    print(f"{plan.study.name}: {len(plan.runs)} runs, {trainings} ({plan.training_epochs} training epochs); "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for stage in plan.runs:
        print(f"  {stage.id[:8]}  {statuses[stage.id]:7}  {stage.planned.label}")
    return 0


def cmd_status(args) -> int:
    from slimlab.status import format_progress, study_progress

    store = _reader(args)
    manifests = [m for m in store.studies() if args.study in (None, m["name"])]
    if not manifests:
        known = ", ".join(m["name"] for m in store.studies()) or "none"
        raise SlimlabError(f"no study {args.study!r} in {args.store} (studies there: {known})" if args.study else f"no studies in {args.store}")
    for manifest in manifests:
        print("\n".join(format_progress(manifest["name"], study_progress(store, manifest))))
    return 0


def cmd_reindex(args) -> int:
    count = _store(args, must_exist=True, index=False).reindex()
    print(f"indexed {count} runs from {args.store}/runs into {args.store}/index.sqlite")
    return 0


def cmd_table(args) -> int:
    from slimlab.report import load_study
    from slimlab.report.tables import seed_table

    print(seed_table(load_study(_reader(args).root, args.study)))
    return 0


def cmd_report(args) -> int:
    from slimlab.report import write_report

    page = write_report(args.store, args.study, args.out, args.references, layer_run=args.layers_run)
    print(f"report: {page.resolve()}")
    return 0


def cmd_studies(args) -> int:
    from slimlab.report import list_studies

    rows = list_studies(args.store)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(f"no studies in {args.store}")
        return 0
    width = max(5, *(len(r["name"]) for r in rows))
    print(f"{'study':{width}}  {'runs':>5}  {'done':>5}  {'failed':>6}  {'pending':>7}")
    for r in rows:
        print(f"{r['name']:{width}}  {r['runs']:>5}  {r['done']:>5}  {r['failed']:>6}  {r['pending']:>7}")
    return 0


# Two sizes are recorded; the recommendation says which one it ranked by (a tiny int8 model's file can outweigh its
# float one, the container's code dominating, while its weights are a quarter).
SIZE_BASIS = {"size": "size = model_size_bytes, the deployable file on disk, code and container included "
                      "(--minimize payload ranks by the weights alone)",
              "payload": "payload = weight_payload_bytes, the parameters and buffers as the deployable file stores them "
                         "(int8 weights one byte each, plus scales), without its code (--minimize size ranks by the whole file)"}


def cmd_recommend(args) -> int:
    from slimlab.report import format_recommendation, load_study, recommend
    from slimlab.report.recommend import experiment_text, write_experiment

    study = load_study(args.store, args.study)
    try:
        rec = recommend(study.runs, args.max_drop, args.minimize)
    except ValueError as exc:  # an unknown --minimize, a negative --max-drop
        raise SlimlabError(str(exc)) from None
    print(format_recommendation(rec, study.name))
    if args.minimize in SIZE_BASIS:
        print(f"Ranked by {SIZE_BASIS[args.minimize]}.")
    if rec.best is None:
        return 1
    if args.out:  # written only where asked; otherwise printed, for `> FILE` or a look
        print(f"experiment file: {write_experiment(rec.best, args.out)}")
    else:
        print(f"\nexperiment file (save it with --out FILE, then `slimlab run FILE`):\n{experiment_text(rec.best)}", end="")
    return 0


def cmd_compare(args) -> int:
    from slimlab.report.study import find_runs
    from slimlab.report.tables import compare_runs

    print(compare_runs(find_runs(_reader(args), args.ids)))
    return 0


def cmd_export(args) -> int:
    from slimlab.report.export import export_mlflow, export_tensorboard

    export = {"mlflow": export_mlflow, "tensorboard": export_tensorboard}[args.tracker]
    done = export(args.store, args.study, args.out)
    left_out = f" ({done.skipped} not run yet, left out)" if done.skipped else ""
    print(f"exported {done.runs} runs to {done.path}{left_out}\nopen it with: {done.open_with}")
    return 0


def cmd_runs(args) -> int:
    from slimlab.display import run_table

    records = _reader(args).runs(args.status)
    if args.json:
        for r in records:
            print(json.dumps(r.to_json(), sort_keys=True))
        return 0
    if not records:
        print(f"no runs in {args.store}")
        return 0
    print("\n".join(run_table(records)))
    return 0


def cmd_show(args) -> int:
    matches = _reader(args).find(args.id)
    if not matches:
        raise SlimlabError(f"no run with id starting '{args.id}' in {args.store}")
    if len(matches) > 1:
        raise SlimlabError(f"'{args.id}' matches {len(matches)} runs; give more characters")
    record = matches[0]
    if args.json:
        print(json.dumps(record.to_json(), sort_keys=True, indent=1))
    else:
        _print_record(record, full=True)
    return 0


def cmd_models(args) -> int:
    from slimlab.models import list_models

    return _print_listing(list_models(args.pattern), args.json)


def cmd_datasets(args) -> int:
    from slimlab.config import ExperimentConfig
    from slimlab.data import dataset_presence, list_datasets
    from slimlab.run import data_roots

    roots = data_roots(ExperimentConfig(data={"name": "synthetic"}))  # $SLIMLAB_DATA and the default folders
    listing = list_datasets(args.pattern)
    found = {name: dataset_presence(name, roots) for name in listing}
    if args.json:
        print(json.dumps({name: {"description": text, "here": found[name][0], "path": str(found[name][1] or "") or None}
                          for name, text in listing.items()}, indent=1))
        return 0
    _print_listing({name: f"{found[name][0]:9}  {text}" for name, text in listing.items()}, False)
    print(f"\nlooked in: {', '.join(str(r) for r in roots)} (data.root in a config and $SLIMLAB_DATA add folders)")
    return 0


def cmd_methods(args) -> int:
    """Every registered extension a config can name: pruning methods, quantization engines, optimizers, training extras."""
    import fnmatch

    from slimlab.extras import extras
    from slimlab.optimizers import optimizers
    from slimlab.prune.methods import list_methods
    from slimlab.quantize.engines import engine_docs

    def first_line(fn) -> str:
        return ((fn.__doc__ or "").strip().splitlines() or [""])[0]

    listing = {**{f"prune.method {n}": d for n, d in list_methods().items()},
               **{f"quantize.engine {n}": d for n, d in engine_docs().items()},
               **{f"train.optimizer {n}": first_line(o.factory) for n, o in sorted(optimizers().items())},
               **{f"train extra {n}": f"{first_line(e.build)} (fine-tuning: {'yes' if e.fine_tuning else 'switched off'})"
                  for n, e in sorted(extras().items())}}
    return _print_listing({k: v for k, v in listing.items() if fnmatch.fnmatch(k.split()[-1], args.pattern)}, args.json)


def _print_listing(items: dict[str, str], as_json: bool) -> int:
    if as_json:
        print(json.dumps(items, indent=1))
    else:
        width = max((len(k) for k in items), default=0)
        for name, description in items.items():
            print(f"{name:{width}}  {description}")
    return 0


def _print_record(record, full: bool = False) -> None:
    from slimlab.display import record_lines

    print("\n".join(record_lines(record, full)))


def _say(args, text: str) -> None:
    if not args.json and not args.quiet:
        print(text, file=sys.stderr)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimlab")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


def _at_least(low: int):
    """An argparse type: an integer of at least `low`, refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--store", default=os.environ.get("SLIMLAB_STORE", "store"),
                   help="result store folder (default: $SLIMLAB_STORE, else ./store)")
    return p


def _add_run_commands(sub) -> None:
    """run, study, status, reindex: the commands that do work."""
    p = _with_store(sub.add_parser("run", help="run one experiment from a YAML file"))
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON object, no progress bars")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="run again even if a run with this config is done "
                   "(a finished training of the same training config is reused)")
    p.add_argument("--retrain", action="store_true", help="like --force, and train again from scratch too")
    p.add_argument("--report", metavar="DIR", help="then write the run's report (HTML page, PNG figures, tables) into DIR and print its path")
    p.set_defaults(fn=cmd_run)

    p = _with_store(sub.add_parser("study", help="run a study file (grid x zip x seeds x variants): trainings first, then "
                                  "the runs that need them; done runs are skipped"))
    p.add_argument("study", help="study YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a value in every run")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, trainings, each run's status) and create nothing")
    p.add_argument("--executor", default="local", help="where runs execute: local (worker processes; default), slurm, inline (this process)")
    p.add_argument("-j", "--jobs", type=_at_least(1), default=None, help="local: worker processes (default 1); CPU threads are split between them")
    p.add_argument("--gpus", help="local: GPU ids, one worker each, e.g. 0,1 (default: every visible GPU)")
    p.add_argument("--retries", type=_at_least(0), default=0, help="retry a run that failed transiently (oom, timeout, preempted, killed) up to N times")
    p.add_argument("--max-same-failures", type=_at_least(1), default=None, metavar="K", help="stop the study after K runs fail with the same error")
    p.add_argument("--force", action="store_true", help="run done runs again (finished trainings are reused)")
    p.add_argument("--retrain", action="store_true", help="like --force, and train every parent again too")
    p.add_argument("--detach", action="store_true", help="slurm: submit and return; follow with `slimlab status`")
    for flag, kind, what in (("--partition", str, "partition"), ("--time-min", int, "time limit per job, minutes"),
                             ("--cpus-per-run", int, "CPUs per run"), ("--mem-gb", int, "memory per run, GB"),
                             ("--gpus-per-run", int, "GPUs per run"), ("--max-parallel", int, "array tasks running at once (%%N)")):
        p.add_argument(flag, type=kind, default=None, help=f"slurm: {what} (overrides the study file's slurm: section)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_study)

    p = _with_store(sub.add_parser("status", help="a study's progress from the store: done / running / queued / failed / stale, ETA"))
    p.add_argument("study", nargs="?", default=None, help="the study's name (default: every study in the store)")
    p.set_defaults(fn=cmd_status)

    p = _with_store(sub.add_parser("reindex", help="rebuild index.sqlite from the run folders"))
    p.set_defaults(fn=cmd_reindex)


def _add_report_commands(sub) -> None:
    """table, report, studies, recommend, compare, export: the commands that read a study for people."""
    p = _with_store(sub.add_parser("table", help="print a study's runs in the seed deck's table layout"))
    p.add_argument("study", help="the study's name")
    p.set_defaults(fn=cmd_table)

    p = _with_store(sub.add_parser("report", help="write a study's report: an offline HTML page, PNG figures, CSV and Markdown tables"))
    p.add_argument("study", nargs="?", help="the study's name (default: the store's only study, else every run)")
    p.add_argument("--out", default="report", help="folder to write into (default: report)")
    p.add_argument("--references", metavar="CSV", help="points to draw: columns label, top1 and any of size_mb, latency_b<N>_ms, energy_j, sparsity_pct")
    p.add_argument("--layers-run", metavar="ID", help="run whose per-layer sparsity and SQNR to show (default: the sparsest; the largest quantization error)")
    p.set_defaults(fn=cmd_report)

    p = _with_store(sub.add_parser("studies", help="list the studies in a store with their run counts"))
    p.add_argument("--json", action="store_true", help="one JSON object per study")
    p.set_defaults(fn=cmd_studies)

    p = _with_store(sub.add_parser("recommend", help="the best measured configuration within an accuracy budget of its float parent"))
    p.add_argument("study", nargs="?", help="the study's name (default: the store's only study, else every run)")
    p.add_argument("--max-drop", type=float, default=1.0, help="top-1 points the pick may lose against its float parent (default 1.0)")
    p.add_argument("--minimize", default="latency_b1", help="latency_b<N>, size (the file), payload (its weights), energy or "
                   "macs (default latency_b1)")
    p.add_argument("--out", metavar="FILE", help="write the pick's experiment file there (default: print it, write nothing)")
    p.set_defaults(fn=cmd_recommend)

    p = _with_store(sub.add_parser("compare", help="runs side by side: headline figures, then the config keys that differ"))
    p.add_argument("ids", nargs="+", metavar="ID", help="run ids (a prefix is enough)")
    p.set_defaults(fn=cmd_compare)

    p = _with_store(sub.add_parser("export", help="export a study to MLflow (a local SQLite store, no server) or TensorBoard event files"))
    p.add_argument("tracker", choices=["mlflow", "tensorboard"])
    p.add_argument("study", nargs="?", help="the study's name (default: the store's only study, else every run)")
    p.add_argument("--out", required=True, help="folder to write into (mlflow: OUT/mlflow.db and OUT/artifacts; tensorboard: a log dir)")
    p.set_defaults(fn=cmd_export)


def _add_listing_commands(sub) -> None:
    """runs, show, models, datasets, methods."""
    p = _with_store(sub.add_parser("runs", help="list recorded runs"))
    p.add_argument("--json", action="store_true", help="one JSON object per run (id, status, config, metrics, ...)")
    p.add_argument("--status", choices=["done", "failed", "running", "stale"])
    p.set_defaults(fn=cmd_runs)

    p = _with_store(sub.add_parser("show", help="show one run (an id prefix is enough)"))
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    for name, fn, what in (("models", cmd_models, "registered models"), ("datasets", cmd_datasets, "registered datasets"),
                           ("methods", cmd_methods, "pruning methods, quantization engines, optimizers and training extras")):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'resnet*'")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)


def _add_explore_command(sub) -> None:
    """explore: a trained model and an accuracy budget in, the fastest configuration within it out."""
    p = _with_store(sub.add_parser("explore", help="search quantization and pruning for your trained model: sensitivity, "
                                  "candidates, successive halving on validation, the pick within --max-drop"))
    p.add_argument("file", nargs="?", help="an explore YAML: the question's keys (model, weights, data, max_drop, minimize, time_budget, name, val_size) "
                   "and the search's settings (docs/explore.md); where to run (-j, --executor, --store, --out) stays on the command line")
    p.add_argument("--model", help="a registered model or package.module:factory")
    p.add_argument("--weights", help="the trained model's state-dict checkpoint")
    p.add_argument("--data", help="a registered dataset or an image folder")
    p.add_argument("--max-drop", type=float, default=None, help="validation top-1 points the pick may lose (default 1.0)")
    p.add_argument("--minimize", default=None, help="latency_b<N>, energy_b<N> (RAPL or NVML), size (the file), payload (its weights) or macs (default latency_b1)")
    p.add_argument("--time-budget", default=None, help="stop starting new stages after this long, e.g. 2h, 90m")
    p.add_argument("--val-size", type=_at_least(1), default=None, help="training images held out for validation "
                   "(default: 5,000 or a fifth of the training images, whichever is fewer)")
    p.add_argument("--name", default=None, help="names its studies in the store (default: from the model)")
    p.add_argument("--out", default=None, help="folder for the report, the sensitivity table, trials, recommendation and "
                   "deployable file (default: explore-NAME)")
    p.add_argument("--executor", default="local", help="local (default), slurm or inline")
    p.add_argument("-j", "--jobs", type=_at_least(1), default=1, help="local: worker processes")
    p.add_argument("--retries", type=_at_least(0), default=0, help="retry transient failures up to N times")
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument("--time-min", type=int, default=None, help="slurm: time limit per job, minutes")
    p.set_defaults(fn=cmd_explore, cpus_per_run=None, mem_gb=None, gpus_per_run=None, max_parallel=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimlab", description="Train, quantize, prune and measure models; compare the trade-offs.")
    parser.add_argument("--version", action="version", version=f"slimlab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_run_commands, _add_explore_command, _add_report_commands, _add_listing_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "fn", None) is cmd_study:
        args.jobs_given = args.jobs is not None
        args.jobs = args.jobs or 1
    try:
        code = args.fn(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except SlimlabError as exc:
        print(f"slimlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slimlab runs --json | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush must not fail too
        return 141


if __name__ == "__main__":
    sys.exit(main())
