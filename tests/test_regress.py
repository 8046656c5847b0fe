"""`refbench regress`: a baseline round trip, a perturbed baseline fails with a diff table, and
the committed specs and baseline are consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refbench.plugins import PluginHost
from refbench.regress import compare
from refbench.report.build import check_spec
from refbench.report.spec import load_spec
from tests.conftest import REPO, assert_user_error, run_cli

SPEC = """title: regress test
seed: 0
limit: 12
calibration:
  split: train
statistics:
  resamples: 100
datasets:
  - name: refshapes
    root: {root}
    splits: [val]
methods:
  - name: full_image
  - name: gt_box
    set: {{grow: 0.1}}
regress:
  baseline: base/figures.json
  tolerance: {{mIoU: 0.001, oIoU: 0.001, P@0.5: 0.02}}
"""


def test_baseline_round_trip_and_a_perturbed_baseline_fails(shapes_root: Path, tmp_path: Path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SPEC.format(root=shapes_root))
    assert_user_error(run_cli("regress", str(spec), "--no-progress"), "no baseline", "--update")
    update = run_cli("regress", str(spec), "--update", "--no-progress")
    assert update.returncode == 0, update.stderr
    baseline = tmp_path / "base" / "figures.json"
    saved = json.loads(baseline.read_text())
    assert set(saved["figures"]) == {"refshapes/val/full_image", "refshapes/val/gt_box (grow=0.1)"}
    assert saved["limit"] == 12

    ok = run_cli("regress", str(spec), "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "within tolerance" in ok.stdout

    key = "refshapes/val/gt_box (grow=0.1)"
    saved["figures"][key]["mIoU"] += 0.0009  # within 0.001: still passes
    saved["figures"][key]["P@0.5"] -= 0.05  # beyond 0.02: the current figure looks better
    saved["figures"]["refshapes/val/full_image"]["oIoU"] += 0.01  # current looks worse
    baseline.write_text(json.dumps(saved))
    failed = run_cli("regress", str(spec), "--no-progress")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    lines = failed.stdout.splitlines()
    header = next(l for l in lines if l.startswith("run "))
    assert all(word in header for word in ("baseline", "current", "Δ", "tolerance", "status"))
    rows = {tuple(l.split()[:2]): l for l in lines if l.startswith("refshapes/")}
    assert rows[("refshapes/val/full_image", "oIoU")].endswith("WORSE")
    assert "-1.00" in rows[("refshapes/val/full_image", "oIoU")]
    assert rows[("refshapes/val/gt_box", "(grow=0.1)")]  # labels with spaces still listed
    assert sum(l.endswith("BETTER") for l in lines) == 1 and sum(l.endswith("WORSE") for l in lines) == 1
    assert "2 of" in failed.stdout and "--update" in failed.stdout


def test_compare_flags_missing_new_and_threshold_changes():
    base = {"a": {"threshold": "0.50", "mIoU": 0.5}, "b": {"threshold": "mask", "mIoU": 0.2}}
    now = {"a": {"threshold": "0.45", "mIoU": 0.5}, "c": {"threshold": "mask", "mIoU": 0.1}}
    status = {(d.key, d.metric): d.status for d in compare(base, now, {"mIoU": 0.0})}
    assert status == {("a", "threshold"): "changed", ("a", "mIoU"): "ok", ("b", "-"): "missing",
                      ("c", "-"): "new"}


@pytest.mark.parametrize("name", ["refshapes.yaml", "binding.yaml", "refcoco.yaml", "coco.yaml", "ci.yaml",
                                  "zeroshot.yaml", "training_free.yaml"])
def test_committed_specs_are_valid(name: str):
    spec = load_spec(REPO / "leaderboards" / name)
    check_spec(PluginHost(), spec)  # methods, parameters, datasets, calibration policy
    assert not spec.calibration.tune_on_reported_split  # committed figures are never tuned on test


def test_committed_baseline_matches_the_ci_spec():
    spec = load_spec(REPO / "leaderboards" / "ci.yaml")
    saved = json.loads(spec.regress.baseline.read_text())
    expected = {f"{d.name}/{split}/{m.label}" for d in spec.datasets for split in d.splits
                for m in spec.methods}
    assert set(saved["figures"]) == expected and saved["limit"] == spec.limit
    assert set(spec.regress.tolerance) <= set(next(iter(saved["figures"].values())))


def test_junit_and_summary_of_a_pass_and_a_failure(shapes_root: Path, tmp_path: Path, monkeypatch):
    """What a CI system reads: the JUnit XML through a JUnit parser (one case per checked
    figure, a failure with expected, measured and tolerance), the Markdown summary, and
    $GITHUB_STEP_SUMMARY appended to."""
    from junitparser import Failure, JUnitXml

    from tests.conftest import run_cli_here

    spec = tmp_path / "small.yaml"
    spec.write_text(SPEC.format(root=shapes_root))
    assert run_cli_here("regress", str(spec), "--update", "--no-progress").returncode == 0
    baseline = tmp_path / "base" / "figures.json"
    saved = json.loads(baseline.read_text())
    assert saved["seed"] == 0 and set(saved["data"]) == {"refshapes/val"}
    assert {"torch", "diffusers", "refbench"} <= set(saved["versions"])

    step = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    ok = run_cli_here("regress", str(spec), "--no-progress", "--junit", str(tmp_path / "ok.xml"),
                      "--summary", str(tmp_path / "ok.md"))
    assert ok.returncode == 0, ok.stderr
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "ok.xml"))))
    cases = list(suite)
    # per run: the threshold and the four tolerated metrics
    assert suite.tests == len(cases) == 2 * (1 + 3) and suite.failures == 0
    assert {c.classname for c in cases} == {"refshapes/val/full_image", "refshapes/val/gt_box (grow=0.1)"}
    assert "all 8 checks within tolerance" in (tmp_path / "ok.md").read_text()

    saved["figures"]["refshapes/val/full_image"]["oIoU"] += 0.01
    baseline.write_text(json.dumps(saved))
    failed = run_cli_here("regress", str(spec), "--no-progress", "--junit", str(tmp_path / "bad.xml"),
                          "--summary", str(tmp_path / "bad.md"))
    assert failed.returncode == 1
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "bad.xml"))))
    assert suite.failures == 1
    (case,) = [c for c in suite if c.result]
    assert (case.classname, case.name) == ("refshapes/val/full_image", "oIoU")
    (failure,) = case.result
    assert isinstance(failure, Failure) and "worse" in failure.message
    expected = saved["figures"]["refshapes/val/full_image"]["oIoU"]
    assert f"expected {expected}" in failure.message and "tolerance 0.001" in failure.message
    summary = (tmp_path / "bad.md").read_text()
    assert "1 of 8 checks failed" in summary and "| refshapes/val/full_image" in summary
    assert "WORSE" in summary and "gt_box" not in summary  # only the failed checks
    step_text = step.read_text()  # appended by both runs
    assert "all 8 checks within tolerance" in step_text and "1 of 8 checks failed" in step_text


def test_a_baseline_of_other_samples_is_refused_before_computing(shapes_root: Path, tmp_path: Path):
    from tests.conftest import run_cli_here

    spec = tmp_path / "small.yaml"
    spec.write_text(SPEC.format(root=shapes_root))
    baseline = tmp_path / "base" / "figures.json"
    baseline.parent.mkdir()
    recorded = {"limit": 12, "seed": 0, "data": {"refshapes/val": "0" * 64},
                "versions": {"torch": "0.0.1"}, "figures": {}}
    baseline.write_text(json.dumps({**recorded, "limit": 40}))
    result = run_cli_here("regress", str(spec), "--no-progress")
    assert result.returncode == 2 and "recorded with limit 40, the spec now has limit 12" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--update" in result.stderr
    baseline.write_text(json.dumps(recorded))
    result = run_cli_here("regress", str(spec), "--no-progress")
    assert result.returncode == 2 and "recorded on other data for refshapes/val" in result.stderr
    del recorded["data"]
    baseline.write_text(json.dumps(recorded))
    result = run_cli_here("regress", str(spec), "--no-progress")  # versions: a line, then compared
    assert "recorded with torch 0.0.1" in result.stdout and result.returncode == 1  # figures: {} -> new runs
