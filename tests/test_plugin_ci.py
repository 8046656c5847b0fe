"""The CI recipe for a plugin author (examples/plugin-ci), run locally as its workflow runs it:
the plugin package installed (into a folder of its own, found through its entry point, never
through REFBENCH_PLUGINS), its spec under `refbench regress` with a JUnit report, and a changed
figure failing the job."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "plugin-ci"


def _steps() -> dict[str, str]:
    workflow = yaml.safe_load((EXAMPLE / ".github" / "workflows" / "refbench.yml").read_text())
    (job,) = workflow["jobs"].values()
    return {step["name"]: step["run"] for step in job["steps"] if "run" in step}


def _run(command: str, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    """One workflow step; `pip install .` goes to ``site`` (this environment already has torch
    and refbench, the steps before it), `refbench` is this environment's."""
    argv = shlex.split(command)
    if argv[:2] == ["pip", "install"]:
        argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                "--target", str(site), *argv[2:]]
    elif argv[0] == "refbench":
        argv = [sys.executable, "-m", "refbench", *argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    env.pop("REFBENCH_PLUGINS", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_plugin_workflow_passes_then_fails_on_a_changed_figure(tmp_path: Path):
    from junitparser import JUnitXml

    steps = _steps()
    assert steps["Install torch (CPU build; a bare requirement would pull a multi-GB CUDA build)"] \
        .startswith("pip install torch==")
    work = tmp_path / "plugin"
    shutil.copytree(EXAMPLE, work)
    site = tmp_path / "site"
    installed = _run(steps["Install the plugin"], work, site)
    assert installed.returncode == 0, installed.stderr
    assert (site / "rb_centre" / "plugin.py").is_file()

    check = _run(steps["Regression check"], work, site)
    assert check.returncode == 0, check.stdout + check.stderr
    suite = next(iter(JUnitXml.fromfile(str(work / "regress.xml"))))
    assert suite.tests == 12 and suite.failures == 0
    assert "all 12 checks within tolerance" in (work / "regress.md").read_text()

    baseline = work / "baseline.json"
    saved = json.loads(baseline.read_text())
    saved["figures"]["refshapes/val/Centre box"]["mIoU"] -= 0.02  # the method now scores higher
    baseline.write_text(json.dumps(saved))
    check = _run(steps["Regression check"], work, site)
    assert check.returncode == 1, check.stdout + check.stderr
    suite = next(iter(JUnitXml.fromfile(str(work / "regress.xml"))))
    assert suite.failures == 1
    (case,) = [c for c in suite if c.result]
    assert (case.classname, case.name) == ("refshapes/val/Centre box", "mIoU")
    assert "better" in case.result[0].message
