"""One experiment end to end: recorded, skipped when done, resumed after a kill, failed with a reason on NaN."""
import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import slimlab
from slimlab.models import create_model
from conftest import REPO, tiny_config
from slimlab.config import build_config, config_hash, training_hash
from slimlab.store import Store
from slimlab.errors import ConfigError
from slimlab.train import lr_multiplier

# model_size_bytes is left out: TorchScript mangles class names differently the second time a process compiles them.
DETERMINISTIC_KEYS = ("top1", "top5", "test_loss", "val_top1", "params", "macs")


def test_run_records_metrics_and_files(store_dir):
    record = slimlab.run(build_config(tiny_config()), store_dir, progress=False)
    assert record.status == "done"
    m = record.metrics
    for key in ("top1", "top5", "test_loss", "params", "nonzero_params", "macs", "flops", "model_size_bytes",
                "model_size_deflate_bytes", "latency_b1_median_ms", "latency_b1_p90_ms", "latency_b4_median_ms",
                "throughput_b4_per_s", "train_seconds", "train_epochs"):
        assert key in m, key
    assert 0 <= m["top1"] <= m["top5"] <= 100
    assert m["params"] == m["nonzero_params"] == 272_474
    run_dir = store_dir / "runs" / record.id
    assert (run_dir / "model.pt").stat().st_size == m["model_size_bytes"]  # size is bytes on disk
    assert 0 < m["model_size_deflate_bytes"] < m["model_size_bytes"]
    assert 0 < m["latency_b1_median_ms"] <= m["latency_b1_p90_ms"]
    assert m["throughput_b4_per_s"] == pytest.approx(4000 / m["latency_b4_median_ms"])
    assert m["macs"] == 40_813_184  # ResNet-20 at 32x32: 40.8 M MACs (docs/references.md)
    assert m["train_epochs"] == 2 and m["train_seconds"] > 0
    if "train_energy_j" in m:  # a host with a readable counter (RAPL, NVML); tests/test_measure.py fakes one
        assert m["train_energy_j"] > 0 and "measured with" in record.notes["train_energy_j"]
    else:  # none here: absent, with the reason
        assert "not measured" in record.notes["energy"]
    assert record.env["torch"] == torch.__version__ and record.env["torch_threads"] >= 1
    history = json.loads((run_dir / "history.json").read_text())
    trained = torch.load(record.notes["trained_weights"], weights_only=True)
    assert trained["history"] == history and set(trained["model"]) == set(create_model("resnet20").state_dict())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_top1" in h and "lr" in h for h in history)
    reloaded = torch.jit.load(str(run_dir / "model.pt"))  # deployable without slimlab's code
    assert reloaded(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_done_run_is_skipped(store_dir, monkeypatch):
    config = build_config(tiny_config())
    first = slimlab.run(config, store_dir, progress=False)
    monkeypatch.setattr(sys.modules["slimlab.run"], "_execute", lambda *a, **k: pytest.fail("a done run was executed again"))
    again = slimlab.run(config, store_dir, progress=False)
    assert again.id == first.id and again.metrics == first.metrics


def test_force_reuses_the_training_and_retrain_trains_again(store_dir, monkeypatch):
    config = build_config(tiny_config())
    slimlab.run(config, store_dir, progress=False)
    trainings = []
    original = sys.modules["slimlab.run"].train
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: trainings.append(k.get("resume")) or original(*a, **k))
    forced = slimlab.run(config, store_dir, progress=False, force=True)
    assert forced.status == "done" and trainings == []
    retrained = slimlab.run(config, store_dir, progress=False, retrain=True)
    assert retrained.status == "done" and trainings == [None]  # from scratch, not resumed from the old checkpoint
    assert retrained.metrics["top1"] == forced.metrics["top1"]  # the same seed on the CPU trains the same model


def test_runs_differing_after_training_share_one_training(store_dir, monkeypatch):
    first = slimlab.run(build_config(tiny_config()), store_dir, progress=False)
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: pytest.fail("trained twice"))
    second = slimlab.run(build_config(tiny_config(**{"measure.repeats": 6})), store_dir, progress=False)
    assert second.id != first.id and second.status == "done"
    for key in ("top1", "test_loss", "train_seconds", "train_epochs"):
        assert second.metrics[key] == first.metrics[key]
    assert "reused" in second.notes.get("energy", second.notes.get("train_energy_j", ""))


def test_same_seed_same_numbers_on_cpu(tmp_path):
    config = build_config(tiny_config())
    a = slimlab.run(config, tmp_path / "a", progress=False).metrics
    b = slimlab.run(config, tmp_path / "b", progress=False).metrics
    assert {k: a[k] for k in DETERMINISTIC_KEYS} == {k: b[k] for k in DETERMINISTIC_KEYS}
    c = slimlab.run(build_config({**tiny_config(), "seed": 1}), tmp_path / "c", progress=False).metrics
    assert c["test_loss"] != a["test_loss"]


def test_nan_loss_gives_failed_run_with_reason(store_dir, tmp_path, monkeypatch):
    (tmp_path / "nannet.py").write_text(
        "import torch.nn as nn\n"
        "class NaNNet(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__(); self.fc = nn.Linear(3, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.mean((2, 3))) * float('nan')\n"
        "def build(num_classes=10):\n"
        "    return NaNNet(num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = slimlab.run(build_config(tiny_config(**{"model.name": "nannet:build"})), store_dir, progress=False)
    assert record.status == "failed"
    assert "non-finite training loss at epoch 1, batch 1" in record.error
    assert Store(store_dir).get(record.id).status == "failed"


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "slimlab", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    overrides = {"train.epochs": 4, "data.options": {"train_size": 512, "test_size": 64}}
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(json.dumps(tiny_config(**overrides)))  # JSON is YAML
    run_id = config_hash(build_config(tiny_config(**overrides)))
    killed_store = tmp_path / "killed"
    proc = _cli("run", str(config_file), "--store", str(killed_store), "--quiet")
    checkpoint = killed_store / "trained" / training_hash(build_config(tiny_config(**overrides))) / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.05)
    assert checkpoint.exists(), proc.communicate()
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as in a node failure
    proc.wait()
    state = torch.load(checkpoint, weights_only=True)
    assert 1 <= state["epoch"] < 4, "killed too late to test resuming"
    assert Store(killed_store).get(run_id).status == "stale"  # running, but its process is gone

    resumed = _cli("run", str(config_file), "--store", str(killed_store), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    resumed_record = json.loads(out)
    straight = _cli("run", str(config_file), "--store", str(tmp_path / "straight"), "--json")
    out2, err2 = straight.communicate(timeout=300)
    straight_record = json.loads(out2)
    assert resumed_record["id"] == straight_record["id"] == run_id
    assert resumed_record["metrics"]["train_epochs"] == 4
    for key in DETERMINISTIC_KEYS:
        assert resumed_record["metrics"][key] == straight_record["metrics"][key], key


def test_learning_rate_schedule_values():
    cfg = build_config({"train": {"epochs": 10, "warmup_epochs": 1, "schedule": "onecycle"}}).train
    steps = 10
    assert lr_multiplier(0, 100, steps, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, steps, cfg) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, steps, cfg) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, steps, cfg) == pytest.approx(1 / 90)
    step = build_config({"train": {"epochs": 10, "warmup_epochs": 0, "schedule": "step", "milestones": [0.5, 0.75]}}).train
    assert [lr_multiplier(s, 100, steps, step) for s in (0, 49, 50, 75, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    cos = build_config({"train": {"epochs": 10, "warmup_epochs": 0, "schedule": "cosine"}}).train
    assert lr_multiplier(50, 100, steps, cos) == pytest.approx(0.5)


def test_cli_lists_runs_as_json_and_errors_in_one_line(store_dir, tmp_path):
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(json.dumps(tiny_config(**{"train.epochs": 1})))
    out, err = _cli("run", str(config_file), "--store", str(store_dir), "--json").communicate(timeout=300)
    run_id = json.loads(out)["id"]
    out, _ = _cli("runs", "--store", str(store_dir), "--json").communicate(timeout=60)
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == run_id and rows[0]["status"] == "done"
    assert rows[0]["config"]["train"]["epochs"] == 1 and rows[0]["config"]["train"]["lr"] == 0.05  # fully resolved
    assert all(isinstance(v, (int, float)) for v in rows[0]["metrics"].values())
    out, _ = _cli("show", run_id[:6], "--store", str(store_dir)).communicate(timeout=60)
    assert run_id in out and "top1" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    proc = _cli("run", str(bad), "--store", str(store_dir))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and "train.lr" in err and "Traceback" not in err
    assert not (store_dir / "runs").exists() or len(list((store_dir / "runs").iterdir())) == 1  # nothing launched


def test_the_splits_are_the_same_images_whatever_the_run_seed():
    from slimlab.run import prepare_data

    prepared = [prepare_data(build_config(tiny_config(seed=seed, **{"data.train_subset": 40, "data.test_subset": 30})), progress=False)
                for seed in (0, 1)]
    for split in ("train", "val", "test"):
        first, second = (getattr(p, split) for p in prepared)
        assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels), split


def test_energy_switched_off_is_absent_and_says_so():
    from slimlab.measure import EnergyMeter

    with EnergyMeter(torch.device("cpu"), enabled=False) as meter:
        pass
    assert meter.joules is None and "measure.energy" in meter.reason


def test_reading_a_store_that_is_not_there_is_a_one_line_error(tmp_path):
    from slimlab.cli import main

    missing = tmp_path / "typo_store"
    assert main(["runs", "--store", str(missing)]) == 2 and not missing.exists()  # not created by a read


def test_a_second_process_waits_for_the_same_run_instead_of_repeating_it(tmp_path):
    import threading

    from slimlab.store import Store

    store = Store(tmp_path / "store")
    order = []
    def second():
        with store.exclusive("run-x"):
            order.append("second")

    with store.exclusive("run-x"):
        # flock locks belong to open files, so a second open in this process contends like another process would
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive()  # blocked while the lock is held
        order.append("first")
    waiter.join(timeout=5)
    assert order == ["first", "second"]
    config = build_config(tiny_config())
    first = slimlab.run(config, store, progress=False)
    with store.exclusive(f"run-{first.id}"):
        pass  # released after the run: a later run of it is not stuck
    assert slimlab.run(config, store, progress=False).id == first.id


def test_a_factory_whose_output_width_differs_from_the_classes_fails_when_built(store_dir, tmp_path, monkeypatch):
    (tmp_path / "widenet.py").write_text("from slimlab.models import create_model\n"
                                         "def build(num_classes, in_channels, image_size):\n"
                                         "    return create_model('resnet20', num_classes + 3, in_channels, image_size)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match=r"'widenet:build' gives \(2, 13\) for a batch of \(2, 3, 32, 32\) images; the "
                                          r"dataset has 10 classes"):
        slimlab.run(build_config(tiny_config(**{"model.name": "widenet:build"})), store_dir, progress=False)


def test_a_training_split_smaller_than_a_batch_is_refused_before_training(store_dir):
    raw = tiny_config(**{"train.batch_size": 128})  # 96 synthetic images less 32 for validation: 64
    with pytest.raises(ConfigError, match=r"the training split has 64 images \(synthetic: 96 training images less "
                                          r"data.val_size 32\), fewer than train.batch_size \(128\)"):
        slimlab.run(build_config(raw), store_dir, progress=False)


def _kill_at_phase(config_file, store, checkpoint, epochs):
    """Start the run, SIGKILL it once `checkpoint` (a phase's epoch checkpoint) holds 1 to epochs-1 epochs."""
    proc = _cli("run", str(config_file), "--store", str(store), "--quiet")
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), proc.communicate()
    assert 1 <= torch.load(checkpoint, weights_only=True)["epoch"] < epochs, "killed too late to test resuming"


def test_a_run_killed_inside_a_pruning_round_or_qat_resumes_inside_it(tmp_path, counted):
    steps = [{"kind": "prune", "method": "l1", "scope": "global", "amount": 0.5, "schedule": "iterative", "rounds": 2,
              "after_round": "finetune", "finetune_epochs": 3},
             {"kind": "quantize", "method": "qat", "qat_epochs": 3}]
    raw = {**tiny_config(**{"train.epochs": 1, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}}),
           "steps": steps}
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(json.dumps(raw))
    run_id, store = config_hash(build_config(raw)), tmp_path / "killed"
    phases = store / "runs" / run_id / "phases"
    _kill_at_phase(config_file, store, phases / "step0-round2.pt", 3)
    _kill_at_phase(config_file, store, phases / "step1-qat.pt", 3)
    epochs_before = len(counted.read_text().splitlines())
    resumed = _cli("run", str(config_file), "--store", str(store), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    # 1 + 2 x 3 + 3 = 10 epochs in all; each kill cost at most the one epoch it interrupted.
    assert 10 <= len(counted.read_text().splitlines()) <= 10 + 2, (epochs_before, counted.read_text())
    history = Store(store).history(run_id)
    assert [len([r for r in history if r.get("prune_round") == k and "epoch" in r]) for k in (1, 2)] == [3, 3]
    assert not list(phases.glob("*.pt"))  # done: a forced rerun starts its phases afresh
    straight = _cli("run", str(config_file), "--store", str(tmp_path / "straight"), "--json")
    out2, _ = straight.communicate(timeout=300)
    for key in ("top1", "test_loss", "prune_sparsity"):
        assert json.loads(out)["metrics"][key] == json.loads(out2)["metrics"][key], key


def test_a_run_killed_inside_a_gradual_pruning_phase_resumes_inside_it_on_schedule(tmp_path, counted):
    """Issue 26 from outside: a gradual phase restarted from zero after a kill, so one longer than a job's time limit
    never finished. Its pruner's step and masks ride in the phase's checkpoint."""
    steps = [{"kind": "prune", "method": "l1", "scope": "global", "amount": 0.6, "schedule": "gradual", "rounds": 4,
              "after_round": "finetune", "finetune_epochs": 4}]
    raw = {**tiny_config(**{"train.epochs": 1, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}}),
           "steps": steps}
    config_file = tmp_path / "exp.yaml"
    config_file.write_text(json.dumps(raw))
    run_id, store = config_hash(build_config(raw)), tmp_path / "killed"
    _kill_at_phase(config_file, store, store / "runs" / run_id / "phases" / "step0-round1.pt", 4)
    resumed = _cli("run", str(config_file), "--store", str(store), "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert 5 <= len(counted.read_text().splitlines()) <= 5 + 1  # 1 + 4 epochs; the kill cost at most one
    straight = _cli("run", str(config_file), "--store", str(tmp_path / "straight"), "--json")
    out2, _ = straight.communicate(timeout=300)
    for key in ("prune_sparsity", "top1"):
        assert json.loads(out)["metrics"][key] == json.loads(out2)["metrics"][key], key


def _image_folder(root, classes: int, size: int = 8, per_class: int = 12):
    """class sub-folders of small PNGs: a user's own data."""
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (20 * c, 7 * i, 100)).save(root / f"class{c}" / f"{i}.png")
    return root


MISTAKES = {  # what a user gets wrong, found only once the data or the model exists: (config overrides, the one line)
    "factory typo": ({"model.name": "usernet:buidl"}, r"model.name: 'usernet' \(.*usernet.py\) has no callable 'buidl'; its functions: build, fixed10"),
    "output width": ({"model.name": "usernet:fixed10", "data.name": "imagefolder", "data.path": "FOLDER", "data.val_size": 4,
                      "data.options": {}},
                     r"model.name: 'usernet:fixed10' gives \(2, 10\) for a batch of \(2, 3, 8, 8\) images; the dataset has 3 classes"),
    "data does not fit": ({"model.name": "usernet:build", "data.name": "imagefolder", "data.path": "FOLDER", "data.val_size": 4,
                           "data.options": {}}, r"model.name: 'usernet:build' fails on a batch of \(2, 3, 8, 8\) images: RuntimeError"),
    "weights do not fit": ({"model.name": "usernet:build", "model.weights": "WEIGHTS"}, r"model.weights: .*wrong.pt does not fit the model"),
    "prune after quantize": ({"steps": [{"kind": "quantize", "method": "dynamic"}, {"kind": "prune", "amount": 0.5}]},
                             r"steps: step 1 \(prune\) comes after step 0 \(quantize\).*put the prune step first, in the order "
                             r"that works: \[\{kind: prune, ...\}, \{kind: quantize, ...\}\]"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_found_once_data_and_model_exist_stops_the_run_before_a_record(mistake, tmp_path, monkeypatch, capsys):
    import yaml

    from slimlab.cli import main

    (tmp_path / "usernet.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=10, in_channels=3, image_size=32):  # a head sized for 32x32 inputs\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, num_classes))\n"
        "def fixed10(num_classes=10, in_channels=3):  # ignores the dataset's class count\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "wrong.pt")
    _image_folder(tmp_path / "photos", classes=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the image folder's decoded cache
    overrides, said = MISTAKES[mistake]
    raw = tiny_config(**overrides)
    raw["data"] = {k: v for k, v in raw["data"].items() if not (raw["data"]["name"] == "imagefolder" and k == "options")}
    raw["data"]["path"] = str(tmp_path / "photos") if "path" in raw["data"] else None
    raw["model"]["weights"] = str(tmp_path / "wrong.pt") if raw["model"].get("weights") else None
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(sys.modules["slimlab.run"], "train", lambda *a, **k: pytest.fail("training started"))
    assert main(["run", "exp.yaml", "--store", "store", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("slimlab: error: exp.yaml: ") and "Traceback" not in err
    assert re.search(said, err), err
    assert Store(tmp_path / "store").runs() == []  # no `failed` record: nothing ran
