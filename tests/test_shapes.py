"""RefShapes: deterministic, real layouts, expressions that make attribute binding matter."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

from refbench.data.shapes import ShapesConfig, generate

COUNTS = {"train": 3, "val": 4, "testA": 2, "testB": 2}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path):
    generate(tmp_path / "a", ShapesConfig(seed=3, images=COUNTS))
    generate(tmp_path / "b", ShapesConfig(seed=3, images=COUNTS))
    generate(tmp_path / "c", ShapesConfig(seed=4, images=COUNTS))
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_and_expression_kinds(shapes_root: Path):
    refs = pickle.load(open(shapes_root / "refshapes" / "refs(unc).p", "rb"))
    instances = json.load(open(shapes_root / "refshapes" / "instances.json"))
    for split in ("train", "val", "testA", "testB"):
        assert (shapes_root / "annotations" / f"instances_{split}.json").is_file()
        assert any(r["split"] == split for r in refs)
    anns = {a["id"]: a for a in instances["annotations"]}
    by_image: dict[int, list[dict]] = {}
    for a in instances["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    kinds = set()
    for ref in refs:
        ann = anns[ref["ann_id"]]
        shape, colour = categories[ann["category_id"]], ann["attributes"]["colour"]
        same_shape = [a for a in by_image[ref["image_id"]]
                      if a["category_id"] == ann["category_id"] and a["id"] != ann["id"]]
        for sentence in ref["sentences"]:
            kinds.add(sentence["kind"])
            assert shape in sentence["raw"]
            if sentence["kind"] == "attribute":
                # a distractor of the same shape in another colour is in the scene
                assert colour in sentence["raw"] and same_shape
                assert all(a["attributes"]["colour"] != colour for a in same_shape)
            if sentence["kind"] == "plain":
                assert not same_shape and sentence["raw"].split()[-1] == shape
            if sentence["kind"] == "relation":
                assert any(w in sentence["raw"] for w in ("left of", "right of", "above", "below"))
    assert kinds == {"attribute", "relation", "plain"}


def test_attribute_subset_is_exactly_the_attribute_sentences(shapes_root: Path):
    from refbench.data.source import DataSource, open_dataset
    from refbench.plugins import PluginHost

    host = PluginHost()
    full = open_dataset(host, DataSource("refshapes", shapes_root))
    subset = open_dataset(host, DataSource("refshapes-attribute", shapes_root))
    for split in ("val", "testB"):
        expected = [s.sample_id for s in full.samples(split) if s.meta["kind"] == "attribute"]
        assert expected and [s.sample_id for s in subset.samples(split)] == expected
        assert subset.fingerprint(split) != full.fingerprint(split)
