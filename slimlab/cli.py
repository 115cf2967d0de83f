"""Thin command line: parse arguments, build a config, call the library, print for people or as JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys

from slimlab.errors import SlimlabError


def _store(args, must_exist: bool = False):
    """The result store; commands that only read it refuse a folder that holds none (a mistyped --store)."""
    from pathlib import Path

    from slimlab.store import Store

    if must_exist and not (Path(args.store) / "index.sqlite").is_file():
        raise SlimlabError(f"no slimlab store at {args.store} (no index.sqlite there); pass --store DIR or set SLIMLAB_STORE")
    return Store(args.store)


def cmd_run(args) -> int:
    from slimlab.config import config_hash, load_config
    from slimlab.run import run

    config = load_config(args.config, args.overrides)
    store = _store(args)
    run_id = config_hash(config)
    existing = store.get(run_id)
    if existing is not None and existing.status == "done" and not (args.force or args.retrain):
        _say(args, f"run {run_id} is already done; skipped (--force runs it again, --retrain trains it again too)")
    record = run(config, store, progress=not args.quiet and not args.json, force=args.force, retrain=args.retrain)
    if args.json:
        print(json.dumps(record.to_json(), sort_keys=True))
    else:
        _print_record(record)
    return 0 if record.status == "done" else 1


def cmd_study(args) -> int:
    from slimlab.executors.local import run_all
    from slimlab.plan import load_study

    planned = load_study(args.study, args.overrides)  # every config validated before anything runs
    store = _store(args)
    if args.dry_run:
        for item in planned:
            print(f"{item.label}: {item.config.model_dump(mode='json')['steps']}")
        return 0
    records = run_all(planned, store, progress=not args.quiet)
    done = sum(r.status == "done" for r in records)
    print(f"{done} of {len(records)} runs done" + ("" if done == len(records) else f"; failed: {', '.join(r.id for r in records if r.status != 'done')}"))
    return 0 if done == len(records) else 1


def cmd_table(args) -> int:
    from slimlab.report.seed_table import seed_table

    print(seed_table(_store(args, must_exist=True).runs(), args.study))
    return 0


def cmd_runs(args) -> int:
    records = _store(args, must_exist=True).runs(args.status)
    if args.json:
        for r in records:
            print(json.dumps(r.to_json(), sort_keys=True))
        return 0
    if not records:
        print(f"no runs in {args.store}")
        return 0
    print(f"{'id':16}  {'status':7}  {'model':18}  {'data':14}  {'top1':>6}  {'size MB':>8}  {'b1 ms':>7}  name")
    for r in records:
        m = r.metrics
        top1 = f"{m['top1']:.2f}" if "top1" in m else "-"
        size = f"{m['model_size_bytes'] / 1e6:.2f}" if "model_size_bytes" in m else "-"
        lat = f"{m['latency_b1_median_ms']:.2f}" if "latency_b1_median_ms" in m else "-"
        print(f"{r.id:16}  {r.status:7}  {r.config['model']['name'][:18]:18}  {r.config['data']['name'][:14]:14}  {top1:>6}  {size:>8}  {lat:>7}  {r.name}")
    return 0


def cmd_show(args) -> int:
    matches = _store(args, must_exist=True).find(args.id)
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
    from slimlab.data import list_datasets

    return _print_listing(list_datasets(args.pattern), args.json)


def _print_listing(items: dict[str, str], as_json: bool) -> int:
    if as_json:
        print(json.dumps(items, indent=1))
    else:
        width = max((len(k) for k in items), default=0)
        for name, description in items.items():
            print(f"{name:{width}}  {description}")
    return 0


def _print_record(record, full: bool = False) -> None:
    print(f"run {record.id}  status: {record.status}  {record.name}")
    if record.error:
        print(f"  reason: {record.error}")
    for key in sorted(record.metrics):
        value = record.metrics[key]
        print(f"  {key:28} {value:.4g}" if isinstance(value, float) else f"  {key:28} {value}")
    if full:
        for key, text in sorted(record.notes.items()):
            print(f"  note {key}: {text}")
        print("  config: " + json.dumps(record.config, sort_keys=True))
        print("  env: " + json.dumps(record.env, sort_keys=True))


def _say(args, text: str) -> None:
    if not args.json and not args.quiet:
        print(text, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimlab", description="Train, quantize, prune and measure models; compare the trade-offs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_store(p):
        p.add_argument("--store", default=os.environ.get("SLIMLAB_STORE", "store"),
                       help="result store folder (default: $SLIMLAB_STORE, else ./store)")
        return p

    p = with_store(sub.add_parser("run", help="run one experiment from a YAML file"))
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON object, no progress bars")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="run again even if a run with this config is done "
                   "(a finished training of the same training config is reused)")
    p.add_argument("--retrain", action="store_true", help="like --force, and train again from scratch too")
    p.set_defaults(fn=cmd_run)

    p = with_store(sub.add_parser("study", help="run every experiment of a study file (grid x variants), skipping done ones"))
    p.add_argument("study", help="study YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a value in every run")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and stop")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_study)

    p = with_store(sub.add_parser("table", help="print a study's runs in the seed deck's table layout"))
    p.add_argument("study", help="the study's name")
    p.set_defaults(fn=cmd_table)

    p = with_store(sub.add_parser("runs", help="list recorded runs"))
    p.add_argument("--json", action="store_true", help="one JSON object per run (id, status, config, metrics, ...)")
    p.add_argument("--status", choices=["done", "failed", "running"])
    p.set_defaults(fn=cmd_runs)

    p = with_store(sub.add_parser("show", help="show one run (an id prefix is enough)"))
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    for name, fn, what in (("models", cmd_models, "registered models"), ("datasets", cmd_datasets, "registered datasets")):
        p = sub.add_parser(name, help=f"list {what}")
        p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'resnet*'")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SlimlabError as exc:
        print(f"slimlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
