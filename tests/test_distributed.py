"""Sharded evaluation and DDP training across processes, through accelerate (gloo on CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refbench.distributed import shard_groups
from tests.conftest import REPO, run_cli

PLUGINS = {"REFBENCH_PLUGINS": "rb_testplugin",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "plugins")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, *args: str, env: dict[str, str] | None = None, popen: bool = False):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "refbench", *args]
    full_env = {**os.environ, **PLUGINS, **(env or {})}
    if popen:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=600)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_tile_the_groups_exactly(world):
    for n in range(0, 23):
        items = [(g, k) for g in range(n) for k in range(1 + g % 3)]  # uneven group sizes
        shards = [shard_groups(items, r, world, key=lambda x: x[0]) for r in range(world)]
        assert [x for shard in shards for x in shard] == items
        sizes = [len({g for g, _ in shard}) for shard in shards]
        assert max(sizes) - min(sizes) <= 1
        for a, b in zip(shards, shards[1:]):
            assert not {g for g, _ in a} & {g for g, _ in b}


@pytest.mark.slow
def test_two_processes_equal_one_exactly(shapes_root: Path, tmp_path: Path):
    args = ["run", "--methods", "noise_blobs,gt_box", "--data-root", str(shapes_root),
            "--limit", "7", "--batch-size", "2", "--no-progress"]
    two = launch(2, *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli(*args, "--out", str(tmp_path / "one"), env=PLUGINS)
    assert one.returncode == 0, one.stderr
    a, b = _results(tmp_path / "two"), _results(tmp_path / "one")
    assert a["processes"] == 2 and b["processes"] == 1
    for method in ("noise_blobs", "gt_box"):
        ra, rb = a["results"][method], b["results"][method]
        assert ra["n"] == rb["n"] == 7 and ra["computed"] == 7
        assert ra["metrics"] == rb["metrics"] and ra.get("sweep") == rb.get("sweep")
    con = sqlite3.connect(tmp_path / "two" / "store.sqlite")
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT run_key || sample_id) FROM samples").fetchone() == (14, 14)
    assert not list((tmp_path / "two" / "shards").glob("*.sqlite"))
    assert two.stdout.count("results:") == 1  # the main process alone reports


@pytest.mark.slow
def test_resume_with_another_number_of_processes(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    base = ["run", "--methods", "noise_blobs", "--data-root", str(shapes_root), "--no-progress",
            "--out", str(out)]
    assert launch(2, *base, "--limit", "5").returncode == 0
    result = launch(3, *base, "--limit", "11")
    assert result.returncode == 0, result.stderr[-2000:]
    res = _results(out)["results"]["noise_blobs"]
    assert (res["reused"], res["computed"], res["n"]) == (5, 6, 11)


@pytest.mark.slow
def test_a_killed_process_loses_at_most_its_batch(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = ["run", "--methods", "noise_blobs", "--data-root", str(shapes_root), "--batch-size", "1",
            "--set", "noise_blobs.delay=0.3", "--no-progress", "--out", str(out)]
    proc = launch(2, *args, popen=True)
    deadline, stored = time.time() + 180, 0
    while time.time() < deadline and stored < 4:
        time.sleep(0.2)
        stored = 0
        for shard in (out / "shards").glob("*.sqlite"):
            try:
                stored += sqlite3.connect(shard, timeout=1).execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not there yet
                pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stored >= 4 and not (out / "results.json").exists()
    resumed = run_cli(*args, env=PLUGINS)
    assert resumed.returncode == 0, resumed.stderr
    res = _results(out)["results"]["noise_blobs"]
    assert res["reused"] >= 4 and res["reused"] + res["computed"] == res["n"]
    clean = run_cli(*[a if a != str(out) else str(tmp_path / "clean") for a in args], env=PLUGINS)
    assert clean.returncode == 0
    assert _results(tmp_path / "clean")["results"]["noise_blobs"]["sweep"] == res["sweep"]


@pytest.mark.slow
def test_ddp_training_keeps_processes_in_sync(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "train"
    result = launch(2, "train", "--method", "lora_vpd", "--data-root", str(shapes_root),
                    "--limit-train", "8", "--batch-size", "2", "--epochs", "1", "--lr", "1e-3",
                    "--limit-val", "2", "--no-progress", "--out", str(out),
                    "--set", "*.backbone=tiny", "--set", "*.image_size=128")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    epoch = summary["history"][-1]
    assert summary["processes"] == 2 and epoch["processes"] == 2
    assert len(epoch["weight_digests"]) == 2 and epoch["weights_in_sync"]
    assert (out / "checkpoints" / "epoch_1.safetensors").exists()


@pytest.mark.slow
def test_grid_with_two_processes_equals_one(shapes_root: Path, tmp_path: Path):
    args = ["grid", "--method", "noise_blobs", "--param", "cells=2,4", "--data-root",
            str(shapes_root), "--split", "testB", "--calibration-split", "val", "--limit", "9",
            "--batch-size", "2", "--resamples", "200", "--no-progress"]
    two = launch(2, *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli(*args, "--out", str(tmp_path / "one"), env=PLUGINS)
    assert one.returncode == 0, one.stderr
    a, b = (json.loads((tmp_path / o / "grid-noise_blobs.json").read_text()) for o in ("two", "one"))
    assert a["processes"] == 2 and b["processes"] == 1
    for x, y in zip(a["grid"]["cells"], b["grid"]["cells"]):
        assert x["computed"] == y["computed"] == x["n"]  # the two processes computed it all
        for key in ("metrics", "sweep", "threshold", "intervals", "run_key"):
            assert x[key] == y[key], key
    assert two.stdout.count("results:") == 1


@pytest.mark.slow
def test_report_with_two_processes_equals_one(shapes_root: Path, tmp_path: Path):
    from tests.conftest import report_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(report_spec(shapes_root, tmp_path / "unused", gallery="gallery:\n  samples: 2\n")
                    + "limit: 9\n")
    sites = {}
    for n in (2, 1):
        store, site = tmp_path / f"store{n}", tmp_path / f"site{n}"
        args = ["report", str(spec), "--store", str(store), "--out", str(site), "--no-progress"]
        result = launch(2, *args) if n == 2 else run_cli(*args, env=PLUGINS)
        assert result.returncode == 0, result.stderr[-2000:]
        sites[n] = site
    tables = sorted(p.name for p in (sites[1] / "tables").glob("*.csv"))
    assert len(tables) >= 5
    for name in tables:
        assert (sites[2] / "tables" / name).read_text() == (sites[1] / "tables" / name).read_text(), name
    gallery = lambda site: sorted(p.name for p in (site / "img").rglob("*.jpg"))  # noqa: E731
    assert gallery(sites[2]) == gallery(sites[1]) and gallery(sites[1])
