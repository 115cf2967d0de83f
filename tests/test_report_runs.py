"""The report of some runs by id (what `slimlab run --report DIR` writes): one real run, its page, tables and curves."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import tiny_config
from slimlab.config import build_config
from slimlab.errors import ConfigError
from slimlab.report import runs_study, write_runs_report
from slimlab.store import Store

pytest.importorskip("plotly", reason="the report extra is not installed: pip install -e '.[report]'")
pytest.importorskip("matplotlib", reason="the report extra is not installed: pip install -e '.[report]'")


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> tuple[Path, str]:
    from slimlab.run import run

    store = Store(tmp_path_factory.mktemp("runs") / "store")
    raw = tiny_config(**{"measure.batch_sizes": [1]})
    raw["name"] = "demo"
    record = run(build_config(raw), store, progress=False)
    assert record.status == "done"
    return store.root, record.id


def test_report_of_one_run_by_prefix(one_run, tmp_path):
    root, run_id = one_run
    page = write_runs_report(root, [run_id[:6]], tmp_path / "report")
    assert page == tmp_path / "report" / "index.html"
    text = page.read_text()
    assert f"demo ({run_id[:8]})" in text and "<script>" in text
    rows = list(csv.reader((tmp_path / "report" / "comparison.csv").open()))
    assert rows[0] == ["", "demo"] and rows[1] == ["Runs", "1 done"]
    assert next(r for r in rows if r[0] == "Top-1 accuracy (%)")[1]
    for png in ("curves_val_top1.png", "curves_val_loss.png", "pareto_size.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_study_keeps_the_order_given_and_refuses_unknown_ids(one_run):
    root, run_id = one_run
    study = runs_study(root, [run_id, run_id[:4]])
    assert [r.id for r in study.runs] == [run_id]  # a run named twice is reported once
    with pytest.raises(ConfigError, match="no run with id starting 'zzzz'"):
        runs_study(root, ["zzzz"])
