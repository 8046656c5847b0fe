"""Grids: a cell is an ordinary run, cells resume and reuse, work is shared batch-major,
thresholds are calibrated on another split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refbench.candidates import candidate
from refbench.config import Override
from refbench.core import Settings, compute, plan_split, run_evaluation
from refbench.data.source import DataSource, open_dataset
from refbench.grid import GridRun, GridSpec, check_grid, expand, params_from
from refbench.plugins import PluginHost
from refbench.results.calibration import Calibration
from refbench.results.stats import StatsOptions
from refbench.store import Store
from tests.conftest import REPO, assert_user_error, report_spec, run_cli

PLUGIN_PATH = str(REPO / "tests" / "plugins")
PLUGINS = {"REFBENCH_PLUGINS": "rb_testplugin", "PYTHONPATH": PLUGIN_PATH}


def _grid(root: Path, out: Path, *extra: str):
    return run_cli("grid", "--data-root", str(root), "--out", str(out), "--no-progress",
                   "--resamples", "200", *extra, env=PLUGINS)


def _cells(out: Path, method: str) -> list[dict]:
    return json.loads((out / f"grid-{method}.json").read_text())["grid"]["cells"]


def test_expand_is_the_cartesian_product_in_order():
    grid = GridSpec("m", params_from(["a=1,2", "b=x,y,z"]))
    assert expand(grid) == [{"a": a, "b": b} for a in "12" for b in "xyz"]


def test_cell_is_the_run_with_that_config_and_is_reused(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    single = run_cli("run", "--methods", "noise_blobs", "--set", "noise_blobs.cells=4",
                     "--data-root", str(shapes_root), "--out", str(out), "--no-progress", env=PLUGINS)
    assert single.returncode == 0, single.stderr
    reference = json.loads((out / "results.json").read_text())["results"]["noise_blobs"]
    result = _grid(shapes_root, out, "--method", "noise_blobs", "--param", "cells=2,4")
    assert result.returncode == 0, result.stderr
    cells = _cells(out, "noise_blobs")
    assert [c["values"] for c in cells] == [{"cells": "2"}, {"cells": "4"}]
    four = cells[1]
    assert four["fingerprint"] == reference["fingerprint"] and four["computed"] == 0
    assert four["metrics"] == reference["metrics"]  # fixed threshold 0.5, as `run` reports
    assert cells[0]["computed"] == cells[0]["n"] and cells[0]["fingerprint"] != four["fingerprint"]
    # the interval is around the estimate
    ci = four["intervals"]["mIoU"]
    assert ci["low"] <= four["metrics"]["mIoU"] == ci["estimate"] <= ci["high"]
    assert "cells" in result.stdout and "Threshold" in result.stdout


def test_grid_resumes_cell_by_cell(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    # an interrupted grid: every cell holds only its first samples
    assert _grid(shapes_root, out, "--method", "noise_blobs", "--param", "cells=2,3",
                 "--limit", "5").returncode == 0
    result = _grid(shapes_root, out, "--method", "noise_blobs", "--param", "cells=2,3,5")
    assert result.returncode == 0, result.stderr
    cells = {c["values"]["cells"]: c for c in _cells(out, "noise_blobs")}
    for value in ("2", "3"):
        assert cells[value]["reused"] >= 5
        assert cells[value]["reused"] + cells[value]["computed"] == cells[value]["n"]
    assert cells["5"]["reused"] == 0 and cells["5"]["computed"] == cells["5"]["n"]
    again = _grid(shapes_root, out, "--method", "noise_blobs", "--param", "cells=2,3,5")
    assert all(c["computed"] == 0 for c in _cells(out, "noise_blobs")), again.stderr


@pytest.fixture
def shared_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(PLUGIN_PATH)
    monkeypatch.setenv("REFBENCH_PLUGINS", "rb_testplugin")
    import rb_testplugin

    rb_testplugin.clear_shared()
    yield rb_testplugin
    rb_testplugin.clear_shared()


def _plan(host: PluginHost, root: Path, split: str, settings: Settings):
    source = DataSource("refshapes", root)
    return plan_split(open_dataset(host, source), root, split, settings)


def test_batch_major_shares_the_cached_work(shapes_root: Path, tmp_path: Path, shared_plugin):
    host = PluginHost()
    settings = Settings(batch_size=4)
    plan = _plan(host, shapes_root, "val", settings)
    assert len(plan.samples) > shared_plugin.SHARED_CACHE_SIZE  # the cache cannot hold a split
    grid = GridSpec("shared_blobs", {"alpha": ["0.2", "0.6", "1.0"]})
    cells = check_grid(host, grid)

    with Store(tmp_path / "together.sqlite") as store:
        together = compute(host, cells, [plan], store, settings, together=True)
    computed_together = shared_plugin.SHARED_CALLS["computed"]
    shared_plugin.clear_shared()
    with Store(tmp_path / "apart.sqlite") as store:
        apart = compute(host, cells, [plan], store, settings, together=False)
    computed_apart = shared_plugin.SHARED_CALLS["computed"]

    images = len(plan.samples)  # one entry per (image, seed): seeds are per sample
    assert computed_together == images
    assert computed_apart == 3 * images
    # same rows either way: batch-major order changes nothing but the cost
    with Store(tmp_path / "together.sqlite") as a, Store(tmp_path / "apart.sqlite") as b:
        for (x,), (y,) in zip(together, apart):
            assert x.record.run_key == y.record.run_key
            rows_a = {r.sample_id: r.inter.tolist() for r in a.rows(x.record.run_key)}
            rows_b = {r.sample_id: r.inter.tolist() for r in b.rows(y.record.run_key)}
            assert rows_a == rows_b and len(rows_a) == images


def test_calibrated_threshold_is_the_argmax_on_the_calibration_split(
        shapes_root: Path, tmp_path: Path, shared_plugin):
    host = PluginHost()
    settings = Settings()
    grid = GridSpec("shared_blobs", {"alpha": ["0.3", "0.9"]})
    with Store(tmp_path / "s.sqlite") as store:
        results = run_evaluation(host, check_grid(host, grid), DataSource("refshapes", shapes_root),
                                 ["testB"], store=store, settings=settings,
                                 calibration=Calibration("val"), statistics=StatsOptions(200),
                                 together=True)
        result = GridRun(grid, results, expand(grid))
        val = _plan(host, shapes_root, "val", settings)
        reported = results.samples["testB"]
        for values, scored in result.cells:
            # independently: run the cell on val, compute mIoU per threshold by hand, take argmax
            overrides = [Override("shared_blobs", k, v) for k, v in values.items()]
            (runs,) = compute(host, [candidate(host, "shared_blobs", overrides)], [val], store, settings)
            rows = {r.sample_id: r for r in store.rows(runs[0].record.run_key)}
            ious = np.array([[_iou(rows[s.sample_id], k) for k in range(len(val.thresholds))]
                             for s in val.samples])
            best = val.thresholds[int(np.argmax(ious.mean(0)))]
            assert scored.threshold.value == best
            assert scored.threshold.calibration_split == "val"
            assert not scored.threshold.tuned_on_reported
            # and it is applied unchanged on the reported split
            k = val.thresholds.index(best)
            test_rows = {r.sample_id: r for r in store.rows(scored.run_key)}
            expected = np.mean([_iou(test_rows[s.sample_id], k) for s in reported])
            assert scored.metrics["mIoU"] == pytest.approx(expected)


def _iou(row, k: int) -> float:
    union = row.pred_area[k] + row.gt_area - row.inter[k]
    return 1.0 if union == 0 else row.inter[k] / union


def test_tuning_on_the_reported_split_is_refused_then_marked(shapes_root: Path, tmp_path: Path):
    args = ["--method", "shared_blobs", "--param", "alpha=0.5,1", "--calibration-split", "val"]
    assert_user_error(_grid(shapes_root, tmp_path, *args), "calibration split 'val'",
                      "tune_on_reported_split")
    forced = _grid(shapes_root, tmp_path, *args, "--tune-on-reported-split")
    assert forced.returncode == 0, forced.stderr
    assert "†" in forced.stdout and "tuned on the reported split" in forced.stdout
    cells = _cells(tmp_path, "shared_blobs")
    assert all(c["calibration"]["tuned_on_reported_split"] for c in cells)
    assert all(c["threshold_label"].endswith("†") for c in cells)


def test_grid_mistakes_are_user_errors(shapes_root: Path, tmp_path: Path):
    assert_user_error(_grid(shapes_root, tmp_path, "--method", "gt_box", "--param", "grw=0,1"),
                      "did you mean 'grow'")
    assert_user_error(_grid(shapes_root, tmp_path, "--method", "gt_box", "--param", "grow=0,0.0"),
                      "same config")
    assert_user_error(_grid(shapes_root, tmp_path, "--method", "gt_box", "--param", "grow"),
                      "NAME=V1,V2")
    assert_user_error(_grid(shapes_root, tmp_path, "--method", "gt_box", "--param", "grow=0,0.1",
                            "--set", "gt_box.grow=0.2"), "both varied")
    assert_user_error(_grid(shapes_root, tmp_path, "--method", "gt_box", "--param", "grow=0,9"),
                      "grow must be in")


def test_grids_from_a_spec(shapes_root: Path, tmp_path: Path):
    spec = tmp_path / "grids.yaml"
    spec.write_text(report_spec(shapes_root, tmp_path / "store", gallery="",
                                grids="grids:\n  - method: gt_box\n    params: {grow: [0.0, 0.3]}\n"
                                      "    split: testB\n"))
    result = run_cli("grid", str(spec), "--no-progress", env=PLUGINS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gt_box: grow on refshapes testB"
    rows = [l.split() for l in lines if l.startswith(("0.0 ", "0.3 "))]
    assert [r[:2] for r in rows] == [["0.0", "mask"], ["0.3", "mask"]]
    # mIoU (after oIoU and its interval): looser is worse, and the better one is marked best
    assert rows[0][5].endswith("*") and not rows[1][5].endswith("*")
    assert float(rows[0][5].rstrip("*")) > float(rows[1][5])
    assert (tmp_path / "store" / "store.sqlite").is_file()
    assert_user_error(run_cli("grid", str(spec), "--method", "gt_box", env=PLUGINS), "not both")
