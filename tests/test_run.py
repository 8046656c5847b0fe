"""`refbench run` end to end: real numbers, resumes, batch-size independence."""

from __future__ import annotations

import re
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refbench.data.masks import decode
from refbench.data.refer import ReferDataset
from tests.conftest import REPO, run_cli

PLUGINS = {"REFBENCH_PLUGINS": "rb_testplugin",
           "PYTHONPATH": str(REPO / "tests" / "plugins")}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_reference_methods_give_independent_numbers(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("run", "--methods", "full_image,gt_box", "--dataset", "refshapes",
                     "--split", "val", "--data-root", str(shapes_root), "--out", str(out),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "full_image" in result.stdout and "oIoU" in result.stdout
    payload = _results(out)
    samples = ReferDataset(shapes_root, "refshapes").samples("val")
    gt_areas = np.array([decode(s.gt).sum() for s in samples], dtype=float)
    image_areas = np.array([s.height * s.width for s in samples], dtype=float)
    full = payload["results"]["full_image"]["metrics"]
    assert full["oIoU"] == pytest.approx(gt_areas.sum() / image_areas.sum())
    assert full["mIoU"] == pytest.approx(np.mean(gt_areas / image_areas))
    # gt_box against pycocotools: IoU of the tight box with the mask
    ious = []
    for s in samples:
        rle = {"size": s.gt["size"], "counts": s.gt["counts"].encode()}
        box = mask_utils.toBbox(rle)
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[0] + box[2])), int(np.ceil(box[1] + box[3]))
        box_mask = np.zeros((s.height, s.width), dtype=np.uint8, order="F")
        box_mask[y0:y1, x0:x1] = 1
        ious.append(mask_utils.iou([mask_utils.encode(box_mask)], [rle], [0])[0][0])
    assert payload["results"]["gt_box"]["metrics"]["mIoU"] == pytest.approx(np.mean(ious))
    assert payload["results"]["gt_box"]["metrics"]["mIoU"] > 0.5 > full["mIoU"]
    assert payload["dataset"]["n_samples"] == len(samples)
    assert payload["versions"]["refbench"] and "git_hash" in payload and payload["limit"] is None


def test_batch_size_does_not_change_results(shapes_root: Path, tmp_path: Path):
    outs = []
    for bs in (1, 7):
        out = tmp_path / f"bs{bs}"
        result = run_cli("run", "--methods", "noise_blobs", "--data-root", str(shapes_root),
                         "--out", str(out), "--batch-size", str(bs), "--no-progress", env=PLUGINS)
        assert result.returncode == 0, result.stderr
        outs.append(out)
    a, b = (_results(o)["results"]["noise_blobs"] for o in outs)
    assert a["sweep"] == b["sweep"] and a["fingerprint"] == b["fingerprint"]
    rows = [dict(sqlite3.connect(o / "store.sqlite").execute(
        "SELECT sample_id, inter FROM samples").fetchall()) for o in outs]
    assert rows[0] == rows[1] and len(rows[0]) == a["n"]
    # a different seed gives different maps
    other = tmp_path / "seed1"
    run_cli("run", "--methods", "noise_blobs", "--data-root", str(shapes_root), "--out",
            str(other), "--seed", "1", "--no-progress", env=PLUGINS)
    assert _results(other)["results"]["noise_blobs"]["sweep"] != a["sweep"]


def test_limit_is_marked_and_reused(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--out", str(out),
            "--limit", "5", "--no-progress")
    limited = _results(out)
    assert limited["limit"] == 5 and "NOT a real score" in limited["note"]
    assert limited["results"]["gt_box"]["n"] == 5
    run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--out", str(out),
            "--no-progress")
    full = _results(out)["results"]["gt_box"]
    assert full["reused"] == 5 and full["computed"] == full["n"] - 5


@pytest.mark.slow
def test_sigkill_midway_then_resume_matches_uninterrupted(shapes_root: Path, tmp_path: Path):
    args = ["run", "--methods", "noise_blobs", "--data-root", str(shapes_root), "--batch-size", "2",
            "--set", "noise_blobs.delay=0.05", "--no-progress"]
    env = {**os.environ, **PLUGINS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), PLUGINS["PYTHONPATH"]])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "refbench", *args, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = killed / "store.sqlite"
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline:
        if db.exists():
            try:
                count = sqlite3.connect(db, timeout=5).execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 6:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert count >= 6 and not (killed / "results.json").exists()
    resumed = run_cli(*args, "--out", str(killed), env=PLUGINS)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    assert run_cli(*args, "--out", str(clean), env=PLUGINS).returncode == 0
    a, b = _results(killed)["results"]["noise_blobs"], _results(clean)["results"]["noise_blobs"]
    assert a["reused"] >= 6 and a["computed"] + a["reused"] == a["n"]
    assert a["sweep"] == b["sweep"] and a["metrics"] == b["metrics"]
    total, distinct = sqlite3.connect(killed / "store.sqlite").execute(
        "SELECT COUNT(*), COUNT(DISTINCT sample_id) FROM samples").fetchone()
    assert total == distinct == a["n"]
    assert a["counts"] == {"calls": a["n"]}


def test_two_runs_on_one_store_at_once(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "shared"
    env = {**os.environ, **PLUGINS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), PLUGINS["PYTHONPATH"]])
    procs = [subprocess.Popen([sys.executable, "-m", "refbench", "run", "--methods", method,
                               "--data-root", str(shapes_root), "--out", str(out), "--batch-size", "1",
                               "--no-progress"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for method in ("noise_blobs,gt_box", "gt_box,noise_blobs")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    con = sqlite3.connect(out / "store.sqlite")
    assert con.execute("SELECT COUNT(DISTINCT run_key) FROM runs").fetchone()[0] == 2
    per_run = con.execute("SELECT COUNT(*) FROM samples GROUP BY run_key").fetchall()
    n = _results(out)["dataset"]["n_samples"]
    assert [c for (c,) in per_run] == [n, n]


def test_semantic_run_scores_confusion(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "sem"
    result = run_cli("run", "--methods", "full_image,gt_box", "--dataset", "refshapes-semantic",
                     "--data-root", str(shapes_root), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    res = _results(out)["results"]
    # full_image on every class: each pixel goes to the first class (argmax ties), so the
    # background is never predicted: its IoU is 0 and the mean sits well below gt_box's.
    assert 0 < res["full_image"]["semantic"]["mIoU"] < res["gt_box"]["semantic"]["mIoU"] < 1
    assert res["gt_box"]["semantic"]["classes"] == 4  # background + circle, square, triangle


def test_results_break_down_by_kind_consistently(shapes_root, tmp_path):
    import json

    result = run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root),
                     "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    gt_box = json.loads((tmp_path / "results.json").read_text())["results"]["gt_box"]
    groups = gt_box["breakdown"]["kind"]
    assert set(groups) <= {"attribute", "plain", "relation"} and len(groups) >= 2
    assert sum(g["n"] for g in groups.values()) == gt_box["n"]
    weighted = sum(g["n"] * g["mIoU"] for g in groups.values()) / gt_box["n"]
    assert abs(weighted - gt_box["metrics"]["mIoU"]) < 1e-9
    # the console shows the same breakdown, in percent, in the one table printer's format
    table = result.stdout.split("Breakdown by kind: refshapes val\n", 1)[1].splitlines()
    line = next(line for line in table if line.startswith("gt_box"))
    figures = re.findall(r"(-?\d+\.\d\d)\*? \[", line)  # each figure is followed by its interval
    assert figures[0::2] == [f"{100 * groups[k]['mIoU']:.2f}" for k in sorted(groups)]
    low, high = groups["attribute"]["mIoU_low"], groups["attribute"]["mIoU_high"]
    assert low <= groups["attribute"]["mIoU"] <= high and low < high
