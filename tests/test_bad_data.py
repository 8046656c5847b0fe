"""Bad data gets a one-line error naming the file, the record and the field: never a traceback,
never a figure computed from it. One test per class of case; each case is a real defect a user
met (see issue #20), run through the command line in this process."""

from __future__ import annotations

import codecs
import io
import json
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from refbench.data.masks import BadSegmentation, encode, rle_string_counts, segmentation_to_rle
from tests.conftest import assert_user_error, run_cli_here

REFS = Path("refshapes") / "refs(unc).p"
INSTANCES = Path("refshapes") / "instances.json"


def read_refs(root: Path) -> list[dict[str, Any]]:
    return pickle.loads((root / REFS).read_bytes())


def write_refs(root: Path, refs: Any) -> None:
    (root / REFS).write_bytes(pickle.dumps(refs, protocol=2))


def read_instances(root: Path) -> dict[str, Any]:
    return json.loads((root / INSTANCES).read_text())


def write_instances(root: Path, data: Any) -> None:
    (root / INSTANCES).write_text(json.dumps(data))


def val_ref(refs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in refs if r["split"] == "val")


def val_annotation(root: Path, data: dict[str, Any]) -> dict[str, Any]:
    ann_id = val_ref(read_refs(root))["ann_id"]
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def run(root: Path, *extra: str, methods: str = "gt_box"):
    return run_cli_here("run", "--methods", methods, "--data-root", str(root), "--no-progress",
                        "--out", str(root / "out"), *extra)


def refs_edit(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        refs = read_refs(root)
        change(refs)
        write_refs(root, refs)
    return apply


def instances_edit(change: Callable[[Path, dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        data = read_instances(root)
        change(root, data)
        write_instances(root, data)
    return apply


def _all_val_sent_ids_seven(refs):
    for ref in refs:
        if ref["split"] == "val":
            for sentence in ref["sentences"]:
                sentence["sent_id"] = 7


def _set_sentence(key, value):
    def change(refs):
        val_ref(refs)["sentences"][0][key] = value
    return change


def _set_ref(key, value):
    def change(refs):
        val_ref(refs)[key] = value
    return change


def _whitespace_expression(refs):
    sentence = val_ref(refs)["sentences"][0]
    sentence["raw"] = sentence["sent"] = "   "


REFS_CASES = {
    "duplicate sent_id": (refs_edit(_all_val_sent_ids_seven), ["sent_id", "7 is used again"]),
    "sentence without sent_id": (refs_edit(lambda r: val_ref(r)["sentences"][0].pop("sent_id")),
                                 ["sentences[0], sent_id is missing"]),
    "sentence is a string": (refs_edit(lambda r: val_ref(r)["sentences"].__setitem__(0, "a circle")),
                             ["sentences[0] is a str"]),
    "sentences None": (refs_edit(_set_ref("sentences", None)), ["sentences is missing"]),
    "raw is an int": (refs_edit(_set_sentence("raw", 5)), ["raw is 5 (int), not text"]),
    "category_id text": (refs_edit(_set_ref("category_id", "abc")), ["category_id is 'abc'"]),
    "unknown category": (refs_edit(_set_ref("category_id", 999)), ["category_id is 999"]),
    "ann_id missing from instances": (refs_edit(_set_ref("ann_id", 10**6)), ["ann_id is 1000000"]),
    "annotation on another image": (refs_edit(lambda r: val_ref(r).__setitem__(
        "image_id", next(x for x in r if x["image_id"] != val_ref(r)["image_id"])["image_id"])),
        ["image_id is", "but annotation"]),
    "whitespace expression": (refs_edit(_whitespace_expression), ["raw is empty ('   ')"]),
    "refs is a dict": (lambda root: write_refs(root, {"refs": []}), ["holds a dict, not a list"]),
    "ref is a list": (refs_edit(lambda r: r.__setitem__(0, [1, 2])), ["ref 0 is a list"]),
}


@pytest.mark.parametrize("case", REFS_CASES)
def test_bad_refs_record_is_named(case: str, shapes_copy: Path):
    damage, fragments = REFS_CASES[case]
    damage(shapes_copy)
    assert_user_error(run(shapes_copy), "refs(unc).p", *fragments)


def test_duplicated_sent_ids_no_longer_score_one_row_nine_times(shapes_copy: Path):
    """The issue's figure: nine sentences given one id scored one stored row nine times."""
    refs_edit(_all_val_sent_ids_seven)(shapes_copy)
    result = run(shapes_copy)
    assert result.returncode == 2 and "results:" not in result.stdout
    assert not (shapes_copy / "out" / "results.json").exists()


def _set_images(root, data):
    data["images"] = {"a": 1}


def _drop_image_key(key):
    def change(root, data):
        for image in data["images"]:
            image.pop(key)
    return change


def _set_all_images(key, value):
    def change(root, data):
        for image in data["images"]:
            image[key] = value
    return change


def _drop_annotation_ids(root, data):
    for ann in data["annotations"]:
        ann.pop("id")


def _segmentation(value):
    def change(root, data):
        val_annotation(root, data)["segmentation"] = value
    return change


INSTANCES_CASES = {
    "images is a dict": (instances_edit(_set_images), ["the top level, images is a dict"]),
    "image without height": (instances_edit(_drop_image_key("height")), ["images[0] (id 1), height is missing"]),
    "image without file_name": (instances_edit(_drop_image_key("file_name")), ["file_name is missing"]),
    "height with unit": (instances_edit(_set_all_images("height", "192px")), ["height is '192px' (str)"]),
    "zero width": (instances_edit(_set_all_images("width", 0)), ["width is 0, below 1"]),
    "annotation without id": (instances_edit(_drop_annotation_ids), ["annotations[0]", "id is missing"]),
    "categories is text": (instances_edit(lambda r, d: d.__setitem__("categories", "circle")),
                           ["categories is a str"]),
    "duplicate image id": (instances_edit(lambda r, d: d["images"].append(dict(d["images"][0]))),
                           ["id 1 is used again (first by images[0])"]),
    "duplicate annotation id": (instances_edit(lambda r, d: d["annotations"].append(dict(d["annotations"][0]))),
                                ["id 1 is used again (first by annotations[0])"]),
    "annotation on no image": (instances_edit(lambda r, d: d["annotations"][0].__setitem__("image_id", 10**6)),
                               ["image_id is 1000000, which no entry of 'images' has"]),
    "annotation of no category": (instances_edit(lambda r, d: d["annotations"][0].__setitem__("category_id", 999)),
                                  ["category_id is 999"]),
    "not an object": (lambda root: (root / INSTANCES).write_text("[1, 2]"), ["holds a JSON list"]),
    "RLE without size": (instances_edit(_segmentation({"counts": "abc"})), ["RLE without a valid size"]),
    "RLE of another size": (instances_edit(_segmentation(encode(np.ones((10, 10), bool)))),
                            ["RLE of size [10, 10], but its image is 192x256"]),
    "RLE runs too short": (instances_edit(_segmentation({"size": [192, 256], "counts": [5, 5]})),
                           ["runs cover 10 pixels"]),
    "zero-area polygon": (instances_edit(_segmentation([[10, 10, 10, 10, 10, 10]])), ["zero area"]),
    "collinear polygon": (instances_edit(_segmentation([[0, 0, 10, 10, 20, 20]])), ["zero area"]),
    "polygon outside the image": (instances_edit(_segmentation([[1000, 1000, 1100, 1000, 1100, 1100]])),
                                  ["outside the 256x192 image"]),
    "NaN coordinates": (instances_edit(_segmentation([[float("nan")] * 6])), ["not finite"]),
    "odd coordinate count": (instances_edit(_segmentation([[1, 1, 20, 1, 20, 20, 5]])), ["7 coordinates"]),
    "two-point polygon": (instances_edit(_segmentation([[1, 1, 20, 20]])), ["4 coordinates"]),
    "text coordinates": (instances_edit(_segmentation([["1", 1, 20, 1, 20, 20]])), ["not numbers"]),
    "empty segmentation": (instances_edit(_segmentation([])), ["segmentation is empty"]),
}


@pytest.mark.parametrize("case", INSTANCES_CASES)
def test_bad_instances_record_is_named(case: str, shapes_copy: Path):
    damage, fragments = INSTANCES_CASES[case]
    damage(shapes_copy)
    assert_user_error(run(shapes_copy), "instances.json", *fragments)


def test_polygon_checks_against_pycocotools():
    """A valid polygon gives pycocotools' own mask; vertices a little past the border (objects
    cut by it) are clipped as pycocotools clips them."""
    from pycocotools import mask as mask_utils

    for polygon in ([2.5, 3, 30, 4, 18, 25], [-3, -2, 40, 0, 41, 31]):
        ours = segmentation_to_rle([polygon], 30, 40)
        theirs = mask_utils.merge(mask_utils.frPyObjects([polygon], 30, 40))
        assert ours["counts"] == theirs["counts"].decode()
    with pytest.raises(BadSegmentation, match="outside"):
        segmentation_to_rle([[0, 0, 60, 0, 60, 20]], 30, 40)  # 50% past the border


def test_rle_string_decoder_matches_the_mask():
    """An independent decoder of COCO's compressed strings: its runs rebuild the mask."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = rng.integers(1, 50, 2)
        mask = rng.random((h, w)) < rng.random()
        runs = rle_string_counts(encode(mask)["counts"])
        flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])
        assert sum(runs) == h * w and np.array_equal(flat.reshape(w, h).T, mask)
    with pytest.raises(ValueError):
        rle_string_counts("0\x7f")


# -- empty ground truths ----------------------------------------------------------------------
def _empty_truth(root: Path) -> str:
    """Give the first val ref's annotation an empty (but well-formed) RLE; its sent ids."""
    data = read_instances(root)
    val_annotation(root, data)["segmentation"] = encode(np.zeros((192, 256), bool))
    write_instances(root, data)
    return [str(s["sent_id"]) for s in val_ref(read_refs(root))["sentences"]]


def test_empty_truth_is_an_error_unless_skipped_and_counted(shapes_copy: Path, shapes_root: Path,
                                                            tmp_path: Path):
    empty_ids = _empty_truth(shapes_copy)
    assert_user_error(run(shapes_copy), "empty ground truth", "--skip-empty-gt", f"sample {empty_ids[0]}")

    result = run(shapes_copy, "--skip-empty-gt")
    assert result.returncode == 0, result.stderr
    saved = json.loads((shapes_copy / "out" / "results.json").read_text())
    split = saved["dataset"]
    assert split["skipped_empty_gt"] == len(empty_ids)
    # the figure is the one computed without those samples: every other sample scores as before
    from refbench import evaluate

    full = evaluate("gt_box", "refshapes", "val", data_root=shapes_root)
    kept = full.rows[~full.rows["sample_id"].isin(empty_ids)]
    entry = next(iter(saved["results"].values()))
    assert entry["n"] == len(kept) == split["n_samples"]
    assert entry["metrics"]["mIoU"] == pytest.approx(kept["iou"].mean(), abs=1e-9)


# -- pickles ------------------------------------------------------------------------------------
class _CallsCodec:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def _persistent_pickle() -> bytes:
    buffer = io.BytesIO()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "outside" if obj == "OUT" else None

    Pickler(buffer).dump([{"ref_id": "OUT"}])
    return buffer.getvalue()


@pytest.mark.parametrize("payload, fragment", [
    (pickle.dumps([_CallsCodec()], protocol=2), "_codecs.encode with 'rot13'"),
    (_persistent_pickle(), "persistent id"),
    (b"\x80\x02]q\x00(K\x01", "corrupt"),
])
def test_odd_pickles_are_refused_in_one_line(payload: bytes, fragment: str, shapes_copy: Path):
    (shapes_copy / REFS).write_bytes(payload)
    assert_user_error(run(shapes_copy), "refs(unc).p", fragment)


def test_python2_style_bytes_still_load(tmp_path: Path):
    """Protocol 2 stores bytes through _codecs.encode(text, 'latin1'): still plain data."""
    from refbench.data.safe_pickle import load_plain_pickle

    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"raw": b"caf\xe9"}], protocol=2))
    assert load_plain_pickle(path) == [{"raw": b"caf\xe9"}]


# -- images -----------------------------------------------------------------------------------
GREY = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(GREY.astype(np.uint16) * 257),
    lambda: Image.fromarray(GREY.astype(np.int32) * 257, "I"),
    lambda: Image.fromarray(GREY.astype(np.float32) / 255, "F"),
    lambda: Image.fromarray(GREY.astype(np.float32), "F"),
    lambda: Image.fromarray(GREY, "L").convert("P"),
    lambda: Image.fromarray(GREY, "L").convert("LA"),
    lambda: Image.fromarray(GREY, "L").convert("RGBA"),
], ids=["I;16", "I", "F 0..1", "F 0..255", "P", "LA", "RGBA"])
def test_every_mode_becomes_the_same_8bit_rgb(make: Callable[[], Image.Image]):
    from refbench.data.images import to_rgb8

    image = make()
    rgb = to_rgb8(image)
    assert image.mode != "RGB" and rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert np.array_equal(rgb, np.repeat(GREY[:, :, None], 3, axis=2))


def test_sixteen_bit_png_is_scaled_not_white(tmp_path: Path):
    from refbench.data.images import load_rgb

    path = tmp_path / "deep.png"
    Image.fromarray(GREY.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.array_equal(load_rgb(path)[:, :, 0], GREY)


def test_unscalable_images_are_refused(tmp_path: Path):
    from refbench.data.images import to_rgb8
    from refbench.errors import UserError

    with pytest.raises(UserError, match="outside 16-bit range"):
        to_rgb8(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I"))
    with pytest.raises(UserError, match="outside 0..255"):
        to_rgb8(Image.fromarray(np.array([[0, 300.0]], dtype=np.float32), "F"))


def test_pixel_limit_is_one_line_naming_the_option(shapes_copy: Path):
    result = run(shapes_copy, "--max-image-pixels", "1000")
    assert_user_error(result, "256x192 (49,152 pixels)", "--max-image-pixels 49152")
    assert run(shapes_copy, "--max-image-pixels", "100000").returncode == 0  # the largest: 256x224


def test_image_of_other_size_or_garbage_fails_before_computing(shapes_copy: Path):
    data = read_instances(shapes_copy)
    image = next(i for i in data["images"] if i["id"] == val_ref(read_refs(shapes_copy))["image_id"])
    path = shapes_copy / "images" / "train2014" / image["file_name"]
    Image.new("RGB", (10, 10)).save(path, format="JPEG")
    assert_user_error(run(shapes_copy), "is 10x10 but the annotations say 256x192")
    path.write_bytes(b"not an image")
    assert_user_error(run(shapes_copy), "cannot be read", image["file_name"])
    from refbench.store import Store

    if (shapes_copy / "out" / "store.sqlite").exists():
        with Store(shapes_copy / "out" / "store.sqlite") as store:
            assert all(store.count(r["run_key"]) == 0 for r in store.runs())


# -- data check ---------------------------------------------------------------------------------
def test_data_check_lists_every_problem_with_a_summary(shapes_copy: Path, shapes_root: Path):
    clean = run_cli_here("data", "check", "--data-root", str(shapes_root))
    assert clean.returncode == 0, clean.stderr
    assert "RGB 8-bit" in clean.stdout and clean.stdout.count(" ok") == 4

    data = read_instances(shapes_copy)
    val_annotation(shapes_copy, data)["segmentation"] = [[10, 10, 10, 10, 10, 10]]
    data["annotations"][3]["segmentation"] = [[1, 2, 3]]
    write_instances(shapes_copy, data)
    refs = read_refs(shapes_copy)
    refs[0]["sentences"][0]["sent_id"] = refs[1]["sentences"][0]["sent_id"]
    write_refs(shapes_copy, refs)
    victim = shapes_copy / "images" / "train2014" / data["images"][2]["file_name"]
    victim.write_bytes(b"garbage")

    result = run_cli_here("data", "check", "--data-root", str(shapes_copy))
    assert_user_error(result, "4 problem(s)")
    listed = [line for line in result.stdout.splitlines() if line.startswith("- ")]
    assert len(listed) == 4
    assert any("zero area" in line for line in listed)
    assert any("3 coordinates" in line for line in listed)
    assert any("is used again" in line for line in listed)
    assert any(victim.name in line and "cannot be read" in line for line in listed)
    assert "FAIL" in result.stdout


def test_run_checks_headers_but_data_check_decodes(shapes_copy: Path):
    """A file whose header is fine but whose pixels are cut off: run finds it when it decodes;
    data check finds it up front."""
    data = read_instances(shapes_copy)
    image = next(i for i in data["images"] if i["id"] == val_ref(read_refs(shapes_copy))["image_id"])
    path = shapes_copy / "images" / "train2014" / image["file_name"]
    path.write_bytes(path.read_bytes()[:400])
    result = run_cli_here("data", "check", "--data-root", str(shapes_copy), "--split", "val")
    assert_user_error(result, "1 problem(s)")
    assert "cannot be decoded" in result.stdout or "cannot be read" in result.stdout


def test_report_specs_can_skip_empty_truths_too(tmp_path: Path):
    from refbench.report.build import settings_of
    from refbench.report.spec import load_spec

    (tmp_path / "reported.yaml").write_text((Path("leaderboards") / "reported.yaml").read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(Path("leaderboards/refshapes.yaml").read_text() + "\nskip_empty_gt: true\n")
    assert settings_of(load_spec(spec), progress=False).skip_empty_gt is True
    spec.write_text(Path("leaderboards/refshapes.yaml").read_text())
    assert settings_of(load_spec(spec), progress=False).skip_empty_gt is False


def test_a_calibration_split_the_data_lacks_is_named_as_such(shapes_root: Path, tmp_path: Path):
    """COCO-Object's split is val2017: the default calibration split, val, is not there."""
    result = run_cli_here("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--split",
                          "testA", "--calibration-split", "val2017", "--out", str(tmp_path / "o"))
    assert_user_error(result, "calibration split 'val2017' is not a split of refshapes",
                      "testA, testB, train, val", "'none'")
