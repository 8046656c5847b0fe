"""Shared fixtures: a small RefShapes copy generated once per session, and CLI runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refbench.data.shapes import ShapesConfig, generate
from refbench.plugins import reset_host

SMALL = {"train": 6, "val": 8, "testA": 3, "testB": 3}
# No test may reach a model hub: this machine and CI have no network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refshapes")
    generate(root, ShapesConfig(seed=0, images=SMALL))
    return root


@pytest.fixture(scope="session")
def tiny_backbone():
    from refbench.diffusion.backbone import load_backbone

    return load_backbone("tiny", "cpu")


@pytest.fixture
def shapes_copy(shapes_root: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    target = tmp_path / "refshapes"
    shutil.copytree(shapes_root, target)
    return target


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("REFBENCH_PLUGINS", raising=False)
    reset_host()
    yield
    reset_host()


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m refbench`` in a subprocess (exit codes and stderr as a user sees them)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), full_env.get("PYTHONPATH", "")] if p)
    return subprocess.run([sys.executable, "-m", "refbench", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr, no traceback, mentioning every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("refbench: warning")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
