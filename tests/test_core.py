"""The evaluation core: everything checked before anything opens, writers that split the work,
results files that keep every method, one metric registry, an import graph without cycles."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from refbench.store import Store
from tests.conftest import REPO, assert_user_error, report_spec, run_cli

PLUGIN_PATH = os.pathsep.join([str(REPO), str(REPO / "tests" / "plugins")])
PLUGINS = {"REFBENCH_PLUGINS": "rb_testplugin", "PYTHONPATH": PLUGIN_PATH}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# -- item 4: checked before any data set is opened ---------------------------------------------
@pytest.mark.parametrize("extra, fragment", [
    (["--methods", "gt_box", "--set", "gt_box.grow=wide"], "expects a finite number"),
    (["--methods", "gt_box", "--set", "gt_box.grw=0.1"], "did you mean 'grow'"),
    (["--methods", "gt_box", "--set", "gt_box.grow=3"], "grow must be in"),
    (["--methods", "gt_box,noise_blobs", "--set", "noise_blobs.cells=many"], "expects an integer"),
    (["--methods", "gt_bx"], "did you mean 'gt_box'"),
    (["--methods", "gt_box", "--sweep-step", "1.5"], "sweep step must be between 0 and 1"),
    (["--methods", "gt_box", "--threshold", "0.33"], "not on the sweep"),
])
def test_a_bad_value_fails_before_any_reader_is_opened(shapes_root: Path, tmp_path: Path,
                                                       extra: list[str], fragment: str):
    log = tmp_path / "spy.log"
    env = {**PLUGINS, "RB_SPY_LOG": str(log)}
    args = ["--dataset", "spy_shapes", "--data-root", str(shapes_root), "--out", str(tmp_path / "o")]
    good = run_cli("run", "--methods", "gt_box", *args, "--limit", "2", "--no-progress", env=env)
    assert good.returncode == 0 and log.read_text().count("opened") == 1  # the spy does see opens
    log.unlink()
    assert_user_error(run_cli("run", *extra, *args, env=env), fragment)
    assert not log.exists(), "the reader was opened before the mistake was found"


def test_a_bad_spec_or_grid_value_fails_before_any_reader_is_opened(shapes_root: Path,
                                                                    tmp_path: Path):
    log = tmp_path / "spy.log"
    env = {**PLUGINS, "RB_SPY_LOG": str(log)}
    spec = tmp_path / "spec.yaml"
    spec.write_text(report_spec(shapes_root, tmp_path / "store", gallery="", grids=(
        "grids:\n  - method: gt_box\n    params: {grow: [0.0, huge]}\n")).replace(
        "name: refshapes", "name: spy_shapes"))
    assert_user_error(run_cli("report", str(spec), "--out", str(tmp_path / "site"), env=env),
                      "gt_box.grow='huge'")
    spec.write_text(report_spec(shapes_root, tmp_path / "store", gallery="", grids="").replace(
        "name: refshapes", "name: spy_shapes\n    options: {splitby: unc}"))
    assert_user_error(run_cli("report", str(spec), "--out", str(tmp_path / "site"), env=env),
                      "unknown option of dataset 'spy_shapes' 'splitby'", "did you mean 'split_by'")
    grid = run_cli("grid", "--method", "noise_blobs", "--param", "cells=2,x", "--dataset",
                   "spy_shapes", "--data-root", str(shapes_root), "--out", str(tmp_path / "g"), env=env)
    assert_user_error(grid, "expects an integer")
    assert not log.exists()


# -- item 6: writers on one store split the work -------------------------------------------------
def _launch_run(root: Path, out: Path, log: Path, delay: float = 0.05) -> subprocess.Popen:
    env = {**os.environ, **PLUGINS, "RB_COMPUTE_LOG": str(log)}
    return subprocess.Popen(
        [sys.executable, "-m", "refbench", "run", "--methods", "logged_blobs", "--data-root",
         str(root), "--out", str(out), "--batch-size", "2", "--set", f"logged_blobs.delay={delay}",
         "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_concurrent_identical_runs_compute_each_sample_once(shapes_root: Path, tmp_path: Path):
    log = tmp_path / "computed.log"
    procs = [_launch_run(shapes_root, tmp_path / "shared", log) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    computed = Counter(line.split()[1] for line in log.read_text().splitlines())
    by_process = Counter(line.split()[0] for line in log.read_text().splitlines())
    n = _results(tmp_path / "shared")["results"]["logged_blobs"]["n"]
    assert len(computed) == n and set(computed.values()) == {1}  # each sample once, in total
    assert len(by_process) == 2 and min(by_process.values()) > 0  # and both did some of it
    here = sum(int(re.search(r"^logged_blobs: (\d+) computed here", out, re.M).group(1))
               for out, _ in outputs)
    assert here == n  # each process reports what it computed itself
    alone = tmp_path / "alone"
    single = _launch_run(shapes_root, alone, tmp_path / "alone.log")
    assert single.wait(timeout=300) == 0
    a, b = (_results(o)["results"]["logged_blobs"] for o in (tmp_path / "shared", alone))
    assert a["metrics"] == b["metrics"] and a["sweep"] == b["sweep"]


@pytest.mark.slow
def test_a_killed_writers_claims_are_taken_over(shapes_root: Path, tmp_path: Path):
    log = tmp_path / "computed.log"
    out = tmp_path / "shared"
    victim = _launch_run(shapes_root, out, log, delay=0.3)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    time.sleep(0.15)  # inside its second batch (0.6 s of predicting): that batch is claimed
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with Store(out / "store.sqlite") as store:  # the dead writer left its batch claimed
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] > 0
    survivor = _launch_run(shapes_root, out, log, delay=0.3)
    stdout, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    result = _results(out)["results"]["logged_blobs"]
    assert result["n"] == result["reused"] + result["computed"]
    with Store(out / "store.sqlite") as store:
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert store.count(result["run_key"]) == result["n"]


def test_claims_grant_hold_and_take_over(tmp_path: Path):
    from refbench.store import _LIVE_OWNERS, new_owner

    with Store(tmp_path / "s.sqlite") as store:
        a, b = new_owner(), new_owner()
        _LIVE_OWNERS.update((a, b))  # two writers with their leases open
        wanted = [("run", "g1", "s1"), ("run", "g2", "s2")]
        assert store.claim(a, wanted) == ([("run", "g1"), ("run", "g2")], [])
        assert store.claim(b, wanted) == ([], [("run", "g1"), ("run", "g2")])  # a is alive
        assert store.claim(a, wanted)[0] == [("run", "g1"), ("run", "g2")]  # its own: renewed
        store.conn.execute("UPDATE claims SET expires = 0 WHERE group_id = 'g1'")  # a's lease ran out
        assert store.claim(b, wanted) == ([("run", "g1")], [("run", "g2")])
        dead = f"{os.uname().nodename}:999999999:deadbeef"  # a process of this machine that is gone
        store.conn.execute("UPDATE claims SET owner = ? WHERE group_id = 'g2'", (dead,))
        assert store.claim(b, wanted) == ([("run", "g1"), ("run", "g2")], [])
        store.release(b)
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        # a claim left by an evaluation of this process that ended (its release failed on a
        # full disk, say) is taken over at once, not after the lease
        assert store.claim(a, wanted)[0] == [("run", "g1"), ("run", "g2")]
        _LIVE_OWNERS.discard(a)
        assert store.claim(b, wanted) == ([("run", "g1"), ("run", "g2")], [])
        _LIVE_OWNERS.discard(b)


# -- results files keep every method ---------------------------------------------------------------
def test_results_json_keeps_every_method_and_config(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    base = ["--data-root", str(shapes_root), "--out", str(out), "--no-progress"]
    assert run_cli("run", "--methods", "gt_box", *base).returncode == 0
    assert run_cli("run", "--methods", "full_image", "--limit", "5", *base).returncode == 0
    assert run_cli("run", "--methods", "gt_box", "--set", "gt_box.grow=0.2", *base).returncode == 0
    results = _results(out)["results"]
    assert results["gt_box"]["config"] == {"grow": 0.2}  # the latest run keeps the plain name
    grown, plain = results["gt_box"], next(v for k, v in results.items()
                                           if k.startswith("gt_box [") and v["config"] == {"grow": 0.0})
    assert plain["n"] == grown["n"] and plain["metrics"]["mIoU"] > grown["metrics"]["mIoU"]
    assert results["full_image"]["limit"] == 5 and results["full_image"]["n"] == 5
    assert len(list((out / "results").glob("*.json"))) == 3  # one file per run, never replaced


# -- one metric registry --------------------------------------------------------------------------
def test_a_new_metric_is_one_registry_entry(shapes_root: Path, tmp_path: Path):
    """Add a metric to metrics.METRICS before anything else imports it: the tables, the results
    file, the DataFrames, the intervals and the regression figures all carry it."""
    code = f"""
import numpy as np
from refbench.results import metrics
extra = metrics.Metric("P@0.95", lambda i, u, e: (metrics.iou(i, u, e) >= 0.95).astype(float),
                       lambda i, u, e: np.ones(len(i)), float("nan"), "share with IoU >= 0.95",
                       interval=True)
metrics.METRICS = (*metrics.METRICS, extra)
metrics.METRIC_NAMES = tuple(m.name for m in metrics.METRICS)
metrics.INTERVAL_METRICS = tuple(m.name for m in metrics.METRICS if m.interval)
import refbench
from refbench.results.tables import to_text
r = refbench.evaluate(["gt_box", "full_image"], "refshapes", "val", data_root={str(shapes_root)!r})
box = r["gt_box"]
ious = box.rows.ious(box.k)
assert box.metrics["P@0.95"] == float((ious >= 0.95).mean())
assert "P@0.95" in r.metrics.columns and "P@0.95 low" in r.metrics.columns
assert "P@0.95" in box.intervals
assert "P@0.95" in to_text(r.table()).splitlines()[1]
assert "P@0.95" in r.as_dict()["results"]["gt_box"]["metrics"]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- item 7: the import graph ---------------------------------------------------------------------
def _imports(path: Path, package_root: Path) -> set[str]:
    """Modules of refbench/ and methods/ that ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text())
    module = ".".join(path.relative_to(package_root).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, node.module])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("refbench", "methods")}


def test_import_graph_has_no_cycles_and_refbench_knows_no_method():
    files = sorted([*(REPO / "refbench").rglob("*.py"), *(REPO / "methods").rglob("*.py")])
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, REPO):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)  # a package's own __init__ above a module is not an edge
        graph[name] = targets
    assert not [(a, b) for a, bs in graph.items() for b in bs
                if a.startswith("refbench") and b.startswith("methods")]
    # depth-first search for back edges
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], cycles
