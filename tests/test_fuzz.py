"""A property-based fuzzer over what users hand refbench: refs records, instances records,
report specs and --set values. Whatever hypothesis makes of them, the command either runs or
exits 2 with one line on stderr; never a traceback, never the catch-all 'internal error'.

Derandomized (the same examples on every run), so a failure here is reproducible and the suite
is deterministic; the budget is a few hundred runs in well under a minute.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import run_cli_here  # noqa: E402

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.just(""), st.just("   "), st.lists(st.integers(-5, 300), max_size=8),
    st.dictionaries(st.sampled_from(["size", "counts", "id", "x"]), st.integers(-3, 300), max_size=3),
    st.just([[1.0, 2.0, 3.0]]), st.just({"size": [1, 1], "counts": "0"}), st.just("x" * 500))
DELETE = object()
MUTATION = st.one_of(ODD_VALUES, st.just(DELETE))


OUTCOMES: Counter[tuple[str, int]] = Counter()  # (what was fuzzed, exit status) -> examples


def check_outcome(result, what: str) -> None:
    OUTCOMES[(what, result.returncode)] += 1
    if os.environ.get("REFBENCH_FUZZ_REPORT"):
        with open(os.environ["REFBENCH_FUZZ_REPORT"] + ".log", "a") as log:
            log.write(f"{what}\t{result.returncode}\t{result.stderr.strip()[:160]}\n")
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("refbench: warning")]
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    if result.returncode == 0:
        return
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("refbench: error: "), result.stderr


class Workspace:
    """A data root whose refs and instances are rewritten per example; images are the shared
    RefShapes copy's (a link), so an example costs milliseconds."""

    def __init__(self, shapes_root: Path, folder: Path):
        self.root = folder / "root"
        (self.root / "refshapes").mkdir(parents=True)
        (self.root / "images").symlink_to(shapes_root / "images")
        self.refs = pickle.loads((shapes_root / "refshapes" / "refs(unc).p").read_bytes())
        self.instances = json.loads((shapes_root / "refshapes" / "instances.json").read_text())
        self.counter = itertools.count()

    def write(self, refs: Any, instances: Any) -> None:
        (self.root / "refshapes" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
        (self.root / "refshapes" / "instances.json").write_text(
            json.dumps(instances, allow_nan=True))

    def run(self, *extra: str):
        out = self.root.parent / f"out{next(self.counter)}"
        return run_cli_here("run", "--methods", "gt_box,full_image", "--data-root", str(self.root),
                            "--split", "val", "--no-progress", "--out", str(out), *extra)


@pytest.fixture(scope="module")
def workspace(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    yield Workspace(shapes_root, tmp_path_factory.mktemp("fuzz"))
    if report := os.environ.get("REFBENCH_FUZZ_REPORT"):  # counts for a closing note
        Path(report).write_text(json.dumps({f"{w} exit {c}": n for (w, c), n in sorted(OUTCOMES.items())}))
    # a fuzzer that only ever met valid (or only invalid) input would test one side only
    for what in {w for w, _ in OUTCOMES}:
        assert {c for w, c in OUTCOMES if w == what} == {0, 2}, (what, OUTCOMES)


def _mutate(record: dict[str, Any], key: str, value: Any) -> None:
    if value is DELETE:
        record.pop(key, None)
    else:
        record[key] = value


def _copy(data: Any) -> Any:
    return pickle.loads(pickle.dumps(data))


REF_KEYS = ["ref_id", "ann_id", "image_id", "split", "category_id", "sentences", "sent_ids"]
SENTENCE_KEYS = ["sent_id", "raw", "sent", "tokens", "kind"]


@FUZZ
@given(data=st.data())
def test_refs_records(workspace: Workspace, data: st.DataObject):
    refs = _copy(workspace.refs)
    val = [r for r in refs if r["split"] == "val"]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        ref = data.draw(st.sampled_from(val), label="ref")
        if data.draw(st.booleans(), label="in a sentence") and isinstance(ref.get("sentences"), list) \
                and ref["sentences"] and isinstance(ref["sentences"][0], dict):
            _mutate(ref["sentences"][0], data.draw(st.sampled_from(SENTENCE_KEYS)), data.draw(MUTATION))
        else:
            _mutate(ref, data.draw(st.sampled_from(REF_KEYS)), data.draw(MUTATION))
    workspace.write(refs, workspace.instances)
    check_outcome(workspace.run(), "refs")


IMAGE_KEYS = ["id", "file_name", "height", "width"]
ANNOTATION_KEYS = ["id", "image_id", "category_id", "segmentation", "iscrowd", "area", "bbox"]
POLYGONS = st.lists(st.lists(st.one_of(st.floats(-50, 400), st.floats(allow_nan=True)),
                             min_size=0, max_size=9), min_size=0, max_size=3)


@FUZZ
@given(data=st.data())
def test_instances_records(workspace: Workspace, data: st.DataObject):
    instances = _copy(workspace.instances)
    used = {r["ann_id"] for r in workspace.refs if r["split"] == "val"}
    annotations = [a for a in instances["annotations"] if a["id"] in used]
    images = [i for i in instances["images"] if i["id"] in {a["image_id"] for a in annotations}]
    where = data.draw(st.sampled_from(["image", "annotation", "polygon", "top", "category"]))
    if where == "image":
        _mutate(data.draw(st.sampled_from(images)), data.draw(st.sampled_from(IMAGE_KEYS)), data.draw(MUTATION))
    elif where == "annotation":
        _mutate(data.draw(st.sampled_from(annotations)), data.draw(st.sampled_from(ANNOTATION_KEYS)),
                data.draw(MUTATION))
    elif where == "polygon":
        data.draw(st.sampled_from(annotations))["segmentation"] = data.draw(POLYGONS)
    elif where == "category":
        _mutate(data.draw(st.sampled_from(instances["categories"])), data.draw(st.sampled_from(["id", "name"])),
                data.draw(MUTATION))
    else:
        _mutate(instances, data.draw(st.sampled_from(["images", "annotations", "categories"])),
                data.draw(MUTATION))
    workspace.write(workspace.refs, instances)
    check_outcome(workspace.run(), "instances")


SET_KEYS = st.sampled_from(["gt_box.grow", "*.grow", "gt_box.gro", "full_image.grow", "vpd.grow",
                            "gt_box.", ".grow", "gt_box", "gt_box.grow.x"])
SET_VALUES = st.one_of(st.floats(-0.45, 0.95).map(str), st.text(max_size=10), st.floats(allow_nan=True).map(repr),
                       st.integers(-10**30, 10**30).map(str), st.sampled_from(["", "none", "[1]", "{}"]))


@FUZZ
@given(key=SET_KEYS, value=SET_VALUES, option=st.sampled_from(
    [[], ["--limit", "3"], ["--batch-size", "3"], ["--sweep-step", "0.3"], ["--threshold", "0.35"]]))
def test_set_values(workspace: Workspace, key: str, value: str, option: list[str]):
    workspace.write(workspace.refs, workspace.instances)
    check_outcome(workspace.run("--set", f"{key}={value}", *option), "--set")


SPEC_FIELDS = {
    "batch_size": "batch_size: {}", "seed": "seed: {}", "limit": "limit: {}",
    "sweep_step": "sweep_step: {}", "samples": "gallery:\n  samples: {}",
    "resamples": "statistics:\n  resamples: {}", "criterion": "calibration:\n  split: val\n  criterion: {}",
    "grow": "methods:\n  - name: gt_box\n    set: {{grow: {}}}", "tolerance": "regress:\n  tolerance: {{mIoU: {}}}",
    "splits": "datasets:\n  - name: refshapes\n    root: ROOT\n    splits: {}",
}
YAML_VALUES = st.one_of(st.integers(-5, 10**20).map(str), st.sampled_from(
    ["'half'", "-3", "0", "1.5", "nan", "[]", "{}", "null", "[val, nope]", "mIoU", "''", "true"]))


@settings(FUZZ, max_examples=40)  # each valid spec is a whole report (about 0.8 s)
@given(field_name=st.sampled_from(sorted(SPEC_FIELDS)), value=YAML_VALUES)
def test_spec_values(workspace: Workspace, field_name: str, value: str):
    sections = {
        "head": f"title: Fuzzed\nseed: 0\nbatch_size: 8\nlimit: 4\nstore: {workspace.root.parent}/store",
        "statistics": "statistics:\n  resamples: 100",
        "datasets": f"datasets:\n  - name: refshapes\n    root: {workspace.root}\n    splits: [testA]",
        "methods": "methods:\n  - name: gt_box\n  - name: full_image",
    }
    line = SPEC_FIELDS[field_name].format(value).replace("ROOT", str(workspace.root))
    key = line.split(":")[0]
    if key in ("datasets", "methods"):
        sections[key] = line
    else:
        sections["head"] = "\n".join(x for x in sections["head"].splitlines() if not x.startswith(key + ":"))
        sections[field_name] = line
    folder = workspace.root.parent / f"spec{next(workspace.counter)}"
    folder.mkdir()
    (folder / "reported.yaml").write_text(Path("leaderboards/reported.yaml").read_text())
    spec = folder / "spec.yaml"
    spec.write_text("\n".join(sections.values()) + "\n")
    check_outcome(run_cli_here("report", str(spec), "--out", str(folder / "site"), "--no-progress"), "spec")
