"""Shared fixtures: a small RefShapes copy generated once per session, and CLI runners."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbench.data.shapes import ShapesConfig, generate
from refbench.plugins import PluginHost

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
def host() -> PluginHost:
    """The built-in plugins (no REFBENCH_PLUGINS): what a bare installation sees."""
    return PluginHost()


@pytest.fixture(scope="session")
def tiny_backbone(host):
    from refbench.diffusion.backbone import load_backbone

    return load_backbone("tiny", "cpu", host=host)


@pytest.fixture
def shapes_copy(shapes_root: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    target = tmp_path / "refshapes"
    shutil.copytree(shapes_root, target)
    return target


@pytest.fixture(autouse=True)
def _no_env_plugins(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("REFBENCH_PLUGINS", raising=False)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """Run the command line as a user would and return its exit code, stdout and stderr.

    In this process by default (``run_cli_here`` with ``env`` and ``cwd`` applied for the call):
    a new interpreter pays seconds of torch and diffusers imports per call. ``subprocess_=True``
    runs ``python -m refbench`` in a new process: for the tests of the real entry point, of
    what a fresh process imports, and of anything that kills or signals the process. Setting
    REFBENCH_TEST_SUBPROCESS=1 runs every call in a subprocess (the slower, stricter run)."""
    if subprocess_ or os.environ.get("REFBENCH_TEST_SUBPROCESS") == "1":
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO), full_env.get("PYTHONPATH", "")] if p)
        return subprocess.run([sys.executable, "-m", "refbench", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    with _applied(env or {}, cwd):
        return run_cli_here(*args)


@contextlib.contextmanager
def _applied(env: dict[str, str], cwd: Path | None) -> Iterator[None]:
    """``env`` set (PYTHONPATH entries also put on sys.path) and ``cwd`` entered, for one call."""
    saved_env = {k: os.environ.get(k) for k in env}
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    try:
        os.environ.update(env)
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _printed_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """Run the command line in this process: what ``run_cli`` shows (exit code, stdout, stderr)
    without a new interpreter's seconds of imports."""
    import warnings

    from refbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        # as a fresh interpreter shows them (pytest records warnings instead of printing them)
        warnings.resetwarnings()
        warnings.simplefilter("default")
        warnings.showwarning = _printed_warning
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
    return subprocess.CompletedProcess(["refbench", *args], code, out.getvalue(), err.getvalue())


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr, no traceback, mentioning every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("refbench: warning")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


PLUGIN_ENV = {"REFBENCH_PLUGINS": "rb_testplugin", "PYTHONPATH": str(REPO / "tests" / "plugins")}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
HOSTILE_LABEL = "Colour & <b>noise</b>"


def report_spec(root: Path, store: Path, **extra: str) -> str:
    """A small report spec over a RefShapes copy: two reference methods and a score-map test
    method, a grid, a gallery; ``extra`` replaces top-level sections (YAML text)."""
    sections = {
        "head": (f"title: Test report\nstore: {store}\nseed: 0\nbatch_size: 4\nbreakdown: kind\n"
                 "note: 'Shapes <i>only</i>'\nlinks:\n  - {title: 'All <b>galleries</b>', href: gallery.html}\n"),
        "calibration": "calibration:\n  split: val\n  criterion: mIoU\n",
        "statistics": "statistics:\n  resamples: 300\n",
        "datasets": f"datasets:\n  - name: refshapes\n    root: {root}\n    splits: [testA, testB]\n",
        "methods": ("methods:\n  - name: full_image\n    label: Full image\n  - name: gt_box\n"
                    "    label: GT box\n  - name: shared_blobs\n    label: '" + HOSTILE_LABEL + "'\n"
                    "    set: {alpha: 0.9}\n"),
        "grids": ("grids:\n  - method: shared_blobs\n    params: {alpha: [0.0, 0.5, 0.9]}\n"
                  "    split: testA\n    baseline: GT box\n"),
        "gallery": ("gallery:\n  split: testB\n  samples: 2\n  include: ['HOSTILE_ID']\n"
                    "  contrast: ['" + HOSTILE_LABEL + "', GT box]\n"),
    }
    sections.update(extra)
    return "\n".join(sections.values())


@pytest.fixture(scope="session")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A RefShapes copy whose first testB sentence is hostile markup (data is untrusted)."""
    import pickle

    root = tmp_path_factory.mktemp("hostile") / "refshapes"
    generate(root, ShapesConfig(seed=0, images=SMALL))
    refs_path = root / "refshapes" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    sentence = next(r for r in refs if r["split"] == "testB")["sentences"][0]
    sentence["raw"] = sentence["sent"] = HOSTILE
    refs_path.write_bytes(pickle.dumps(refs))
    return root, str(sentence["sent_id"])


@pytest.fixture(scope="session")
def report_site(hostile_root: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site rendered once by `refbench report` for the report and browser tests."""
    root, hostile_id = hostile_root
    work = tmp_path_factory.mktemp("report")
    spec = work / "spec.yaml"
    spec.write_text(report_spec(root, work / "store").replace("HOSTILE_ID", hostile_id))
    result = run_cli("report", str(spec), "--out", str(work / "site"), "--no-progress",
                     env=PLUGIN_ENV)
    assert result.returncode == 0, result.stderr
    return work / "site"
