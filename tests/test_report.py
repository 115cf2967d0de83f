"""The report: Pareto sets, spread over seeds, failed and pending runs shown, recommend's rules, the files it writes."""
from __future__ import annotations

import atexit
import csv
import functools
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import JPEG_ARCHIVE, tiny_config
from slimlab.config import build_config
from slimlab.report import format_recommendation, list_studies, load_study, recommend, write_experiment, write_report
from slimlab.report.figures import non_dominated
from slimlab.report.tables import comparison_table
from slimlab.store import Store

pytest.importorskip("plotly", reason="the report extra is not installed: pip install -e '.[report]'")
pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install -e '.[report]'")

PRUNE = {"kind": "prune", "method": "l1", "scope": "global", "after_round": "finetune"}
STRUCTURED = {"kind": "prune", "method": "ln_structured", "after_round": "finetune"}
VARIANTS = {"float": [], "static": [{"kind": "quantize", "method": "static", "observer": "minmax", "calibration_batches": 2}],
            "l1-50": [{**PRUNE, "amount": 0.5}], "l1-80": [{**PRUNE, "amount": 0.8}],
            "ln-25": [{**STRUCTURED, "amount": 0.25}], "ln-50": [{**STRUCTURED, "amount": 0.5}]}


@functools.lru_cache(maxsize=None)
def real_study_store() -> Path:
    """A small real study, built once per test process (about 20 s): ResNet-20 on 300 CIFAR-10 images at 16x16 (the
    JPEG copy; synthetic data where it is absent), float, static int8, L1 and structured pruning at two ratios, two seeds."""
    from slimlab.run import run

    root = Path(tempfile.mkdtemp(prefix="slimlab-report-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = ({"name": "cifar10_jpeg", "root": [str(JPEG_ARCHIVE.parent)], "train_subset": 300, "test_subset": 200,
             "val_size": 100, "options": {"image_size": 16}} if JPEG_ARCHIVE.exists() else tiny_config()["data"])
    store = Store(root / "store")
    for seed in (0, 1):
        for variant, steps in VARIANTS.items():
            raw = tiny_config(steps=steps, data=data, seed=seed, **{"train.batch_size": 50})
            raw["name"] = f"real:{variant}/seed={seed}"
            assert run(build_config(raw), store, progress=False).status == "done"
    return store.root


# --- a hand-made store: exact numbers -------------------------------------------------------------------------


def _add(store: Store, run_id: str, variant: str, seed: int, metrics: dict | None, notes: dict | None = None,
         steps: list | None = None) -> dict:
    config = {"name": f"hand:{variant}/seed={seed}", "seed": seed, "data": {"name": "synthetic"}, "model": {"name": "resnet20"},
              "measure": {"batch_sizes": [1]}, "steps": steps or []}
    store.start(run_id, config, config["name"])
    if metrics is None:
        store.fail(run_id, "non-finite loss at epoch 1, batch 3")
    else:
        store.finish(run_id, metrics, notes or {}, {"device": "cpu"}, [{"epoch": 1, "val_top1": metrics["top1"], "val_loss": 1.0}])
    return {"id": run_id, "label": f"{variant}/seed={seed}", "variant": variant, "point": {"seed": seed}, "training": None}


def _m(top1: float, float_top1: float | None, size: float, latency: float | None = None) -> dict:
    metrics = {"top1": top1, "model_size_bytes": size * 1e6, "macs": 4e7}
    metrics.update({"float_top1": float_top1} if float_top1 is not None else {})
    metrics.update({"latency_b1_median_ms": latency} if latency is not None else {})
    return metrics


QUANT = [{"kind": "quantize", "method": "static"}]


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory) -> Path:
    """float 70/72 (2 seeds); int8 within budget; pruned over budget on one seed; a pending latency, a noisy one,
    a failed run and one the store never saw, all listed in a study manifest."""
    store = Store(tmp_path_factory.mktemp("hand") / "store")
    runs = [_add(store, "f0", "float", 0, _m(70.0, None, 1.0, 3.0)), _add(store, "f1", "float", 1, _m(72.0, None, 1.0, 3.2)),
            _add(store, "q0", "int8", 0, _m(69.5, 70.0, 0.3, 2.0), steps=QUANT),
            _add(store, "q1", "int8", 1, _m(71.7, 72.0, 0.3, 2.2), steps=QUANT),
            _add(store, "p0", "pruned", 0, _m(69.9, 70.0, 0.2, 1.0), steps=[PRUNE]),
            _add(store, "p1", "pruned", 1, _m(68.0, 72.0, 0.2, 1.1), steps=[PRUNE]),
            _add(store, "w0", "waiting", 0, _m(71.0, 70.0, 0.25), {"latency_status": "pending"}, steps=QUANT),
            _add(store, "n0", "noisy", 0, _m(60.0, 70.0, 0.9, 0.5), {"latency_noisy": "p90 is 3x the median"}, steps=QUANT),
            _add(store, "x0", "broken", 0, None, steps=QUANT),
            {"id": "never-run", "label": "later/seed=0", "variant": "later", "point": {"seed": 0}, "training": None}]
    manifest = {"name": "hand", "source": "hand.yaml", "updated": 0.0, "axes": ["seed"], "runs": runs}
    (store.root / "studies").mkdir()
    (store.root / "studies" / "hand.json").write_text(json.dumps(manifest))
    return store.root


def test_pareto_set_is_exactly_the_non_dominated_points():
    # (size, accuracy): a tie on the front, a tie behind it, a missing metric, a point dominated on one axis only
    points = [(1.0, 90.0), (2.0, 95.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (None, 99.0), (4.0, 95.0), (1.0, float("nan"))]
    assert non_dominated(points, maximize=(False, True)) == [0, 1, 2, 4]
    assert non_dominated([(5.0, 1.0)], maximize=(False, True)) == [0]
    assert non_dominated([], maximize=(False, True)) == []
    assert non_dominated([(1.0, 2.0, 3.0), (1.0, 2.0, 4.0)], maximize=(False, False, True)) == [1]


def test_comparison_table_gives_mean_and_std_over_seeds(hand_store):
    table = comparison_table(load_study(hand_store, "hand"))
    rows = {row[0]: dict(zip(table.headers, row)) for row in table.rows}
    assert rows["Top-1 accuracy (%)"]["float"] == "71.00 ± 1.41 (n=2)"  # sample std of 70 and 72
    assert rows["Top-1 change vs float parent (points)"]["int8"] == "-0.4 ± 0.141 (n=2)"
    assert rows["Size on disk (MB)"]["pruned"] == "0.2 ± 0 (n=2)"
    assert rows["Inference device"]["float"] == "cpu"


def test_failed_pending_and_unmeasured_runs_are_shown_not_dropped(hand_store, tmp_path):
    write_report(hand_store, "hand", tmp_path)
    comparison = list(csv.reader(open(tmp_path / "comparison.csv")))
    cells = {row[0]: dict(zip(comparison[0], row)) for row in comparison}
    assert cells["Runs"]["broken"] == "1 failed (error)" and cells["Runs"]["later"] == "1 pending"
    assert cells["Inference time, batch 1, median (ms)"]["waiting"] == "(1 pending)"
    assert cells["Inference time, batch 1, median (ms)"]["noisy"] == "0.5 (all 1 noisy)"
    runs = {row["id"]: row for row in csv.DictReader(open(tmp_path / "runs.csv"))}
    assert len(runs) == 10
    assert runs["x0"]["status"] == "failed" and "non-finite loss" in runs["x0"]["error"]
    assert runs["never-ru"]["status"] == "pending" and runs["w0"]["Latency, batch 1, median (ms)"] == "pending"
    assert "1 failed (error)" in (tmp_path / "comparison.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "Latency pending (not yet measured alone), not plotted: waiting/seed=0" in page
    assert "broken (error)" in page and "later (pending)" in page  # named under the figures they are missing from


def test_pareto_figure_marks_the_front_of_the_study(hand_store):
    from slimlab.report.figures import pareto_chart
    from slimlab.report.metrics import METRICS

    chart = pareto_chart("pareto_size", load_study(hand_store, "hand"), METRICS["size"], "size", [])
    front, dominated = chart.series[0], chart.series[1]
    # size 0.2 @ 68.95, 0.25 @ 71.0, 0.3 @ 70.6 (dominated by 0.25), 0.9 @ 60 and 1.0 @ 71.0 (dominated)
    assert front.labels == ["pruned", "waiting"]
    assert sorted(dominated.hover) == ["float · n=2", "int8 · n=2", "noisy · n=1"]  # how many runs each mean holds
    assert "Top-1 accuracy on synthetic test set (%)" == chart.y_title and "device: cpu" in chart.subtitle


def test_recommend_honours_budget_replicates_and_pending_latency(hand_store):
    study = load_study(hand_store, "hand")
    rec = recommend(study.runs, max_drop=1.0, minimize="latency_b1")
    # pruned is fastest but one seed lost 4 points; noisy lost 10; waiting's latency is pending: int8 wins, float next
    assert rec.best.group == "int8" and rec.runner_up.group == "float"
    assert rec.best.change_low == pytest.approx(-0.4 - 0.1414, abs=1e-3)
    why = dict(rec.rejected)
    assert why["pruned"] == "top-1 change -4.81 points (mean - std)" and why["waiting"] == "latency pending"
    assert why["broken"] == "1 of 1 runs failed (error)" and why["later"] == "pending"
    text = format_recommendation(rec, "hand")
    assert "Recommended: int8 (run q0, 2 replicate(s))" in text and "runner-up: float (n=2)" in text
    # the parent of each replicate, averaged like the pick (it showed seed 0 alone, 70.00, beside a mean over two)
    assert re.search(r"Top-1 accuracy \(%\) +70.60 ± 1.56 +71.00 ± 1.41", text) and "float parent (n=2)" in text
    assert recommend(study.runs, max_drop=0.5, minimize="size").best.group == "waiting"  # 0.25 MB, +1 point
    assert recommend(study.runs, max_drop=5.0, minimize="size").best.group == "pruned"  # -2.05 - 2.76 = -4.81 is within 5


def test_recommend_says_plainly_when_nothing_qualifies(hand_store):
    runs = [r for r in load_study(hand_store, "hand").runs if r.variant in ("pruned", "noisy")]
    rec = recommend(runs, max_drop=1.0, minimize="latency_b1")
    assert rec.best is None
    assert "Nothing qualifies" in format_recommendation(rec)
    with pytest.raises(ValueError, match="unknown metric 'speed'"):
        recommend(runs, minimize="speed")


def test_list_studies_counts_every_run(hand_store):
    assert list_studies(hand_store) == [{"name": "hand", "runs": 10, "done": 8, "failed": 1, "pending": 1}]


# --- the report of a real study -------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|<link\b|@import""", re.I)
FIGURES = ["parallel_coordinates", "accuracy_vs_sparsity", "pareto_size", "pareto_latency_b1_cpu", "pareto_latency_b4_cpu",
           "curves_val_top1", "curves_val_loss", "layer_sparsity", "layer_sqnr"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    references = out / "published.csv"
    references.write_text("label,top1,size_mb,sparsity_pct\npaper A,14.5,0.30,\npaper B,13.0,,90\n")
    return write_report(real_study_store(), None, out, references)


def test_report_page_is_offline_and_holds_every_figure(report):
    from slimlab.report.page import plotly_js

    page = report.read_text()
    assert page.count(plotly_js()) == 1  # inlined once; its own strings name map-tile servers it never calls here
    assert EXTERNAL.search(page.replace(plotly_js(), "")) is None  # nothing else for the browser to fetch
    assert page.count("Plotly.newPlot(") == len(FIGURES)
    for key in FIGURES:
        assert f'id="{key}"' in page and (report.parent / f"{key}.png").is_file()
    assert "Pareto front: accuracy vs training energy" in page and "No run in the store has both a top-1 accuracy and a Training energy (J)." in page
    assert page.count("reference (your CSV)") == 2  # on the size front and on accuracy vs sparsity


def test_report_figures_are_real_pngs_and_tables_csv_and_markdown(report):
    from PIL import Image

    for key in FIGURES:
        with Image.open(report.parent / f"{key}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 800 and len(image.convert("L").getcolors(1 << 16)) > 10
    rows = list(csv.DictReader(open(report.parent / "runs.csv")))
    assert len(rows) == 12 and {r["status"] for r in rows} == {"done"} and {r["device"] for r in rows} == {"cpu"}
    assert (report.parent / "comparison.md").read_text().startswith("## Comparison: real\n\n|  | float | static | l1-50 |")


def test_recommended_config_is_a_reusable_experiment_file(tmp_path):
    study = load_study(real_study_store(), "real")
    rec = recommend(study.runs, max_drop=100.0, minimize="size")
    path = write_experiment(rec.best, tmp_path / "best.yaml")
    from slimlab.config import config_hash, load_config

    assert config_hash(load_config(path)) == rec.best.runs[0].id  # the file is the run: running it finds it done


def test_a_missing_store_or_study_is_a_clear_error(tmp_path, hand_store):
    from slimlab.errors import ConfigError

    with pytest.raises(ConfigError, match="no slimlab store at"):
        write_report(tmp_path / "nowhere", None, tmp_path / "out")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError, match=r"no study 'nope' .* \(studies there: hand\)"):
        load_study(hand_store, "nope")


def test_recommend_prints_the_experiment_and_writes_only_where_told(hand_store, tmp_path, monkeypatch, capsys):
    from slimlab.cli import main
    from slimlab.config import load_config

    monkeypatch.chdir(tmp_path)
    assert main(["recommend", "hand", "--store", str(hand_store), "--minimize", "size"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # nothing written unasked (it wrote ./recommended.yaml)
    assert "Ranked by size = model_size_bytes, the deployable file on disk, code and container included" in out
    printed = out.split("`slimlab run FILE`):\n", 1)[1]
    assert printed.startswith("# Recommended by slimlab recommend: waiting (run w0)")  # 0.25 MB within 1 point
    assert main(["recommend", "hand", "--store", str(hand_store), "--minimize", "size", "--out", "best.yaml"]) == 0
    assert "experiment file: best.yaml" in capsys.readouterr().out and (tmp_path / "best.yaml").read_text() == printed.replace(
        "slimlab run FILE", "slimlab run best.yaml")
    assert load_config(tmp_path / "best.yaml").model.name == "resnet20"
    assert main(["recommend", "hand", "--store", str(hand_store), "--minimize", "payload"]) == 1  # no run records one
    assert "Ranked by payload = weight_payload_bytes" in capsys.readouterr().out


def test_recommend_ranks_by_the_file_or_by_its_weights_as_asked(tmp_path):
    """The issue's case: a tiny CNN whose int8 TorchScript file outweighs the float one while its weights are a quarter."""
    store = Store(tmp_path / "store")
    runs = [_add(store, "f0", "float", 0, {"top1": 97.0, "model_size_bytes": 69_679, "weight_payload_bytes": 57_600, "macs": 1e6}),
            _add(store, "q0", "int8", 0, {"top1": 96.8, "float_top1": 97.0, "model_size_bytes": 71_139,
                                          "weight_payload_bytes": 16_036, "macs": 1e6}, steps=QUANT)]
    (store.root / "studies").mkdir()
    (store.root / "studies" / "tiny.json").write_text(json.dumps({"name": "tiny", "source": "tiny.yaml", "updated": 0.0,
                                                                  "axes": [], "runs": runs}))
    study = load_study(store.root, "tiny")
    assert recommend(study.runs, max_drop=1.0, minimize="size").best.group == "float"
    by_payload = recommend(study.runs, max_drop=1.0, minimize="payload")
    assert by_payload.best.group == "int8" and by_payload.best.value == pytest.approx(0.016036)  # MB
    assert "Weight payload, tensors as stored (MB)" in format_recommendation(by_payload, "tiny")


def test_a_latency_timed_under_load_is_left_out_of_the_mean_and_counted():
    """Issue 26: 7.44 ms timed on a busy machine beside 0.723 ms timed alone was shown as "4.08 ± 4.75"."""
    from slimlab.report.study import StudyRun
    from slimlab.report.tables import latency_cell
    from slimlab.store import RunRecord

    def run(latency, noisy):
        record = RunRecord(id="r", name="s:v/seed=0", status="done", config={}, metrics={"latency_b16_median_ms": latency},
                           notes={"latency_noisy": "p90 is 3x the median"} if noisy else {}, env={"device": "cpu"},
                           error=None, created=0.0, updated=0.0)
        return StudyRun("r", "v/seed=0", "v", {}, record)

    assert latency_cell([run(0.723, False), run(0.731, False), run(7.44, True)], 16) == "0.727 ± 0.00566 (n=2) (1 noisy left out)"
    assert latency_cell([run(7.44, True)], 16) == "7.44 (all 1 noisy)"
    # the figure's point and recommend's ranking average the same runs as the table (they averaged all three, 4.08)
    from slimlab.report.figures import _points
    from slimlab.report.metrics import latency_metric
    from slimlab.report.recommend import _candidate

    replicates = [run(0.723, False), run(0.731, False), run(7.44, True)]
    for r in replicates:
        r.record.metrics["top1"] = 90.0
    points, _ = _points({"int8": replicates}, latency_metric(16), lambda r: True)
    assert points[0].x == pytest.approx(0.727) and points[0].flag == ""
    assert _candidate("int8", replicates, latency_metric(16)).value == pytest.approx(0.727)


def test_recommend_never_ranks_a_gpu_latency_against_a_cpu_one(tmp_path):
    """Issue 26: a configuration timed on a GPU is not faster than one timed on a CPU; it is named apart, with why."""
    store, runs = Store(tmp_path / "store"), []
    for run_id, variant, device, latency, steps in [("f", "float", "cpu", 3.0, []), ("q", "int8", "cpu", 2.0, QUANT),
                                                    ("p", "pruned", "cpu", 2.5, [PRUNE]), ("g", "gpu", "cuda", 0.1, QUANT)]:
        config = {"name": f"dev:{variant}/seed=0", "seed": 0, "data": {"name": "synthetic"}, "model": {"name": "resnet20"}, "steps": steps}
        store.start(run_id, config, config["name"])
        store.finish(run_id, {**_m(70.0, 70.0 if steps else None, 1.0, latency), "energy_b1_mj": latency * 10}, {}, {"device": device}, [])
        runs.append({"id": run_id, "label": f"{variant}/seed=0", "variant": variant, "point": {"seed": 0}, "training": None})
    (store.root / "studies").mkdir()
    (store.root / "studies" / "dev.json").write_text(json.dumps({"name": "dev", "source": "d.yaml", "updated": 0.0, "axes": ["seed"], "runs": runs}))
    rec = recommend(load_study(store.root, "dev").runs, max_drop=1.0, minimize="latency_b1")
    assert rec.best.group == "int8" and [c.group for c in rec.ranked] == ["int8", "pruned", "float"]
    assert dict(rec.rejected)["gpu"] == "latency measured on cuda; the ranking compares figures measured on cpu"
    assert recommend(load_study(store.root, "dev").runs, max_drop=1.0, minimize="size").best is not None  # sizes compare anywhere
    energy = recommend(load_study(store.root, "dev").runs, max_drop=1.0, minimize="energy_b1")  # inference energy: per device too
    assert energy.objective.label == "Inference energy, batch 1 (mJ)" and energy.best.value == pytest.approx(20.0)
    assert dict(energy.rejected)["gpu"] == "energy measured on cuda; the ranking compares figures measured on cpu"


def test_every_aggregate_says_how_many_runs_it_averages_and_how_many_failed(tmp_path):
    """Issue 26: a configuration of 3 seeds, one failed, was drawn and tabled as the mean of the 2 left, unsaid."""
    from slimlab.report import figures
    from slimlab.report.metrics import METRICS
    from slimlab.report.tables import seed_table

    def pruned(top1, float_top1):
        return {**_m(top1, float_top1, 0.2, 1.0), "prune_sparsity": 0.5}
    store = Store(tmp_path / "store")
    runs = [_add(store, "f0", "float", 0, _m(70.0, None, 1.0, 3.0)), _add(store, "f1", "float", 1, _m(72.0, None, 1.0, 3.2)),
            _add(store, "q0", "int8", 0, _m(69.8, 70.0, 0.3, 2.0), steps=QUANT),
            _add(store, "q1", "int8", 1, _m(71.8, 72.0, 0.3, 2.2), steps=QUANT), _add(store, "q2", "int8", 2, None, steps=QUANT),
            _add(store, "p0", "pruned", 0, pruned(69.0, 70.0), steps=[PRUNE]),
            _add(store, "p1", "pruned", 1, pruned(71.0, 72.0), steps=[PRUNE]), _add(store, "p2", "pruned", 2, None, steps=[PRUNE])]
    (store.root / "studies").mkdir()
    (store.root / "studies" / "n.json").write_text(json.dumps({"name": "n", "source": "n.yaml", "updated": 0.0, "axes": ["seed"], "runs": runs}))
    study = load_study(store.root, "n")

    size = figures.pareto_chart("pareto_size", study, METRICS["size"], "size", [])
    hover = [h for s in size.series for h in s.hover]
    assert "int8 · n=2, 1 failed" in hover and "pruned · n=2, 1 failed" in hover and "float · n=2" in hover
    assert "int8 (n=2, 1 failed)" in size.series[0].labels  # on the front, the label says it too (the PNG has no hover)
    assert "Fewer runs than planned in the mean: int8 (n=2 of 3, 1 failed); pruned (n=2 of 3, 1 failed)." in size.note
    latency = figures.latency_charts(study, [])[0]
    assert "int8 · n=2, 1 failed" in [h for s in latency.series for h in s.hover] and "int8 (n=2 of 3, 1 failed)" in latency.note
    sparsity = figures.sparsity_chart(study, [])
    assert sparsity.series[0].hover == ["pruned · n=2, 1 failed"] and "pruned (n=2 of 3, 1 failed)" in sparsity.note
    assert "2 run(s) not done (2 failed) are not drawn" in figures.parallel_figure(study).note

    rows = {row[0]: dict(zip(comparison_table(study).headers, row)) for row in comparison_table(study).rows}
    assert rows["Top-1 accuracy (%)"]["int8"] == "70.80 ± 1.41 (n=2, 1 failed)"
    assert rows["Inference time, batch 1, median (ms)"]["int8"] == "2.10 ± 0.141 (n=2, 1 failed)"
    assert rows["Top-1 accuracy (%)"]["float"] == "71.00 ± 1.41 (n=2)"
    assert seed_table(study).splitlines()[-1] == "Not shown: 2 failed (int8/seed=2: error, pruned/seed=2: error)"

    text = format_recommendation(recommend(study.runs, max_drop=1.0, minimize="size"), "n")
    assert "pruned (2 of 3 runs failed" not in text and "int8 (1 of 3 runs failed (error))" in text
    alone = format_recommendation(recommend([r for r in study.runs if r.variant == "float"], max_drop=1.0), "n")
    assert "recommended (n=2)" in alone and "float parent (" not in alone  # the float configuration is its own parent
