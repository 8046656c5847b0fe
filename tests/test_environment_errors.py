"""The machine's state (a full disk, a read-only folder, a file where a folder should be, a
damaged or foreign store, no network) gets one line naming the cause and the fix, and rows
committed before it stay."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli, run_cli_here


def run(root: Path, out: Path, *extra: str, methods: str = "gt_box"):
    return run_cli_here("run", "--methods", methods, "--data-root", str(root), "--no-progress",
                        "--out", str(out), *extra)


@contextmanager
def small_disk(folder: Path, size: str = "8m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (root only; skipped where mounting is not
    allowed, as in an unprivileged container)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small disk here ({mounted.stderr.decode().strip()})")
    try:
        if read_only:
            (folder / "existing").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def figures(out: Path) -> dict[str, dict]:
    saved = json.loads((out / "results.json").read_text())
    return {label: entry["metrics"] for label, entry in saved["results"].items()}


def test_full_disk_keeps_rows_and_resumes_to_the_same_figures(shapes_root: Path, tmp_path: Path):
    methods = "gt_box,full_image"
    assert run(shapes_root, tmp_path / "whole", "--batch-size", "1", methods=methods).returncode == 0
    with small_disk(tmp_path / "disk") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (8 * 1024 * 1024 - 400 * 1024))  # 400 KiB left
        full = run(shapes_root, disk / "out", "--batch-size", "1", methods=methods)
        assert_user_error(full, "is full", "free some space", "rerun the command to resume")
        filler.unlink()
        resumed = run(shapes_root, disk / "out", "--batch-size", "1", methods=methods)
        assert resumed.returncode == 0, resumed.stderr
        reused = sum(int(n) for n in re.findall(r"(\d+) reused from the store", resumed.stdout))
        assert reused > 0  # the batches committed before the disk filled were kept
        assert figures(disk / "out") == figures(tmp_path / "whole")


def test_read_only_folders_are_named(shapes_root: Path, tmp_path: Path):
    with small_disk(tmp_path / "ro", "1m", read_only=True) as disk:
        assert_user_error(run(shapes_root, disk / "new"), "cannot create the run folder",
                          "Read-only file system")
        assert_user_error(run(shapes_root, disk / "existing"), "is read-only", "writable --out")


@pytest.mark.parametrize("command", ["run", "grid", "report"])
def test_out_that_is_a_file(command: str, shapes_root: Path, tmp_path: Path):
    target = tmp_path / "a-file"
    target.write_text("mine")
    args = {"run": ["run", "--methods", "gt_box", "--data-root", str(shapes_root)],
            "grid": ["grid", "--method", "gt_box", "--param", "grow=0,0.1", "--data-root", str(shapes_root)],
            "report": ["report", "leaderboards/refshapes.yaml", "--limit", "2"]}[command]
    assert_user_error(run_cli_here(*args, "--out", str(target), "--no-progress"),
                      f"--out {target} is a file, not a folder")
    assert target.read_text() == "mine"
    assert_user_error(run_cli_here(*args, "--out", str(target / "sub"), "--no-progress"),
                      "Not a directory")


def _store_after_one_run(root: Path, out: Path) -> Path:
    assert run(root, out).returncode == 0
    return out / "store.sqlite"


def test_damaged_store_pages(shapes_root: Path, tmp_path: Path):
    db = _store_after_one_run(shapes_root, tmp_path / "o")
    data = bytearray(db.read_bytes())
    data[len(data) // 2:] = b"\xab" * (len(data) - len(data) // 2)  # the rows' pages
    db.write_bytes(bytes(data))
    result = run(shapes_root, tmp_path / "o")
    assert_user_error(result, "store.sqlite", "malformed")
    assert "internal error" not in result.stderr


def test_store_of_another_layout_is_refused_untouched(shapes_root: Path, tmp_path: Path):
    db = _store_after_one_run(shapes_root, tmp_path / "o")
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE claims")  # as a store written before writers claimed work
    conn.execute("ALTER TABLE runs DROP COLUMN info")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    assert_user_error(run(shapes_root, tmp_path / "o"), "another table layout", "runs lacks info",
                      "no claims table", "left as it is")
    assert db.read_bytes() == before


def test_unreachable_hub_fails_at_once(shapes_root: Path, tmp_path: Path):
    """Without HF_HUB_OFFLINE, a hub that refuses connections: one line, no retry storm."""
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root),
                     "--set", "diffsegmenter.backbone=someone/sd-model", "--limit", "1",
                     "--out", str(tmp_path / "o"), "--no-progress", env=env)
    assert_user_error(result, "someone/sd-model", "the hub cannot be reached", "--backbone shapes")


def test_limit_and_seed_beyond_sqlite_integers(shapes_root: Path, tmp_path: Path):
    assert_user_error(run(shapes_root, tmp_path / "o", "--limit", "99999999999999999999"),
                      "limit must be a whole number")
    assert_user_error(run(shapes_root, tmp_path / "o", "--seed", "99999999999999999999"),
                      "the seed must be a whole number")  # found by the fuzzer (an SQLite overflow)


@pytest.mark.parametrize("sidecar, fragment", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
    ('{"method": 3}', "method is 3, not text"), ('{"config": []}', "config is [], not an object"),
])
def test_malformed_checkpoint_sidecar(sidecar: str, fragment: str, tmp_path: Path):
    import torch

    from refbench import checkpoint
    from refbench.errors import UserError

    path = checkpoint.save(tmp_path / "c.safetensors", {"w": torch.zeros(2)}, {"method": "vpd"})
    path.with_suffix(".json").write_text(sidecar)
    with pytest.raises(UserError, match=re.escape(fragment)):
        checkpoint.load(path)


@pytest.mark.parametrize("edit, fragment", [
    (("\n  samples: 6", "\n  samples: -3"), "gallery.samples must be at least 1, got -3"),
    (("batch_size: 64", "batch_size: 0"), "batch_size must be at least 1"),
    (("tolerance: {mIoU: 0.0", "tolerance: {mIoU: 'half'"), "tolerance.mIoU must be float, got 'half'"),
    (("tolerance: {mIoU: 0.0", "tolerance: {mIoU: -1"), "tolerance.mIoU must be at least 0"),
    # found by the fuzzer: a bootstrap this large took the machine's 24 GB
    (("resamples: 2000", "resamples: 100000000000"), "resamples must be a whole number from 100"),
])
def test_spec_values_are_checked(edit: tuple[str, str], fragment: str, tmp_path: Path):
    from refbench.errors import UserError
    from refbench.report.spec import load_spec

    spec = Path("leaderboards/refshapes.yaml").read_text()
    regress = "\nregress:\n  tolerance: {mIoU: 0.0}\n" if "tolerance" not in spec else ""
    text = (spec + regress)
    assert edit[0] in text, edit
    (tmp_path / "reported.yaml").write_text((Path("leaderboards") / "reported.yaml").read_text())
    bad = tmp_path / "spec.yaml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_spec(bad)


def test_unexpected_errors_are_one_line_with_the_debug_hint(shapes_root: Path, tmp_path: Path):
    """What is not the user's fault (a plugin's bug here) is the one catch-all line; the cases
    above never reach it (they exit 2, it exits 1)."""
    env = {"REFBENCH_PLUGINS": "rb_testplugin",
           "PYTHONPATH": str(Path(__file__).parent / "plugins")}
    result = run_cli("run", "--methods", "crashing", "--data-root", str(shapes_root),
                     "--out", str(tmp_path / "o"), "--no-progress", env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "internal error" in lines[0] and "--debug" in lines[0]
