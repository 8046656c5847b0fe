"""The Python API: the README's notebook example verbatim, in-memory methods, typed overrides,
and an evaluation that writes nothing but its store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import refbench
from refbench.data.masks import decode
from refbench.data.refer import ReferDataset
from refbench.errors import UserError
from refbench.method import Prediction
from tests.conftest import REPO, run_cli


def _readme_example() -> str:
    text = (REPO / "docs" / "api.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's API example is marked <!-- api-example -->"
    return match.group(1)


@pytest.fixture
def in_data_folder(shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding ./data/refshapes, as after the README's setup."""
    shutil.copytree(shapes_root, tmp_path / "data" / "refshapes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_readme_notebook_example_runs_verbatim(in_data_folder: Path, capsys):
    before = _listing(in_data_folder)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    results, rows = namespace["results"], namespace["rows"]
    samples = ReferDataset(in_data_folder / "data" / "refshapes", "refshapes").samples("val")[:40]
    # one row per sample and method, in the split's order, with the sample's own fields
    assert len(rows) == 2 * len(samples)
    for method in ("everything", "gt_box"):
        mine = rows[rows["method"] == method]
        assert list(mine["sample_id"]) == [s.sample_id for s in samples]
        assert list(mine["kind"]) == [s.meta["kind"] for s in samples]
    # the in-memory method predicts the whole image: its IoU is gt area / image area
    everything = rows[rows["method"] == "everything"]
    expected = [decode(s.gt).sum() / (s.height * s.width) for s in samples]
    assert np.allclose(everything["iou"], expected)
    table = results.metrics.set_index("method")
    assert table.loc["everything", "mIoU"] == pytest.approx(np.mean(expected))
    assert table.loc["gt_box", "n"] == len(samples) and 0.3 < table.loc["gt_box", "mIoU"] < 1
    payload = json.loads(namespace["summary"])
    assert payload["limit"] == 40 and "NOT a real score" in payload["note"]
    assert payload["results"]["gt_box"]["config"] == {"grow": 0.1}
    assert payload["results"]["everything"]["plugin"] == "(in memory)"
    assert "everything" in capsys.readouterr().out
    assert _listing(in_data_folder) == before  # wrote nothing: the store was temporary


def test_typed_overrides_are_the_command_lines_values(shapes_root: Path, tmp_path: Path):
    api = refbench.evaluate("gt_box", "refshapes", "val", set={"gt_box": {"grow": 0.2}},
                            data_root=shapes_root, limit=10)
    out = tmp_path / "cli"
    result = run_cli("run", "--methods", "gt_box", "--set", "gt_box.grow=0.2", "--limit", "10",
                     "--data-root", str(shapes_root), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    cli = json.loads((out / "results.json").read_text())["results"]["gt_box"]
    assert api["gt_box"].record.method_fingerprint == cli["fingerprint"]
    assert api["gt_box"].metrics == cli["metrics"]
    for bad, fragment in [({"gt_box.grow": "wide"}, "expects a finite number"),
                          ({"gt_box.grow": True}, "expects float"),
                          ({"gt_box.grw": 0.1}, "did you mean 'grow'"),
                          ({"gt_box.grow": 5.0}, "grow must be in"),
                          ({"vpd.checkpoint": "x"}, "not among the selected methods")]:
        with pytest.raises(UserError, match=fragment):
            refbench.evaluate("gt_box", "refshapes", "val", set=bad, data_root=shapes_root)


def test_an_in_memory_method_scores_like_the_registered_one(shapes_root: Path):
    from methods.reference import GroundTruthBox

    box = GroundTruthBox(GroundTruthBox.Config(grow=0.0))  # not registered under any name here
    box.name = "my_box"
    results = refbench.evaluate([box, "gt_box"], "refshapes", "testB", data_root=shapes_root)
    mine, registered = results["my_box"], results["gt_box"]
    assert mine.metrics == registered.metrics
    assert mine.record.method_fingerprint != registered.record.method_fingerprint
    with pytest.raises(UserError, match="no predict"):
        refbench.evaluate([object()], "refshapes", "val", data_root=shapes_root)


class _Scaled:
    """Score maps that depend on the sample's seed: batch composition must not matter."""

    name = "seeded_noise"

    def predict(self, batch):
        return [Prediction(scores=rng.random((s.height, s.width)).astype(np.float32))
                for s, rng in zip(batch.samples, batch.rngs())]


def test_batch_size_and_store_do_not_change_results(shapes_root: Path, tmp_path: Path):
    one = refbench.evaluate([_Scaled()], "refshapes", "val", data_root=shapes_root, batch_size=1)
    eight = refbench.evaluate([_Scaled()], "refshapes", "val", data_root=shapes_root, batch_size=8,
                              store=tmp_path / "store.sqlite")
    assert one.sweep.equals(eight.sweep)
    again = refbench.evaluate([_Scaled()], "refshapes", "val", data_root=shapes_root,
                              store=tmp_path / "store.sqlite")
    assert again["seeded_noise"].work.reused == again["seeded_noise"].n  # resumed from the store
    assert again.sweep.equals(one.sweep)


def test_calibration_and_several_splits(shapes_root: Path):
    results = refbench.evaluate([_Scaled(), "gt_box"], "refshapes", ["testA", "testB"],
                                data_root=shapes_root, calibration="val")
    assert set(results.metrics["split"]) == {"testA", "testB"}
    noise = results.on("testA")["seeded_noise"]
    val_sweep = results.calibrating["seeded_noise"].rows.sweep()
    best = max(val_sweep, key=lambda p: (p["mIoU"], -p["threshold"]))["threshold"]
    assert noise.threshold.value == best and noise.threshold.calibration_split == "val"
    assert results.on("testB")["gt_box"].threshold.value is None  # a mask has no threshold
    with pytest.raises(UserError, match="also a reported split"):
        refbench.evaluate("gt_box", "refshapes", "val", data_root=shapes_root, calibration="val")
    payload = json.loads(results.to_json())
    assert set(payload["results"]) == {"testA", "testB"}


def test_the_host_a_caller_builds_is_the_one_methods_see(shapes_root: Path, monkeypatch):
    """A plugin named only in this host's environment provides the method and its backbone."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "plugins"))
    monkeypatch.setenv("REFBENCH_PLUGINS", "rb_testplugin")
    host = refbench.PluginHost()
    monkeypatch.delenv("REFBENCH_PLUGINS")
    results = refbench.evaluate("noise_blobs", "refshapes", "testA", data_root=shapes_root,
                                host=host)
    assert results["noise_blobs"].plugin == "rb_testplugin"
    with pytest.raises(UserError, match="unknown method 'noise_blobs'"):
        refbench.evaluate("noise_blobs", "refshapes", "testA", data_root=shapes_root)


def test_a_missing_synthetic_data_set_is_generated_only_when_asked(tmp_path: Path):
    root = tmp_path / "shapes"
    with pytest.raises(UserError, match="generate=True"):
        refbench.evaluate("gt_box", "refshapes", "val", data_root=root)
    assert not root.exists()
