"""Readers for the real layouts, on RefShapes and on hand-made files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from refbench.data.coco import IGNORE, CocoSemanticDataset
from refbench.data.masks import area, decode, segmentation_to_rle
from refbench.data.refer import ReferDataset
from refbench.data.safe_pickle import load_plain_pickle
from refbench.errors import UserError


def test_overlapping_polygons_are_merged_not_summed():
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    shifted = [5, 0, 15, 0, 15, 10, 5, 10]
    rle = segmentation_to_rle([square, shifted], 12, 20, "test")
    mask = decode(rle)
    assert mask.dtype == bool and mask.max() == 1
    # union of [0,10)x[0,10) and [5,15)x[0,10), rasterised by pycocotools
    assert area(rle) == mask.sum()
    assert 140 <= mask.sum() <= 170


def test_empty_segmentation_is_a_user_error():
    with pytest.raises(UserError, match="segmentation is empty"):
        segmentation_to_rle([], 10, 10, "annotation 5")


def test_refer_reader_one_sample_per_sentence(shapes_root: Path):
    dataset = ReferDataset(shapes_root, "refshapes")
    refs = pickle.load(open(shapes_root / "refshapes" / "refs(unc).p", "rb"))
    instances = json.load(open(shapes_root / "refshapes" / "instances.json"))
    anns = {a["id"]: a for a in instances["annotations"]}
    samples = dataset.samples("val")
    expected = [(s["sent_id"], r["ann_id"]) for r in refs if r["split"] == "val" for s in r["sentences"]]
    assert [(int(s.sample_id), s.meta["ann_id"]) for s in samples] == expected
    for sample in samples:
        assert sample.meta["kind"] in {"attribute", "relation", "plain"}
        assert area(sample.gt) == anns[sample.meta["ann_id"]]["area"]
        assert sample.image_path.is_file()
    assert dataset.splits() == ["testA", "testB", "train", "val"]


def test_refer_unknown_split_suggests(shapes_root: Path):
    with pytest.raises(UserError, match="did you mean 'testA'"):
        ReferDataset(shapes_root, "refshapes").samples("testa")


def test_refer_split_by_is_checked():
    with pytest.raises(UserError, match="split-by"):
        ReferDataset(Path("/nonexistent"), "refcoco+", split_by="google")


def test_refer_missing_files_name_the_layout(tmp_path: Path):
    with pytest.raises(UserError, match=r"refs\(unc\)\.p.*instances\.json"):
        ReferDataset(tmp_path, "refcoco").samples("val")


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Exploit()}]))
    with pytest.raises(UserError, match="refused.*posix.system|refused.*os.system|refused.*nt.system"):
        load_plain_pickle(path)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_pickle_is_a_user_error(tmp_path: Path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"a": 1}] * 50)[:-20])
    with pytest.raises(UserError, match="corrupt"):
        load_plain_pickle(path)


def test_plain_pickle_with_sets_loads(tmp_path: Path):
    path = tmp_path / "ok.p"
    data = [{"a": (1, 2.5, "x"), "b": {1, 2}, "c": None, "d": b"raw"}]
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_plain_pickle(path) == data


def _coco_file(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    big = [0, 0, 20, 0, 20, 20, 0, 20]
    small = [5, 5, 10, 5, 10, 10, 5, 10]
    crowd_rle = {"size": [20, 30], "counts": [20 * 25, 20 * 5]}  # columns 25..29, uncompressed
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
            "categories": [{"id": 1, "name": "table"}, {"id": 2, "name": "cup"}, {"id": 3, "name": "dog"}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 2, "segmentation": [small], "iscrowd": 0},
                {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [big], "iscrowd": 0},
                {"id": 12, "image_id": 1, "category_id": 3, "segmentation": crowd_rle, "iscrowd": 1}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def test_coco_label_map_small_on_top_and_crowd_ignored(tmp_path: Path):
    dataset = CocoSemanticDataset(_coco_file(tmp_path))
    samples = dataset.samples("val")
    assert [(s.sample_id, s.expression) for s in samples] == [("1:1", "table"), ("1:2", "cup")]
    labels = dataset.label_map(1)
    assert labels[7, 7] == 2  # the cup stays visible on the table
    assert labels[1, 1] == 1 and labels[19, 22] == 0  # the table, and background beside it
    assert (labels[:, 25:] == IGNORE).all()
    for sample in samples:
        assert (decode(sample.gt) == (labels == sample.meta["category_id"])).all()
    assert {s.group for s in samples} == {"1"}


def test_coco_unknown_split(tmp_path: Path):
    with pytest.raises(UserError, match="did you mean 'val'"):
        CocoSemanticDataset(_coco_file(tmp_path)).samples("vall")


def test_refshapes_semantic_reader_matches_instances(shapes_root: Path):
    dataset = CocoSemanticDataset(shapes_root, image_subdir="images/train2014")
    samples = dataset.samples("val")
    assert samples and all(s.image_path.is_file() for s in samples)
    groups = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        union = np.zeros_like(decode(members[0].gt))
        for s in members:
            m = decode(s.gt)
            assert not (union & m).any()  # classes are disjoint in a label map
            union |= m
