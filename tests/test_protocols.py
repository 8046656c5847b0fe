"""The two open-vocabulary protocols (with background: VOC21, Context60, COCO-Object81; without:
VOC20, PC59, COCO-Object80) and the ADE20K-150 and Cityscapes-19 readers, on fixtures written in
mmsegmentation's layouts, with gt_box's semantic mIoU computed by hand.

One geometry serves every data set: class A is an L shape (96 pixels) whose bounding box
(16 x 8 = 128 pixels) also holds 16 pixels of class B (a higher label, so gt_box's tie inside the
overlap goes to A) and 16 pixels of background (or, on ADE20K and Cityscapes, of an ignored
value). gt_box scores 1 inside each class's box.

With background (VOC21): background IoU 1408 / 1424 (the 16 background pixels inside A's box are
predicted A), A 96 / 128, B 0 / 16, so mIoU = (1408/1424 + 96/128 + 0) / 3 over 3 classes.
Without background (VOC20): background pixels are ignored, so A is predicted on 112 counted
pixels: A 96 / 112, B 0 / 16, mIoU = (96/112 + 0) / 2 = 3/7 over 2 classes.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from refbench.data.label_names import ADE20K, CITYSCAPES
from refbench.data.source import DataSource, open_dataset
from refbench.errors import UserError
from refbench.results.scoring import image_confusion
from tests.conftest import run_cli_here
from tests.test_zeroshot_readers import H, W, _write_image, _write_labels

WITH_BACKGROUND = (Fraction(1408, 1424) + Fraction(96, 128) + 0) / 3
WITHOUT_BACKGROUND = (Fraction(96, 112) + 0) / 2


def _geometry(a: int, b: int, rest: int, hole: int) -> np.ndarray:
    labels = np.full((H, W), rest, np.uint8)
    labels[4:12, 4:12] = a
    labels[12:20, 4:8] = a
    labels[12:20, 8:10] = b
    labels[12:20, 10:12] = hole
    return labels


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("protocols")
    voc = base / "VOCdevkit" / "VOC2012"
    _write_image(voc / "JPEGImages" / "2007_000001.jpg", 0)
    _write_labels(voc / "SegmentationClass" / "2007_000001.png", _geometry(15, 16, 0, 0), palette=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")

    ade = base / "ADEChallengeData2016"
    _write_image(ade / "images" / "validation" / "ADE_val_00000001.jpg", 1)
    # wall (1) and flag (150); value 0 ("other") is ignored
    _write_labels(ade / "annotations" / "validation" / "ADE_val_00000001.png",
                  _geometry(1, 150, 0, 0), palette=False)

    city = base / "cityscapes"
    stem = "frankfurt_000000_000294"
    path = city / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png"
    path.parent.mkdir(parents=True)
    from PIL import Image
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    # trainIds: road (0) and bicycle (18); everything else 255 (not evaluated)
    _write_labels(city / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelTrainIds.png",
                  _geometry(0, 18, 255, 255), palette=False)
    return {"voc": voc, "voc20": voc, "ade20k": ade, "cityscapes": city}


def _semantic(roots, name: str, split: str, tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "run"
    extra = [a for option in options for a in ("--data-option", option)]
    result = run_cli_here("run", "--methods", "gt_box", "--dataset", name, "--split", split,
                          "--data-root", str(roots[name]), "--out", str(out), "--no-progress", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "results.json").read_text())


def test_voc21_and_voc20_by_hand(roots, tmp_path):
    with_bg = _semantic(roots, "voc", "val", tmp_path / "21")
    without = _semantic(roots, "voc", "val", tmp_path / "20", "background=false")
    for results, expected, classes, benchmark in ((with_bg, WITH_BACKGROUND, 3, "VOC21"),
                                                  (without, WITHOUT_BACKGROUND, 2, "VOC20")):
        semantic = results["results"]["gt_box"]["semantic"]
        assert semantic["mIoU"] == pytest.approx(float(expected), abs=1e-12)
        assert semantic["classes"] == classes
        assert results["dataset"]["benchmark"] == benchmark
    assert with_bg["dataset"]["fingerprint"] != without["dataset"]["fingerprint"]


def test_ade20k_150_by_hand(host, roots, tmp_path):
    dataset = open_dataset(host, DataSource("ade20k", roots["ade20k"]))
    assert dataset.splits() == ["validation"]
    assert [(s.sample_id, s.expression) for s in dataset.samples("validation")] == [
        ("ADE_val_00000001:1", "wall"), ("ADE_val_00000001:150", "flag")]
    results = _semantic(roots, "ade20k", "validation", tmp_path)
    assert results["results"]["gt_box"]["semantic"]["mIoU"] == pytest.approx(float(WITHOUT_BACKGROUND))
    assert results["dataset"]["benchmark"] == "ADE20K-150"


def test_cityscapes_19_by_hand(host, roots, tmp_path):
    dataset = open_dataset(host, DataSource("cityscapes", roots["cityscapes"]))
    samples = dataset.samples("val")
    assert [(s.sample_id, s.expression) for s in samples] == [
        ("frankfurt/frankfurt_000000_000294:1", "road"), ("frankfurt/frankfurt_000000_000294:19", "bicycle")]
    assert samples[0].image_path.is_file()
    labels = dataset.label_map(samples[0].image_id)
    assert set(np.unique(labels)) == {1, 19, 255}  # trainIds shifted by one; 255 kept
    results = _semantic(roots, "cityscapes", "val", tmp_path)
    assert results["results"]["gt_box"]["semantic"]["mIoU"] == pytest.approx(float(WITHOUT_BACKGROUND))
    assert results["dataset"]["benchmark"] == "Cityscapes-19"


def test_label_sets_of_the_new_readers():
    assert len(ADE20K.classes) == len(set(ADE20K.classes)) == 151 and ADE20K.classes[150] == "flag"
    assert len(CITYSCAPES.classes) == 20 and CITYSCAPES.classes[1] == "road"
    assert not ADE20K.has_background and ADE20K.benchmark(False) == "ADE20K-150"


def test_no_background_data_refuse_the_background_protocol(host, roots):
    with pytest.raises(UserError, match="no background class"):
        open_dataset(host, DataSource("ade20k", roots["ade20k"], {"background": "true"}))
    result = run_cli_here("run", "--methods", "gt_box", "--dataset", "voc", "--data-root",
                          str(roots["voc"]), "--data-option", "background")
    assert result.returncode == 2 and "not KEY=VALUE" in result.stderr
    result = run_cli_here("run", "--methods", "gt_box", "--dataset", "voc", "--data-root",
                          str(roots["voc"]), "--data-option", "backgrund=false")
    assert result.returncode == 2 and "did you mean 'background'" in result.stderr


def test_without_background_every_threshold_is_the_argmax():
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    scores = np.array([[[0.9, 0.2], [0.1, 0.0]], [[0.0, 0.1], [0.3, 0.0]]], np.float32)  # class 1, 2
    with_bg = image_confusion(scores, [1, 2], labels, (0.25, 0.5))
    assert with_bg[1].tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 0]]  # at 0.5 only the 0.9 counts
    no_bg = image_confusion(scores, [1, 2], np.where(labels == 0, 255, labels).astype(np.uint8),
                            (0.25, 0.5), background=False)
    for confusion in no_bg:  # both thresholds: class 1's pixel wins by argmax, class 2's too
        assert confusion.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_voc20_is_voc_without_background(roots, tmp_path):
    by_name = _semantic(roots, "voc20", "val", tmp_path / "named")
    by_option = _semantic(roots, "voc", "val", tmp_path / "option", "background=false")
    assert by_name["results"]["gt_box"]["semantic"]["mIoU"] == pytest.approx(float(WITHOUT_BACKGROUND))
    assert by_name["dataset"]["benchmark"] == by_option["dataset"]["benchmark"] == "VOC20"


def test_a_method_is_told_the_protocol(roots, tmp_path):
    """Batch.background: True under VOC21, False under VOC20, None on referring data."""
    import refbench
    from refbench.method import Prediction

    class Recorder:
        reads_pixels = False

        def __init__(self):
            self.seen = set()

        def predict(self, batch):
            self.seen.add(batch.background)
            return [Prediction(mask=np.zeros((s.height, s.width), bool)) for s in batch.samples]

    for name, expected in (("voc", True), ("voc20", False)):
        recorder = Recorder()
        refbench.evaluate([recorder], name, "val", data_root=roots[name], calibration=None,
                          store=tmp_path / f"{name}.sqlite", progress=False)
        assert recorder.seen == {expected}
