"""Bad input: one line, exit status 2, no traceback, and nothing already computed is lost."""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path

from tests.conftest import REPO, assert_user_error, run_cli, run_cli_here

PLUGINS = {"REFBENCH_PLUGINS": "rb_testplugin", "PYTHONPATH": str(REPO / "tests" / "plugins")}


def _run(root: Path, *extra: str, out: Path | None = None, env=None):
    """In this process unless an environment is asked for (imports cost seconds a process)."""
    args = ["run", "--methods", "gt_box", "--data-root", str(root), "--no-progress", *extra]
    if out is not None:
        args += ["--out", str(out)]
    return run_cli(*args, env=env) if env else run_cli_here(*args)


def test_missing_root_says_layout(tmp_path: Path):
    result = run_cli_here("run", "--methods", "gt_box", "--dataset", "refcoco",
                     "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert_user_error(result, "does not exist", "--data-root", "Data layout")


def test_missing_refs_file_says_layout(tmp_path: Path):
    (tmp_path / "refcoco").mkdir()
    result = run_cli_here("run", "--methods", "gt_box", "--dataset", "refcoco", "--data-root",
                     str(tmp_path), "--out", str(tmp_path / "o"))
    assert_user_error(result, "refs(unc).p", "instances.json", "images/train2014")


def test_unknown_dataset_split_method(shapes_root: Path, tmp_path: Path):
    assert_user_error(_run(shapes_root, "--dataset", "refcocoo", out=tmp_path), "did you mean 'refcoco'")
    assert_user_error(_run(shapes_root, "--split", "vall", out=tmp_path), "did you mean 'val'")
    result = run_cli_here("run", "--methods", "full_imag", "--data-root", str(shapes_root), "--out", str(tmp_path))
    assert_user_error(result, "unknown method 'full_imag'", "did you mean 'full_image'")


def test_bad_set_values(shapes_root: Path, tmp_path: Path):
    assert_user_error(_run(shapes_root, "--set", "gt_box.grow=big", out=tmp_path), "gt_box.grow", "number")
    assert_user_error(_run(shapes_root, "--set", "gt_box.grw=0.1", out=tmp_path), "did you mean 'grow'")
    assert_user_error(_run(shapes_root, "--set", "gt_box.grow=5", out=tmp_path), "grow must be in")
    assert_user_error(_run(shapes_root, "--set", "grow=1", out=tmp_path), "METHOD.KEY=VALUE")
    assert_user_error(_run(shapes_root, "--set", "vpd.grow=1", out=tmp_path), "not among the selected")
    assert_user_error(_run(shapes_root, "--batch-size", "0", out=tmp_path), "positive")
    assert_user_error(_run(shapes_root, "--threshold", "0.33", out=tmp_path), "not on the sweep")


def test_corrupt_and_malicious_pickles(shapes_copy: Path, tmp_path: Path):
    refs = shapes_copy / "refshapes" / "refs(unc).p"
    refs.write_bytes(refs.read_bytes()[:100])
    assert_user_error(_run(shapes_copy, out=tmp_path / "a"), "corrupt", "refs(unc).p")

    class Exploit:
        def __reduce__(self):
            import subprocess
            return (subprocess.call, (["touch", str(tmp_path / "PWNED")],))

    refs.write_bytes(pickle.dumps([{"ref_id": 1, "x": Exploit()}]))
    assert_user_error(_run(shapes_copy, out=tmp_path / "b"), "refused", "subprocess.call")
    assert not (tmp_path / "PWNED").exists()


def test_missing_image_fails_before_computing(shapes_copy: Path, tmp_path: Path):
    images = sorted((shapes_copy / "images" / "train2014").glob("*.jpg"))
    victim = json.loads((shapes_copy / "refshapes" / "instances.json").read_text())
    val_ids = {r["image_id"] for r in pickle.load(open(shapes_copy / "refshapes" / "refs(unc).p", "rb"))
               if r["split"] == "val"}
    name = next(i["file_name"] for i in victim["images"] if i["id"] in val_ids)
    (shapes_copy / "images" / "train2014" / name).unlink()
    assert images
    assert_user_error(_run(shapes_copy, out=tmp_path), "missing", name, "--image-dir")


def test_error_midway_keeps_finished_batches(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    result = run_cli("run", "--methods", "noise_blobs,wrong_shape", "--data-root", str(shapes_root),
                     "--out", str(out), "--no-progress", env=PLUGINS)
    assert_user_error(result, "wrong_shape", "shape (3, 3)")
    counts = dict(sqlite3.connect(out / "store.sqlite").execute(
        "SELECT method, (SELECT COUNT(*) FROM samples s WHERE s.run_key = r.run_key) FROM runs r"))
    assert counts["noise_blobs"] > 0 and counts["wrong_shape"] == 0


def test_argparse_errors_are_one_line():
    assert_user_error(run_cli_here("run"), "--methods")
    assert_user_error(run_cli_here("run", "--methods", "gt_box", "--limit", "zero"), "--limit")


def test_corrupt_store_is_reported(shapes_root: Path, tmp_path: Path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not a database" * 100)
    assert_user_error(_run(shapes_root, out=tmp_path), "store.sqlite", "not a usable refbench store")
