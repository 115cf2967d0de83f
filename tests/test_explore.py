"""slimlab explore on a tiny trained model and synthetic data: sensitivity, candidates, halving, the pick on
validation, the test split once per finalist, the deployable file, resume, and the budget nothing meets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimlab.explore import ExploreConfig, explore
from slimlab.explore import halving, search
from slimlab.explore.outputs import format_result
from slimlab.explore.trials import data_section
from slimlab.store import Store

DATA = {"train_size": 480, "test_size": 64, "num_classes": 4, "size": 16}


def tiny_net(num_classes: int = 4, in_channels: int = 3, image_size: int = 16) -> nn.Module:
    """Two convolutions and a classifier: small enough to explore in seconds, big enough to have a sensitive layer."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, num_classes))


def _trained_weights(path: Path) -> Path:
    """A few hundred plain SGD steps on the synthetic bands, normalized as slimlab's loader normalizes them."""
    from slimlab.data import DatasetRequest, load_dataset

    data = load_dataset("synthetic", DatasetRequest(roots=(), cache_dir=path.parent, download=False, options=DATA))
    x = (data.train.images.float() / 255 - 0.3) / 0.25
    torch.manual_seed(0)
    model = tiny_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(150):
        index = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[index]), data.train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), path)
    return path


def _config(weights: Path, **changes) -> ExploreConfig:
    raw = {"model": "tests.test_explore:tiny_net", "weights": str(weights), "data": "synthetic", "data_options": DATA,
           "val_size": 160, "calibration_size": 64, "slice_size": 64, "max_drop": 2.0, "unstructured_ladder": [0.5],
           "channel_ladder": [0.5], "float_layers": [1], "eta": 2,
           # the weights' bytes: a tiny model's int8 latency may or may not beat float's, its int8 weights always do
           "minimize": "payload", **changes}
    return ExploreConfig(**raw)


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    cfg = _config(_trained_weights(root / "tiny.pt"))
    store = Store(root / "store")
    return cfg, store, root / "out", explore(cfg, store, root / "out", "inline", say=lambda _: None)


def test_sensitivity_is_stored_as_runs_and_written_as_a_table(explored):
    cfg, store, out, result = explored
    assert result.layers == ["0", "2", "6"]
    table = json.loads((out / "sensitivity.json").read_text())
    assert [r["layer"] for r in table] == ["0", "2", "6"]
    assert set(table[0]) == {"layer", "int8_only", "float_only", "unstructured_0.5", "channels_0.5", "int8_only_sqnr_db"}
    assert table[2]["channels_0.5"] is None  # the classifier's output channels are the classes: never channel-pruned
    assert all(isinstance(r["int8_only"], float) and isinstance(r["unstructured_0.5"], float) for r in table)
    names = [r.config["name"] for r in store.runs("done")]
    assert sum(":sensitivity/" in n for n in names) == 3 * 4 - 1
    assert (out / "sensitivity.csv").read_text().splitlines()[0].startswith("layer,int8_only,float_only")


def test_the_pick_keeps_the_budget_on_validation_and_is_the_fastest_that_does(explored):
    cfg, store, out, result = explored
    pick = result.pick
    assert pick is not None and pick.label != "float"
    assert pick.images == cfg.val_size  # chosen on the whole validation split, not the slice
    assert pick.change >= -cfg.max_drop
    evaluated = result.final()
    assert {"int8 x86", "float"} <= {s.label for s in result.scores["engines"]}  # the first answer, on the whole split
    passing = [s for s in evaluated if s.change >= -cfg.max_drop]
    assert pick.objective == min(s.objective for s in passing)
    record = store.get(pick.run_id)
    assert record.config["data"]["name"] == "heldout" and record.metrics["weight_payload_bytes"] == pick.objective
    # ExecOptions.defer_latency: timed alone from the saved file after the stage, no float baselines compiled per trial
    assert record.notes["latency"].endswith("timed alone in the latency stage")
    assert "float_compiled_latency_b1_median_ms" not in record.metrics
    assert len(result.scores["rung0"]) > len(result.scores.get("rung1", []))  # halving: not everything was promoted


def test_the_test_split_is_read_once_and_only_for_the_finalists(explored):
    cfg, store, out, result = explored
    with_test = {r.id for r in store.runs() if "test_top1" in r.metrics}
    assert with_test == {result.pick.run_id, result.float_score.run_id}
    assert set(result.test) == {result.pick.label, "float"}
    summary = json.loads((out / "recommendation.json").read_text())
    assert summary["pick"]["run_id"] == result.pick.run_id and summary["test"] == result.test


def test_the_deployable_file_runs_without_slimlab_and_matches_the_recorded_accuracy(explored, tmp_path):
    cfg, store, out, result = explored
    assert result.deployable.parent == out and result.deployable.exists()
    described = json.loads((out / "recommended.json").read_text())
    raw = json.loads((out / "recommended_raw.json").read_text())
    assert described["file"] == "recommended.pt" and raw["file"] == "recommended_raw.pt" and (out / "recommended_raw.pt").exists()
    assert raw["normalization"]["inside_the_file"] and not described["normalization"]["inside_the_file"]
    assert described["normalization"]["mean"] == [0.3, 0.3, 0.3]
    from slimlab.run import prepare_data
    from slimlab.config import build_config

    config = build_config({"data": data_section(cfg), "model": {"name": "lenet5"}, "train": {"epochs": 0}})
    data = prepare_data(config, progress=False, device="cpu")
    images = (data.test.images.float() / 255 - 0.3) / 0.25
    torch.save({"x": images, "y": data.test.labels}, tmp_path / "val.pt")
    code = ("import sys, torch; sys.modules['slimlab'] = None\n"  # importing slimlab would fail: the snippet needs none
            f"d = torch.load({str(tmp_path / 'val.pt')!r}); x = d['x']\n"
            + result.snippet.split("  #")[0].replace("'recommended", f"'{out}/recommended") + "\n"
            "print((logits.argmax(1) == d['y']).float().mean().item() * 100)")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(printed) == pytest.approx(store.get(result.pick.run_id).metrics["top1"], abs=1e-4)


def test_a_rerun_redoes_no_trial_and_a_killed_one_finishes(explored, tmp_path, monkeypatch):
    cfg, store, out, result = explored
    before = {r.id: (r.attempts, r.seconds) for r in store.runs()}
    again = explore(cfg, store, out, "inline", say=lambda _: None)
    assert {r.id: (r.attempts, r.seconds) for r in store.runs()} == before and again.pick == result.pick

    fresh = Store(tmp_path / "store")
    monkeypatch.setattr(search, "run_halving", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed after the sensitivity stage
        explore(cfg, fresh, tmp_path / "out", "inline", say=lambda _: None)
    sensitivity = {r.id: (r.attempts, r.seconds) for r in fresh.runs()}
    monkeypatch.undo()
    resumed = explore(cfg, fresh, tmp_path / "out", "inline", say=lambda _: None)
    assert {i: (r.attempts, r.seconds) for i, r in ((r.id, r) for r in fresh.runs()) if i in sensitivity} == sensitivity
    # A fresh store times every candidate afresh, so the fastest may differ within the timing noise; the rest may not.
    assert {s.label for s in resumed.scores["rung0"]} == {s.label for s in result.scores["rung0"]}
    assert resumed.pick is not None and resumed.pick.change >= -cfg.max_drop


def _score(label, change, objective, images=1000):
    return halving.Score(label, change, objective, images, label)


def test_halving_promotes_within_the_budget_with_slack_and_keeps_the_fastest_share():
    cfg = ExploreConfig(model="resnet20", data="synthetic", max_drop=1.0, eta=2)
    assert halving.slack(0.0, 1000) == pytest.approx(0.632, abs=1e-3)
    scores = [_score("a", -0.5, 3.0), _score("b", -1.5, 1.0), _score("c", -5.0, 0.5), _score("d", 0.0, 2.0)]
    assert halving.promote(scores, cfg) == ["b", "d"]  # c misses even with slack; of a, b, d the faster half
    assert halving.pick(scores, cfg).label == "d"


def test_a_budget_nothing_meets_ends_with_one_line_naming_the_closest():
    cfg = ExploreConfig(model="resnet20", data="synthetic", max_drop=0.5)
    scores = [_score("int8 x86", -0.9, 1.0), _score("channels 0.5", -7.0, 0.5)]
    result = search.Explored([], [], {"rung1": scores}, pick=halving.pick(scores, cfg), closest=halving.closest(scores, cfg))
    line = format_result(cfg, result)
    assert "\n" not in line
    assert line == ("slimlab explore: no configuration keeps validation top-1 within 0.5 points of float; "
                    "the closest is 'int8 x86' (-0.90 points)")


def test_without_a_pick_the_outputs_say_the_test_split_was_not_read(tmp_path):
    cfg = ExploreConfig(model="resnet20", data="synthetic", max_drop=0.5, minimize="size")
    scores = [_score("float", 0.0, 2.0), _score("int8 x86", -0.9, 1.0)]
    result = search.Explored([], [], {"engines": scores}, float_score=scores[0], closest=scores[1])
    from slimlab.explore import outputs

    outputs.write_results(tmp_path, cfg, result)
    summary = json.loads((tmp_path / "recommendation.json").read_text())
    assert summary["selection"].endswith("nothing was picked, so the test split was not read") and result.finalists() == []
    assert "Coverage of the finalists" not in (tmp_path / "report.html").read_text()


def test_an_untrained_float_model_stops_explore_in_one_line(tmp_path):
    cfg = ExploreConfig(model="resnet20", data="synthetic", max_drop=1.0)
    store = Store(tmp_path / "s")
    config = {"name": "f", "seed": 0, "data": {"name": "synthetic"}, "model": {"name": "resnet20"}, "steps": []}
    for run_id, top1 in (("chance", 12.0), ("trained", 31.0)):
        store.start(run_id, config, "f")
        store.finish(run_id, {"top1": top1}, {}, {}, [])
    why = search.at_chance(cfg, store, halving.Score("float", 0.0, 1.0, 500, "chance"), 10)
    assert why == ("explore resnet20: the float model scores 12.0% on 500 validation images, chance for 10 classes "
                   "(no --weights were given); pass the trained model's state dict with --weights")
    assert search.at_chance(cfg, store, halving.Score("float", 0.0, 1.0, 500, "trained"), 10) == ""  # 10% + 4 points < 31%


def test_layers_are_in_forward_order_so_the_classifier_is_last_wherever_it_is_defined():
    from slimlab.explore.sensitivity import _extremes, weighted_layers

    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.a, self.b = nn.Linear(8, 3), nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean((2, 3)))

    assert weighted_layers(HeadFirst(), torch.randn(2, 3, 8, 8)) == ["a", "b", "fc"]
    assert _extremes("pruning", ["a", "b", "c", "d", "e"]) == "Most sensitive to pruning: a, b, c; least: e, d"  # no layer twice
    assert _extremes("int8", ["a"]) == "Most sensitive to int8: a"


def test_a_slice_as_large_as_the_split_is_the_split_one_run_for_both_rungs():
    from slimlab.config import config_hash
    from slimlab.explore.trials import Trial, run_config

    cfg = ExploreConfig(model="resnet20", data="synthetic", val_size=120, calibration_size=50, slice_size=120)
    assert config_hash(run_config(cfg, Trial("x", (), 120))) == config_hash(run_config(cfg, Trial("x", (), None)))
    assert config_hash(run_config(cfg, Trial("x", (), 60))) != config_hash(run_config(cfg, Trial("x", (), None)))


def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch):
    from slimlab import measure
    from slimlab.cli import main

    monkeypatch.setattr(measure, "RAPL_ROOT", tmp_path / "no-powercap")  # energy: no counter, as on a VM
    assert main(["explore", "--model", "resnet20", "--store", str(tmp_path / "s")]) == 2
    assert main(["explore", "--model", "resnet20", "--data", "synthetic", "--minimize", "energy", "--store", str(tmp_path / "s")]) == 2
    (tmp_path / "e.yaml").write_text("model: resnet20\ndata: synthetic\nmax_drop: 1\nminimize: size\ntime_budget: 2h\nslices: 3\n")
    assert main(["explore", str(tmp_path / "e.yaml"), "--store", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_the_yaml_form_and_the_flags_say_the_same():
    from slimlab.explore.config import load_explore_config

    cfg = load_explore_config(None, {"model": "resnet20", "data": "synthetic", "minimize": "latency_b8", "time_budget": "90m"})
    assert cfg.batch == 8 and cfg.time_budget == 5400 and cfg.name == "resnet20"
    assert ExploreConfig(model="pkg.mymodels:build", data="synthetic").name == "mymodels-build"


def test_energy_per_batch_is_an_objective_the_trials_measure():
    from slimlab.explore.trials import Trial, run_config

    cfg = ExploreConfig(model="resnet20", data="synthetic", minimize="energy_b4", val_size=100, calibration_size=50)
    assert (cfg.batch, halving.objective_key(cfg), halving.objective_unit(cfg)) == (4, "energy_b4_mj", "mJ")
    assert run_config(cfg, Trial("float", (), None)).measure.energy
    assert not run_config(cfg.model_copy(update={"minimize": "latency_b4"}), Trial("float", (), None)).measure.energy
    plain = ExploreConfig(model="resnet20", data="synthetic", minimize="energy")
    assert (plain.batch, halving.objective_key(plain)) == (1, "energy_b1_mj")


def test_the_heldout_view_is_exactly_the_runs_validation_split():
    from slimlab.config import build_config
    from slimlab.run import prepare_data

    cfg = ExploreConfig(model="resnet20", data="synthetic", data_options=DATA, val_size=100, calibration_size=50)
    view = prepare_data(build_config({"data": data_section(cfg), "train": {"epochs": 0}}), progress=False, device="cpu")
    plain = prepare_data(build_config({"data": {"name": "synthetic", "options": DATA, "val_size": 100}, "train": {"epochs": 0}}),
                         progress=False, device="cpu")
    assert torch.equal(view.test.images, plain.val.images) and torch.equal(view.test.labels, plain.val.labels)
    assert len(view.train) + len(view.val) == len(plain.train)  # calibration comes from the training images left


def test_the_command_hands_the_question_and_the_executor_to_explore(tmp_path, monkeypatch, capsys):
    import slimlab.explore
    from slimlab.cli import main

    seen = {}

    def fake(cfg, store, out, executor, options, say):
        seen.update(cfg=cfg, out=out, executor=executor, jobs=options.jobs, store=store.root)
        return search.Explored([], [], {"rung1": [_score("int8 x86", -3.0, 1.0)]}, closest=_score("int8 x86", -3.0, 1.0))

    monkeypatch.setattr(slimlab.explore, "explore", fake)
    (tmp_path / "e.yaml").write_text("model: resnet20\ndata: synthetic\nminimize: size\n")
    code = main(["explore", str(tmp_path / "e.yaml"), "--max-drop", "0.5", "-j", "2", "--store", str(tmp_path / "s"),
                 "--out", str(tmp_path / "o")])
    assert code == 1  # nothing met the budget
    assert seen["cfg"].minimize == "size" and seen["cfg"].max_drop == 0.5 and seen["jobs"] == 2 and seen["executor"] == "local"
    answer, page = capsys.readouterr().out.strip().splitlines()[-2:]
    assert answer.endswith("the closest is 'int8 x86' (-3.00 points)") and page == f"Report: {tmp_path / 'o' / 'report.html'}"


def test_candidates_come_from_the_evidence_and_their_fine_tuned_versions_are_valid_runs():
    from slimlab.explore import candidates
    from slimlab.explore.trials import run_config

    cfg = ExploreConfig(model="resnet20", data="synthetic", data_options=DATA, val_size=96, calibration_size=64,
                        engines=["x86", "pt2e"], float_layers=[1, 2],
                        channel_ladder=[0.5], max_drop=1.0, finetune_epochs=1)
    rows = [{"layer": "a", "int8_only": -0.1, "float_only": 0.0, "channels_0.5": -0.2, "int8_only_sqnr_db": 30.0},
            {"layer": "b", "int8_only": -2.0, "float_only": 1.5, "channels_0.5": -5.0, "int8_only_sqnr_db": 12.0},
            {"layer": "c", "int8_only": -0.5, "float_only": 0.2, "channels_0.5": -0.4, "int8_only_sqnr_db": 20.0},
            {"layer": "fc", "int8_only": 0.0, "float_only": 0.0, "channels_0.5": None, "int8_only_sqnr_db": 40.0}]
    trials = {t.label: t for t in candidates.engine_trials(cfg) + candidates.first_rung(cfg, rows)}
    assert trials["int8 x86, 1 most sensitive float"].steps[0]["skip"] == ["b"]
    assert trials["int8 x86, 2 most sensitive float"].steps[0]["skip"] == ["b", "c"]
    assert trials["int8 pt2e"].steps[0]["engine"] == "pt2e"
    prune = trials["channels 0.5 on 1 least sensitive"].steps[0]
    assert prune["include"] == ["a"] and prune["amount"] == 0.5  # b missed the budget alone; of a and c, a hurt least
    tuned = candidates.fine_tuned(cfg, trials["channels 0.5 on 1 least sensitive, then int8 x86"])
    assert [s.get("after_round", s.get("method")) for s in tuned.steps] == ["finetune", "qat"] and tuned.val_images is None
    assert run_config(cfg, tuned).steps[1]["qat_epochs"] == 1


def test_a_spent_time_budget_ends_with_the_engines_first_answer(explored, tmp_path):
    cfg, store, out, result = explored
    store = Store(tmp_path / "store")
    stopped = explore(cfg.model_copy(update={"time_budget": 0.0}), store, tmp_path / "out", "inline", say=lambda _: None)
    assert list(stopped.scores) == ["engines"] and stopped.table == []
    assert {r.config["name"].split(":", 1)[1] for r in store.runs()} == {"float", "int8 x86"}
    assert stopped.pick.label == "int8 x86" and stopped.pick.images == cfg.val_size
    assert "time budget was spent after the engines stage" in format_result(cfg, stopped)
    assert set(stopped.test) == {"int8 x86", "float"} and stopped.deployable.exists()


def test_the_front_that_stops_improving_ends_the_search_before_the_whole_split(explored, tmp_path):
    cfg, store, out, result = explored
    again = explore(cfg.model_copy(update={"min_gain": 0.99}), store, tmp_path / "out", "inline", say=lambda _: None)
    assert "rung1" not in again.scores and "the front stopped improving" in again.stopped
    assert again.pick.label in {s.label for s in again.scores["engines"]}


def test_the_page_opens_with_the_answer_then_the_front_and_the_sensitivity_heatmap(explored):
    cfg, store, out, result = explored
    page = (out / "report.html").read_text()
    assert page.index("Recommendation") < page.index("The front") < page.index("Sensitivity") < page.index("Every candidate trial")
    assert f"Recommended: {result.pick.label}" in page and "test split read once per finalist" in page
    assert "background:rgb(" in page  # the heatmap's cells are coloured by the change
    scored = sum(len(v) for v in result.scores.values())
    assert page.count("<tr><td>") == len(result.layers) + scored  # a heatmap row per layer, a row per scored trial
    assert "Coverage of the finalists" in page and "layers int8" in page
    summary = json.loads((out / "recommendation.json").read_text())
    assert summary["pick_val_change_lower_bound"] < summary["pick"]["change"]
    pick, base = summary["figures"][result.pick.label], summary["figures"]["float"]
    assert pick["weight_bytes"] == result.pick.objective < base["weight_bytes"] and pick["latency_ms"] > 0
    assert f"weights {pick['weight_bytes'] / base['weight_bytes']:.2f}x float's" in format_result(cfg, result)
    assert summary["stages_finished_s"]["engines"] <= summary["stages_finished_s"]["rung0"]


def test_data_is_a_registered_dataset_or_an_image_folder(tmp_path):
    from slimlab.errors import ConfigError

    folder = tmp_path / "images"
    folder.mkdir()
    section = data_section(ExploreConfig(model="resnet20", data=str(folder), data_options={"image_size": 32}, val_size=5000))
    assert section["name"] == "heldout" and section["path"] == str(folder.resolve())
    assert section["options"] == {"of": "imagefolder", "val_size": 5000, "options": {"image_size": 32}}
    with pytest.raises(ConfigError, match="neither a registered dataset"):
        data_section(ExploreConfig(model="resnet20", data=str(tmp_path / "nowhere")))


def test_the_example_explore_file_is_valid():
    from slimlab.explore.config import load_explore_config

    cfg = load_explore_config(Path(__file__).resolve().parents[1] / "examples" / "explore" / "resnet20.yaml", {})
    assert (cfg.model, cfg.minimize, cfg.max_drop, cfg.time_budget, cfg.engines) == ("resnet20", "latency_b1", 1.0, 7200, ["x86", "pt2e"])


def test_fine_tuning_runs_for_the_fastest_that_missed_and_is_scored_on_the_whole_split(tmp_path, monkeypatch):
    cfg = _config(_trained_weights(tmp_path / "tiny.pt"), max_drop=1.0, finetune_epochs=1, unstructured_ladder=[], float_layers=[])
    real = halving.score

    def harder(label, record, cfg, objective=None):  # as if the data were harder: post-training int8 on the whole split loses 5
        found = real(label, record, cfg, objective)
        methods = [st["method"] for st in (record.config.get("steps") or []) if st["kind"] == "quantize"] if record else []
        if found and found.images == cfg.val_size and methods and "qat" not in methods:
            return halving.Score(found.label, found.change - 5, found.objective, found.images, found.run_id, found.single)
        return found

    monkeypatch.setattr(halving, "score", harder)
    store = Store(tmp_path / "store")
    result = explore(cfg, store, tmp_path / "out", "inline", say=lambda _: None)
    tuned = result.scores["finetune"]
    assert tuned and all(s.label.endswith("fine-tuned 1 epoch(s)") and s.images == cfg.val_size for s in tuned)
    for s in tuned:
        record = store.get(s.run_id)
        assert record.status == "done" and [st["method"] for st in record.config["steps"] if st["kind"] == "quantize"] == ["qat"]
    assert result.pick is not None and result.pick.label in {s.label for s in tuned} | {s.label for s in result.final()}


def test_channel_ratios_are_allotted_layer_by_layer_from_the_sensitivity():
    from slimlab.explore import candidates
    from slimlab.explore.trials import run_config

    cfg = ExploreConfig(model="resnet20", data="synthetic", data_options=DATA, val_size=96, calibration_size=64,
                        channel_ladder=[0.25, 0.5], max_drop=1.0)
    rows = [{"layer": "a", "channels_0.25": -0.1, "channels_0.5": -0.3},  # 0.5 costs 0.3 <= half the budget
            {"layer": "b", "channels_0.25": -0.4, "channels_0.5": -3.0},  # only 0.25 fits
            {"layer": "c", "channels_0.25": -2.0, "channels_0.5": -6.0},  # neither: left whole
            {"layer": "d", "channels_0.25": None, "channels_0.5": None},  # tied (its trials failed): left whole
            {"layer": "fc", "channels_0.25": None, "channels_0.5": None}]
    [(label, steps)] = candidates.per_layer_channels(cfg, rows)
    assert label == "channels by layer: 0.5 on 1, 0.25 on 1"
    assert [(s["amount"], s["include"]) for s in steps] == [(0.5, ["a"]), (0.25, ["b"])]
    trials = {t.label: t for t in candidates.first_rung(cfg, rows)}
    assert trials[f"{label}, then int8 x86"].steps[-1]["kind"] == "quantize" and len(run_config(cfg, trials[label]).steps) == 2
    assert candidates.per_layer_channels(cfg.model_copy(update={"channel_ladder": [0.5]}), rows) == []  # one ratio: uniform


def test_split_sizes_default_to_a_fifth_of_a_small_folder_and_too_large_ones_are_one_line(tmp_path):
    from slimlab.errors import ConfigError
    from slimlab.explore.trials import sized

    cfg = ExploreConfig(model="tests.test_explore:tiny_net", data="synthetic", data_options=DATA)
    assert (cfg.val_size, cfg.calibration_size) == (None, None)
    done = sized(cfg)  # 480 training images: 96 held out for validation, a fifth of the other 384 to calibrate on
    assert (done.val_size, done.calibration_size, done.slice_size) == (96, 76, 96)
    assert sized(cfg.model_copy(update={"val_size": 200})).calibration_size == 56
    with pytest.raises(ConfigError, match=r"val_size \(400\) and calibration_size \(100\): synthetic has 480 training images"):
        sized(cfg.model_copy(update={"val_size": 400, "calibration_size": 100}))


def test_the_weight_payload_is_an_objective_where_a_small_models_file_is_mostly_code(explored, tmp_path):
    cfg, store, out, result = explored
    again = explore(cfg.model_copy(update={"minimize": "payload", "time_budget": 0.0}), store, tmp_path / "out", "inline",
                    say=lambda _: None)
    pick, base = again.pick, again.float_score
    assert pick.objective == store.get(pick.run_id).metrics["weight_payload_bytes"] < base.objective
    assert "payload" in format_result(cfg.model_copy(update={"minimize": "payload"}), again)


def test_float_is_the_answer_when_no_compressed_candidate_beats_it_on_the_objective():
    cfg = ExploreConfig(model="resnet20", data="synthetic", val_size=100, calibration_size=50, max_drop=1.0)
    base = _score("float", 0.0, 1.0)
    slower = [_score("int8 x86", 0.2, 1.45), _score("channels 0.5", -3.0, 0.5)]  # the faster one misses the budget
    assert halving.answer(slower, base, cfg) == base
    assert halving.answer(slower + [_score("int8 pt2e", -0.5, 0.8)], base, cfg).label == "int8 pt2e"
    assert halving.answer([_score("channels 0.5", -3.0, 0.5)], base, cfg) is None  # nothing kept it: the closest, as before
    result = search.Explored(["a"], scores={"engines": [base, slower[0]], "rung1": [slower[1]]}, pick=base, float_score=base)
    text = format_result(cfg, result)
    assert text.startswith("Recommended: the float model as it is") and "int8 x86, is 1.45x float's" in text
