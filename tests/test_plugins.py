"""Plugin host: entry points, isolation of broken plugins, lazy imports, third-party methods."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from refbench.errors import UserError
from refbench.plugins import PluginHost, PluginLoadWarning
from tests.conftest import REPO, assert_user_error, run_cli

PLUGIN_PATH = str(REPO / "tests" / "plugins")


def test_builtins_come_through_entry_points():
    host = PluginHost()
    assert host.methods["full_image"].plugin == "reference"
    assert host.datasets["refcoco"].plugin == "datasets"
    assert {"refcoco", "refcoco+", "refcocog", "coco", "refshapes"} <= set(host.datasets)


def test_unknown_method_says_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'gt_box'"):
        PluginHost().method("gt-box")


def test_broken_plugin_warns_and_others_load(monkeypatch):
    monkeypatch.syspath_prepend(PLUGIN_PATH)
    monkeypatch.setenv("REFBENCH_PLUGINS", "rb_broken,rb_testplugin")
    with pytest.warns(PluginLoadWarning, match="rb_broken.*ImportError.*not installed"):
        host = PluginHost()
    assert "noise_blobs" in host.methods and "full_image" in host.methods


def test_strict_plugins_turns_the_warning_into_an_error():
    env = {"REFBENCH_PLUGINS": "rb_broken", "PYTHONPATH": PLUGIN_PATH}
    result = run_cli("--strict-plugins", "ls", env=env)
    assert_user_error(result, "rb_broken", "failed to load")
    relaxed = run_cli("ls", "methods", env=env)
    assert relaxed.returncode == 0 and "full_image" in relaxed.stdout
    assert "rb_broken" in relaxed.stderr and "Traceback" not in relaxed.stderr


def test_ls_imports_no_torch_or_diffusers():
    code = ("import sys; from refbench.cli import main; main(['ls']); "
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    import subprocess, sys
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def _readme_block(marker: str) -> str:
    text = (REPO / "docs" / "plugins.md").read_text()
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README lacks the block marked {marker}"
    return match.group(1)


def _install_readme_plugin(site: Path) -> None:
    """Install the README's plugin the way pip would for importlib.metadata: module + dist-info."""
    (site / "center_box.py").write_text(_readme_block("plugin-example: center_box.py"))
    project = tomllib.loads(_readme_block("plugin-example: pyproject.toml"))["project"]
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["refbench"]
    (dist / "entry_points.txt").write_text("[refbench]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))


def test_readme_plugin_example_runs_without_touching_refbench(shapes_root: Path, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    _install_readme_plugin(site)
    listing = run_cli("ls", "methods", env={"PYTHONPATH": str(site)})
    assert re.search(r"center_box\s+\[center_box\]", listing.stdout), listing.stdout
    out = tmp_path / "run"
    result = run_cli("run", "--methods", "center_box,full_image", "--data-root", str(shapes_root),
                     "--set", "center_box.fraction=0.5", "--out", str(out), "--no-progress",
                     env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    res = json.loads((out / "results.json").read_text())["results"]["center_box"]
    assert res["plugin"] == "center_box" and res["config"] == {"fraction": 0.5}
    # independent check: the centred box's IoU per sample, computed here
    from refbench.data.masks import decode
    from refbench.data.refer import ReferDataset
    ious = []
    for s in ReferDataset(shapes_root, "refshapes").samples("val"):
        box = np.zeros((s.height, s.width), dtype=bool)
        dy, dx = int(s.height * 0.25), int(s.width * 0.25)
        box[s.height // 2 - dy: s.height // 2 + dy, s.width // 2 - dx: s.width // 2 + dx] = True
        gt = decode(s.gt)
        ious.append((box & gt).sum() / (box | gt).sum())
    assert res["metrics"]["mIoU"] == pytest.approx(np.mean(ious))
