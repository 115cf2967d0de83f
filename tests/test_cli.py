"""The command line as a new user meets it: one line per mistake, pipes, plain logs, what is on this machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_config
from slimlab.cli import main


def _cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimlab", *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """A store with one finished run, made by `slimlab run` with its output piped (not a terminal)."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "exp.yaml"
    config.write_text(json.dumps(tiny_config(**{"train.epochs": 1})))
    done = _cli("run", str(config), "--store", str(folder / "store"))
    assert done.returncode == 0, done.stderr
    run_id = json.loads(_cli("runs", "--store", str(folder / "store"), "--json").stdout.splitlines()[0])["id"]
    return folder / "store", run_id, done


def test_progress_in_a_pipe_is_plain_lines(one_run):
    _, _, done = one_run
    assert "\r" not in done.stdout + done.stderr and "\x1b[" not in done.stdout + done.stderr
    assert "epoch 1/1: loss" in done.stdout  # the epoch's summary still says how training went


@pytest.mark.parametrize("command", [["runs", "--json"], ["show", "RUN"], ["show", "RUN", "--json"]])
def test_a_reader_that_closes_the_pipe_early_ends_quietly(one_run, command):
    store, run_id, _ = one_run
    args = [sys.executable, "-m", "slimlab", *[run_id if a == "RUN" else a for a in command], "--store", str(store)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line
    try:
        writer = subprocess.run(args, stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in writer.stderr and "BrokenPipe" not in writer.stderr, writer.stderr


def test_show_leads_with_the_headline_figures_and_wraps_the_rest(one_run, capsys):
    store, run_id, _ = one_run
    assert main(["show", run_id, "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    figures = lines.index("figures:")
    assert lines[figures + 1].split()[0] == "top1" and lines.index("config:") > lines.index("notes (how each figure was measured):")
    assert max(len(line) for line in lines) <= 120  # no 1,500-character JSON line
    assert "  model:" in lines and "    name: resnet20" in lines  # the config reads as nested keys


@pytest.mark.parametrize("target", ["file", "uncreatable"])
def test_a_store_that_cannot_be_a_folder_is_one_line(tmp_path, target):
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_config(**{"train.epochs": 0})))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    store = blocker if target == "file" else blocker / "store"
    done = _cli("run", str(config), "--store", str(store))
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert str(store) in done.stderr


def test_version_and_which_datasets_are_here(tmp_path):
    assert _cli("--version").stdout.startswith("slimlab ")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    listed = json.loads(_cli("datasets", "--json", env={"SLIMLAB_DATA": str(tmp_path)}).stdout)
    assert listed["mnist"]["here"] == "present" and listed["mnist"]["path"] == str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    assert listed["synthetic"]["here"] == "generated" and listed["imagefolder"]["here"] == "data.path"
    assert listed["heldout"]["here"] == "view"  # a view of the dataset named in its options: no path of its own
    assert listed["cifar100"]["here"] in ("present", "missing")


def test_a_file_given_to_the_wrong_verb_names_the_right_one(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(json.dumps(tiny_config()))
    study = tmp_path / "study.yaml"
    study.write_text("base: exp.yaml\nseeds: [0, 1]\n")
    wrong_run = _cli("run", str(study), "--store", str(tmp_path / "s"))
    wrong_study = _cli("study", str(experiment), "--store", str(tmp_path / "s"))
    assert wrong_run.returncode == wrong_study.returncode == 2
    assert "slimlab study" in wrong_run.stderr and "slimlab run" in wrong_study.stderr


def test_run_with_report_writes_a_page_and_compare_puts_runs_side_by_side(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps(tiny_config(**{"train.epochs": 1})))
    store = tmp_path / "store"
    done = _cli("run", str(config), "--store", str(store), "--report", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    page = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert page == (tmp_path / "report" / "index.html").resolve() and page.stat().st_size > 100_000
    other = _cli("run", str(config), "--store", str(store), "--set", "measure.batch_sizes=[2]", "--quiet")
    assert other.returncode == 0, other.stderr
    ids = [json.loads(line)["id"] for line in _cli("runs", "--store", str(store), "--json").stdout.splitlines()]
    table = _cli("compare", *(i[:6] for i in ids), "--store", str(store))
    assert table.returncode == 0, table.stderr
    assert all(i[:6] in table.stdout.splitlines()[0] for i in ids) and "measure.batch_sizes" in table.stdout


def test_methods_lists_every_registered_extension(capsys):
    """`slimlab methods` reads the registries: a method, engine, optimizer or extra added as one file shows up here."""
    from slimlab.cli import main

    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    for key in ("prune.method taylor", "prune.method ln_structured", "quantize.engine pt2e", "quantize.engine onnxruntime",
                "train.optimizer muon", "train extra lookahead"):
        assert key in listing, key
    assert "switched off" in listing["train extra weight_average"]  # its fine-tuning declaration, as the steps read it
    assert main(["methods", "taylor", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["prune.method taylor"]


def test_the_cheap_commands_import_no_torch(one_run):
    """`--help`, `status` and `studies` read no model: `import slimlab` resolves its API on first use (issue 27), so
    they start in a fraction of torch's import time."""
    store, run_id, _ = one_run
    from slimlab.store import Store

    Store(store).save_study({"name": "tiny", "runs": [{"id": run_id, "label": "base", "variant": "base", "point": {}}], "trainings": [],
                             "created": 0})
    probe = ("import runpy, sys\nsys.argv = ['slimlab', *sys.argv[1:]]\ntry:\n    runpy.run_module('slimlab', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH', code, file=sys.stderr)\n")
    for command in (["--help"], ["status", "--store", str(store)], ["studies", "--store", str(store)]):
        done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.stderr.splitlines()[-1] == "NO TORCH 0", (command, done.stderr[-800:])
        assert "tiny" in done.stdout or command == ["--help"], done.stdout
    done = subprocess.run([sys.executable, "-c", probe, "models"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stderr.splitlines()[-1] == "TORCH 0"  # the probe sees torch where a command needs it: the registry's models
