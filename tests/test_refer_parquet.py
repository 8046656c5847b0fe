"""The parquet layouts of three hub RefCOCO data sets, written from one RefShapes set: each
reader's samples equal the REFER reader's on the same content."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from refbench.data.parquet import hub_repo  # noqa: E402
from refbench.data.refer import ReferDataset  # noqa: E402
from refbench.data.source import DataSource, open_dataset  # noqa: E402
from refbench.errors import UserError  # noqa: E402

HUB_SPLIT = {"train": "train", "val": "validation", "testA": "test", "testB": "testB"}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _hub_sentences(ref: dict) -> list[dict]:
    return [{k: s[k] for k in ("raw", "sent", "sent_id", "tokens")} for s in ref["sentences"]]


@pytest.fixture(scope="module")
def content(shapes_root: Path):
    refs = pickle.loads((shapes_root / "refshapes" / "refs(unc).p").read_bytes())
    instances = json.loads((shapes_root / "refshapes" / "instances.json").read_text())
    return refs, {i["id"]: i for i in instances["images"]}, {a["id"]: a for a in instances["annotations"]}


def _polygonal(refs: list[dict], anns: dict, split: str) -> list[dict]:
    """A split's refs whose object is drawn as polygons (two hub schemas have no RLE field)."""
    return [r for r in refs if r["split"] == split and isinstance(anns[r["ann_id"]]["segmentation"], list)]


def _write_benchmark(root: Path, refs: list[dict], images: dict, anns: dict) -> None:
    for split in ("val", "testA", "testB"):
        by_image: dict[int, list[dict]] = {}
        for ref in _polygonal(refs, anns, split):
            ann = anns[ref["ann_id"]]
            by_image.setdefault(ref["image_id"], []).append({
                "ann_info": {k: ann[k] for k in ("area", "bbox", "category_id", "id", "image_id",
                                                 "iscrowd", "segmentation")},
                "ref_info": {"ann_id": ref["ann_id"], "category_id": ref["category_id"],
                             "file_name": ref["file_name"], "image_id": ref["image_id"],
                             "ref_id": ref["ref_id"], "sent_ids": ref["sent_ids"],
                             "sentences": _hub_sentences(ref), "split": split}})
        _write(root / "data" / f"refcoco_unc_{split}-00000-of-00001-0123abcd.parquet",
               [{"ref_list": ref_list, "image_info": {**images[image_id], "coco_url": "",
                                                      "date_captured": "", "license": 0}}
                for image_id, ref_list in by_image.items()])


def _write_rows(root: Path, refs: list[dict], images: dict, anns: dict) -> None:
    for split, hub_split in HUB_SPLIT.items():
        _write(root / "data" / f"{hub_split}-00000-of-00001.parquet", [{
            "sent_ids": r["sent_ids"], "file_name": r["file_name"], "ann_id": r["ann_id"],
            "ref_id": r["ref_id"], "image_id": r["image_id"], "split": r["split"],
            "sentences": _hub_sentences(r), "category_id": r["category_id"],
            "raw_anns": json.dumps(anns[r["ann_id"]]), "raw_image_info": json.dumps(images[r["image_id"]]),
            "raw_sentences": json.dumps(_hub_sentences(r)),
            "image_path": f"coco/train2014/{images[r['image_id']]['file_name']}",
            "bbox": [float(v) for v in anns[r["ann_id"]]["bbox"]],
            "captions": [s["sent"] for s in r["sentences"]], "global_image_id": f"coco.{r['image_id']}",
            "anns_id": str(r["ann_id"])} for r in refs if r["split"] == split])


def _write_lmms(root: Path, refs: list[dict], images: dict, anns: dict, image_dir: Path) -> None:
    for split in ("val", "testA", "testB"):
        _write(root / "data" / f"{split}-00000-of-00001.parquet", [{
            "question_id": f"q{r['ref_id']}",
            "image": {"bytes": (image_dir / images[r["image_id"]]["file_name"]).read_bytes(), "path": None},
            "question": "Please provide a short description for this region.",
            "answer": [s["sent"] for s in r["sentences"]],
            "segmentation": [float(v) for v in anns[r["ann_id"]]["segmentation"][0]],
            "bbox": [float(v) for v in anns[r["ann_id"]]["bbox"]], "iscrowd": 0,
            "file_name": images[r["image_id"]]["file_name"]} for r in _polygonal(refs, anns, split)])


@pytest.fixture(scope="module")
def roots(content, shapes_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("parquet")
    _write_benchmark(base / "benchmark", *content)
    _write_rows(base / "rows", *content)
    _write_lmms(base / "lmms", *content, shapes_root / "images" / "train2014")
    return {"benchmark": base / "benchmark", "rows": base / "rows", "lmms": base / "lmms"}


def _key(sample, with_id: bool = True) -> tuple:
    return ((sample.sample_id,) if with_id else ()) + (
        sample.image_id, sample.expression, dict(sample.gt), sample.image_path.name,
        (sample.height, sample.width))


def test_refer_rows_layout_equals_refer(host, shapes_root, roots):
    refer = ReferDataset(shapes_root, "refshapes")
    rows = open_dataset(host, DataSource("refcoco-parquet", roots["rows"],
                                         {"image_dir": str(shapes_root / "images" / "train2014")}))
    assert rows.splits() == refer.splits() == ["testA", "testB", "train", "val"]
    for split in ("val", "testB"):
        expected, got = refer.samples(split), rows.samples(split)
        assert [_key(s) for s in got] == [_key(s) for s in expected] and got
        assert all(g.image_path == e.image_path for g, e in zip(got, expected))
        assert [(g.meta["ref_id"], g.meta["ann_id"]) for g in got] == [
            (e.meta["ref_id"], e.meta["ann_id"]) for e in expected]
        assert rows.fingerprint(split) != rows.fingerprint("testA")


def test_benchmark_layout_equals_refer_on_polygon_objects(host, shapes_root, content, roots):
    refs, _, anns = content
    refer = ReferDataset(shapes_root, "refshapes")
    bench = open_dataset(host, DataSource("refcoco-benchmark", roots["benchmark"],
                                          {"image_dir": str(shapes_root / "images" / "train2014")}))
    assert bench.splits() == ["refcoco_unc_testA", "refcoco_unc_testB", "refcoco_unc_val"]
    for split in ("val", "testA", "testB"):
        polygonal = {r["ann_id"] for r in _polygonal(refs, anns, split)}
        expected = [s for s in refer.samples(split) if s.meta["ann_id"] in polygonal]
        got = bench.samples(f"refcoco_unc_{split}")
        assert [_key(s) for s in got] == [_key(s) for s in expected] and got


def test_lmms_layout_equals_refer_but_for_ids(host, shapes_root, content, roots, tmp_path):
    refs, _, anns = content
    refer = ReferDataset(shapes_root, "refshapes")
    lmms = open_dataset(host, DataSource("refcoco-lmms", roots["lmms"], {"image_dir": str(tmp_path)}))
    assert lmms.splits() == ["testA", "testB", "val"]
    got = lmms.samples("testB")
    by_ref = {r["ref_id"]: r for r in _polygonal(refs, anns, "testB")}
    expected = [s for s in refer.samples("testB") if s.meta["ref_id"] in by_ref]
    assert [_key(s, with_id=False) for s in got] == [_key(s, with_id=False) for s in expected] and got
    assert [s.sample_id for s in got] == [f"q{s.meta['ref_id']}#{k}" for s in expected
                                          for k in [by_ref[s.meta["ref_id"]]["sent_ids"].index(int(s.sample_id))]]
    for s in got:  # the embedded images, written once where methods read them
        assert s.image_path.read_bytes() == (shapes_root / "images" / "train2014" / s.image_path.name).read_bytes()


def test_wrong_layout_and_offline_hub_are_one_line_errors(host, roots, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="lacks column 'ref_list' of the jxu124/refcoco-benchmark layout"):
        open_dataset(host, DataSource("refcoco-benchmark", roots["rows"])).samples("val")
    with pytest.raises(UserError, match="no parquet file in"):
        open_dataset(host, DataSource("refcoco-lmms", tmp_path)).splits()
    assert hub_repo(Path("hf://jxu124/refcoco")) == "jxu124/refcoco" and hub_repo("data/x") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"\(jxu124/refcoco\) is not in the Hugging Face cache .* "
                                        r"HF_HUB_OFFLINE is set: download it .*--repo-type dataset"):
        open_dataset(host, DataSource("refcoco-parquet", Path("hf://jxu124/refcoco")))
