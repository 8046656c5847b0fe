"""VOC, Pascal Context and COCO-Object readers on tiny fixtures written in the exact layouts
(palette PNGs for VOC, greyscale for Context and COCO-Object), with gt_box's semantic mIoU
computed by hand."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refbench.data.label_maps import LabelMapDataset, image_ids
from refbench.data.label_names import COCO_OBJECT, CONTEXT, VOC
from refbench.data.masks import decode
from refbench.data.source import DataSource, open_dataset
from refbench.errors import UserError
from tests.conftest import run_cli

H, W = 32, 48


def _voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved class index), as its palette PNGs carry it."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def _write_labels(path: Path, labels: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P" if palette else "L", (labels.shape[1], labels.shape[0]), labels.tobytes())
    if palette:
        image.putpalette(_voc_palette())
    image.save(path)


def voc_labels() -> dict[str, np.ndarray]:
    a = np.zeros((H, W), np.uint8)
    a[0, :] = 255                      # a boundary row, ignored
    a[4:12, 4:12] = 15                 # person: an L shape, 64 + 32 = 96 pixels
    a[12:20, 4:8] = 15
    a[12:20, 8] = 255                  # ignored pixels inside the person's box
    a[20:28, 30:42] = 16               # pottedplant: a rectangle, 96 pixels
    b = np.zeros((H, W), np.uint8)
    b[2:10, 2:10] = 15                 # person, partly covered by ...
    b[6:14, 6:14] = 9                  # ... a chair (the overlap is chair's)
    return {"2007_000001": a, "2007_000002": b}


def context_labels() -> dict[str, np.ndarray]:
    a = np.zeros((H, W), np.uint8)
    a[0:16, 0:8] = 2                   # bag: an L shape, 128 + 64 = 192 pixels
    a[8:16, 8:16] = 2
    a[16:32, 32:48] = 59               # wood: a rectangle, 256 pixels
    return {"2008_000001": a}


def coco_object_labels() -> dict[str, np.ndarray]:
    a = np.zeros((H, W), np.uint8)
    a[0:8, 0:8] = 1                    # person, 64 pixels
    a[16:24, 16:32] = 80               # toothbrush: an L shape, 128 + 32 = 160 pixels
    a[24:32, 16:20] = 80
    a[24:32, 28:32] = 255              # ignored pixels inside the toothbrush's box
    return {"000000000139": a, "000000000285": np.zeros((H, W), np.uint8)}  # 285: nothing present


@pytest.fixture(scope="module")
def zeroshot_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("zeroshot")
    voc = base / "VOCdevkit" / "VOC2012"
    for i, (name, labels) in enumerate(voc_labels().items()):
        _write_image(voc / "JPEGImages" / f"{name}.jpg", i)
        _write_labels(voc / "SegmentationClass" / f"{name}.png", labels, palette=True)
    _write_image(voc / "JPEGImages" / "2007_000003.jpg", 9)
    _write_labels(voc / "SegmentationClass" / "2007_000003.png", np.full((H, W), 3), palette=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000003\n")

    context = base / "VOCdevkit" / "VOC2010"
    for name, labels in context_labels().items():
        _write_image(context / "JPEGImages" / f"{name}.jpg", 3)
        _write_labels(context / "SegmentationClassContext" / f"{name}.png", labels, palette=False)
    (context / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (context / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000001\n")

    coco = base / "coco"
    for i, (name, labels) in enumerate(coco_object_labels().items()):
        _write_image(coco / "images" / "val2017" / f"{name}.jpg", 4 + i)
        _write_labels(coco / "annotations" / "val2017" / f"{name}_instanceTrainIds.png", labels,
                      palette=False)
    return {"voc": voc, "context": context, "coco-object": coco}


# Hand-computed: per-class IoU over the summed confusion (255 ignored), mean over classes seen.
# gt_box fills each class's box; a pixel takes the first class (lowest id) where boxes overlap.
EXPECTED = {
    # background: 2688 right of 2712 (24 valid pixels of the person's box are background);
    # person: 144 of its 168 predicted pixels; chair and pottedplant exact
    "voc": (Fraction(2688, 2712) + Fraction(144, 168) + 1 + 1) / 4,
    # background 1024 / 1088 (64 pixels of the bag's box), bag 192 / 256, wood exact
    "context": (Fraction(1024, 1088) + Fraction(192, 256) + 1) / 3,
    # background 1216 / 1280 (64 valid pixels of the toothbrush's box), toothbrush 160 / 224
    "coco-object": (Fraction(1216, 1280) + 1 + Fraction(160, 224)) / 3,
}
SPLIT = {"voc": "val", "context": "val", "coco-object": "val2017"}


def test_label_sets_have_the_published_sizes():
    for labels, size in ((VOC, 21), (CONTEXT, 60), (COCO_OBJECT, 81)):
        assert len(labels.classes) == len(set(labels.classes)) == size
    assert VOC.prompts()[16] == "potted plant" and VOC.prompts()[11] == "dining table"
    assert VOC.prompts("diffsegmenter")[15] == "people" and CONTEXT.prompts("groupvit")[1] == "airplane"
    assert COCO_OBJECT.prompts()[80] == "toothbrush"


def test_voc_samples_one_per_class_present(host, zeroshot_roots):
    dataset = open_dataset(host, DataSource("voc", zeroshot_roots["voc"]))
    assert dataset.splits() == ["train", "val"]
    samples = dataset.samples("val")
    assert [(s.sample_id, s.expression, s.group) for s in samples] == [
        ("2007_000001:15", "person", "2007_000001"), ("2007_000001:16", "potted plant", "2007_000001"),
        ("2007_000002:9", "chair", "2007_000002"), ("2007_000002:15", "person", "2007_000002")]
    assert [s.image_id for s in samples] == [2007000001, 2007000001, 2007000002, 2007000002]
    labels = voc_labels()
    for s in samples:
        assert (decode(s.gt) == (labels[s.group] == s.meta["category_id"])).all()
        assert s.image_path.is_file() and (s.height, s.width) == (H, W) and s.is_class_name
    assert (dataset.label_map(2007000001) == labels["2007_000001"]).all()  # 255 kept as ignore


def test_coco_object_skips_images_with_no_class(host, zeroshot_roots):
    dataset = open_dataset(host, DataSource("coco-object", zeroshot_roots["coco-object"]))
    assert dataset.splits() == ["val2017"]
    assert [(s.sample_id, s.expression) for s in dataset.samples("val2017")] == [
        ("000000000139:1", "person"), ("000000000139:80", "toothbrush")]


def test_prompt_preset_is_an_option(host, zeroshot_roots):
    dataset = open_dataset(host, DataSource("voc", zeroshot_roots["voc"],
                                            {"prompt_names": "diffsegmenter"}))
    assert [s.expression for s in dataset.samples("val")] == ["people", "plant", "chair", "people"]
    with pytest.raises(UserError, match="did you mean 'groupvit'"):
        open_dataset(host, DataSource("voc", zeroshot_roots["voc"], {"prompt_names": "groupvi"}))


def test_bad_label_maps_are_user_errors(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    dataset = LabelMapDataset(root, "voc", "voc", "JPEGImages", "SegmentationClass",
                              "ImageSets/Segmentation/{split}.txt")
    with pytest.raises(UserError, match="missing label map .*a.png"):
        dataset.samples("val")
    (root / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(UserError, match="RGB image, not class indices"):
        dataset.samples("val")
    Image.fromarray(np.full((4, 4), 21, np.uint8)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(UserError, match="value 21, outside 0..20"):
        dataset.samples("val")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\na\n")
    with pytest.raises(UserError, match="lists 'a' twice"):
        LabelMapDataset(root, "voc", "voc", "JPEGImages", "SegmentationClass",
                        "ImageSets/Segmentation/{split}.txt").samples("val")
    with pytest.raises(UserError, match="did you mean 'val'"):
        dataset.samples("vall")


def test_image_ids_from_numeric_names_else_positions():
    assert image_ids(["2007_000033", "2008_000002"]) == {"2007_000033": 2007000033, "2008_000002": 2008000002}
    assert image_ids(["b", "a"]) == {"a": 1, "b": 2}


@pytest.mark.parametrize("name", ["voc", "context", "coco-object"])
def test_gt_box_semantic_miou_through_the_cli(name, zeroshot_roots, tmp_path):
    """The command as a user types it. VOC and Context report val, so nothing is calibrated;
    COCO-Object has no val (its split is val2017), so the default calibration split gives way
    to the fixed threshold, as the default does when val is reported."""
    out = tmp_path / name
    result = run_cli("run", "--methods", "gt_box", "--dataset", name, "--split", SPLIT[name],
                     "--data-root", str(zeroshot_roots[name]), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    semantic = json.loads((out / "results.json").read_text())["results"]["gt_box"]["semantic"]
    assert semantic["mIoU"] == pytest.approx(float(EXPECTED[name]), abs=1e-9)
    assert semantic["classes"] == {"voc": 4, "context": 3, "coco-object": 3}[name]


def test_zeroshot_spec_shows_both_protocols_with_every_reported_row():
    from refbench.report.spec import load_spec
    from tests.conftest import REPO

    spec = load_spec(REPO / "leaderboards" / "zeroshot.yaml")
    reported_on = {(d.name, split) for d in spec.datasets for split in d.splits}
    assert reported_on == {("voc", "val"), ("voc20", "val"), ("context", "val"), ("pc59", "val"),
                           ("coco-object", "val2017"), ("coco-object80", "val2017"),
                           ("ade20k", "validation"), ("cityscapes", "val")}
    assert {m.name for m in spec.methods} >= {"diffsegmenter", "iseg", "seg4diff", "goca"}
    figures = {(r.dataset, r.split, r.method): r.metrics["semantic_mIoU"] for r in spec.reported}
    assert figures[("voc", "val", "DiffSegmenter")] == 60.1
    assert figures[("voc20", "val", "Seg4Diff (training-free)")] == 89.2
    assert figures[("ade20k", "validation", "Seg4Diff (training-free)")] == 34.2
    for row in spec.reported:  # every semantic figure records its protocol
        assert row.background is not None and row.image_labels, row.id
        assert row.background == (row.dataset in ("voc", "context", "coco-object")), row.id
    assert spec.dataset("coco-object").calibration_split == "train2017"
