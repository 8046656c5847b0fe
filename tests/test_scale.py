"""What makes RefCOCO-sized data cheap keeps every check and every figure: the JSON parser, the
stored instances index, samples built only up to --limit, images decoded once and only for
methods that read pixels (benchmarks/refcoco_scale.py times them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refbench import core
from refbench.core import Settings, plan_split
from refbench.data import files, index_cache
from refbench.data.checks import has_truth
from refbench.data.refer import ReferDataset
from refbench.data.sample import first_samples, take_samples
from refbench.errors import UserError


@pytest.mark.parametrize("text", [b'{"a": [1, 2.5, -0.0, 1e-7, "x\\u00e9"], "b": null}', b"NaN",
                                  b"[123456789012345678901234567890]", b"[18446744073709551615]",
                                  b'{"a": 1, "a": 2}', b"[1e400]", b'"\\ud800"',
                                  b"[-123456789012345678901, 0.12345678901234567890123]",
                                  b'{"counts": "Y40000000000000000000000000a"}'])
def test_parse_json_gives_what_json_gives(text: bytes):
    assert repr(files.parse_json(text)) == repr(json.loads(text))


def test_invalid_json_keeps_json_message(tmp_path: Path):
    path = tmp_path / "instances.json"
    path.write_text("{not json")
    with pytest.raises(UserError) as caught:
        files.read_json(path, "hint")
    try:
        json.loads("{not json")
    except json.JSONDecodeError as error:
        assert f"({error})" in str(caught.value)


def test_progress_line_only_for_large_files(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "refcoco" / "instances.json"
    path.parent.mkdir()
    path.write_text("{}")
    files.read_json(path, "hint")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(files, "LARGE_FILE", 1)
    files.read_json(path, "hint")
    assert capsys.readouterr().err == "refbench: reading refcoco/instances.json (0 MB)...\n"


@pytest.fixture
def cached(shapes_copy: Path, tmp_path: Path, monkeypatch) -> Path:
    """RefShapes with its instances index stored in a cache of the test's own."""
    monkeypatch.setenv(index_cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(index_cache, "CACHE_MIN_BYTES", 0)
    return shapes_copy


def _view(dataset: ReferDataset, split: str) -> list[tuple]:
    return [(s.sample_id, s.image_id, str(s.image_path), s.height, s.width, s.expression,
             dict(s.gt), dict(s.meta), s.origin) for s in dataset.samples(split)]


def test_cached_index_gives_the_same_samples(cached: Path, monkeypatch):
    monkeypatch.setattr(index_cache, "CACHE_MIN_BYTES", 1 << 60)
    direct = {split: _view(ReferDataset(cached, "refshapes"), split) for split in ("val", "train")}
    assert not index_cache.cache_root().exists()
    monkeypatch.setattr(index_cache, "CACHE_MIN_BYTES", 0)
    cold = ReferDataset(cached, "refshapes")
    assert {split: _view(cold, split) for split in direct} == direct
    assert len(list((index_cache.cache_root() / "instances").iterdir())) == 1
    warm = ReferDataset(cached, "refshapes")
    assert isinstance(warm.instances.annotations, index_cache.CompactAnnotations)
    assert {split: _view(warm, split) for split in direct} == direct
    assert warm.instances.by_image == cold.instances.by_image
    assert warm.category_names() == cold.category_names()


def test_changed_file_is_checked_again(cached: Path):
    ReferDataset(cached, "refshapes").samples("val")  # stored
    path = cached / "refshapes" / "instances.json"
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][0]))  # a duplicate image id
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="id"):
        ReferDataset(cached, "refshapes").samples("val")
    with pytest.raises(UserError, match="id"):  # and a file with problems is never stored
        ReferDataset(cached, "refshapes").samples("val")
    assert len(list((index_cache.cache_root() / "instances").iterdir())) == 1


def test_segmentations_are_checked_when_read_from_the_index(cached: Path):
    path = cached / "refshapes" / "instances.json"
    data = json.loads(path.read_text())
    dataset = ReferDataset(cached, "refshapes")
    first = dataset.samples("val")[0]
    for ann in data["annotations"]:
        if ann["id"] == first.meta["ann_id"]:
            ann["segmentation"] = [[0, 0, 5, 5, 10, 10]]  # on one line: zero area
    path.write_text(json.dumps(data))
    ReferDataset(cached, "refshapes").instances  # noqa: B018 (stored: the records are well-typed)
    with pytest.raises(UserError, match="zero area"):
        ReferDataset(cached, "refshapes").samples("val")


def test_take_samples_reads_only_up_to_the_cut():
    from refbench.data.sample import Sample

    def sample(i: int, group: str, size: int) -> Sample:
        return Sample(str(i), 0, Path("x"), 4, 4, "t", {"size": [4, 4], "counts": "0"},
                      group_id=group, meta={"size": size})

    samples = [sample(0, "a", 1), sample(1, "a", 0), sample(2, "b", 1), sample(3, "b", 1),
               sample(4, "c", 0), sample(5, "c", 1), sample(6, "d", 1)]
    read: list[str] = []

    def source():
        for s in samples:
            read.append(s.sample_id)
            yield s

    keep = lambda s: s.meta["size"] > 0  # noqa: E731
    for limit in (1, 2, 3, 4, None):
        read.clear()
        built, kept, refused = take_samples(source(), limit, keep)
        assert kept == first_samples([s for s in samples if keep(s)], limit)
        assert refused == [s for s in built if not keep(s)]
        assert len(read) <= len(built) + 1  # never past the first sample after the cut


def test_limit_builds_only_the_first_samples(shapes_copy: Path):
    dataset = ReferDataset(shapes_copy, "refshapes")
    first = dataset.samples("val")[:2]
    path = shapes_copy / "refshapes" / "instances.json"
    data = json.loads(path.read_text())
    used = {s.meta["ann_id"] for s in first}
    last = dataset.samples("val")[-1].meta["ann_id"]
    assert last not in used
    for ann in data["annotations"]:
        if ann["id"] == last:
            ann["segmentation"] = [[0, 0, 5, 5, 10, 10]]
    path.write_text(json.dumps(data))
    plan = plan_split(ReferDataset(shapes_copy, "refshapes"), shapes_copy, "val", Settings(limit=1))
    assert [s.sample_id for s in plan.samples] == [first[0].sample_id]
    with pytest.raises(UserError, match="zero area"):  # the whole split still checks it
        plan_split(ReferDataset(shapes_copy, "refshapes"), shapes_copy, "val", Settings())


def test_images_decoded_once_and_only_for_methods_that_read_pixels(shapes_root: Path, monkeypatch):
    from refbench.method import Prediction

    decoded: list[Path] = []
    real = core.load_rgb

    def counting(path, *args, **kwargs):
        decoded.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(core, "load_rgb", counting)

    class Blind:
        reads_pixels = False

        def predict(self, batch):
            assert all(image.size == 0 for image in batch.images)
            return [Prediction(mask=np.ones((s.height, s.width), bool)) for s in batch.samples]

    class Seeing:
        def predict(self, batch):
            assert all(image.shape == (s.height, s.width, 3) for s, image in zip(batch.samples, batch.images))
            return [Prediction(mask=image[..., 0] > 127) for image in batch.images]

    blind = core.evaluate([Blind()], "refshapes", "val", data_root=shapes_root, batch_size=64)
    assert decoded == []
    both = core.evaluate([Blind(), Seeing()], "refshapes", "val", data_root=shapes_root, batch_size=64)
    samples = ReferDataset(shapes_root, "refshapes").samples("val")
    assert sorted(decoded) == sorted({s.image_path for s in samples})  # once per image
    assert len(samples) > len(decoded)  # several sentences an image
    assert blind.metrics.iloc[0].to_dict() == both.metrics.iloc[0].to_dict()


def test_reference_methods_do_not_read_pixels():
    from methods.reference import FullImage, GroundTruthBox

    assert not core.reads_pixels(FullImage()) and not core.reads_pixels(GroundTruthBox(GroundTruthBox.Config()))


def test_has_truth_is_the_empty_check(shapes_root: Path):
    samples = ReferDataset(shapes_root, "refshapes").samples("val")
    assert all(has_truth(s) for s in samples)


def test_cached_refs_are_the_checked_refs(cached: Path, shapes_root: Path):
    cold = ReferDataset(cached, "refshapes")._refs
    assert len(list((index_cache.cache_root() / "refs").iterdir())) == 1
    assert ReferDataset(cached, "refshapes")._refs == cold == ReferDataset(shapes_root, "refshapes")._refs


def test_duplicate_sent_id_is_refused_though_the_refs_were_stored(cached: Path):
    import pickle

    ReferDataset(cached, "refshapes").samples("val")
    path = cached / "refshapes" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[1]["sentences"][0]["sent_id"] = refs[0]["sentences"][0]["sent_id"]
    path.write_bytes(pickle.dumps(refs))
    with pytest.raises(UserError, match="sent_id"):
        ReferDataset(cached, "refshapes").splits()


def test_mask_scored_on_runs_counts_what_the_pixels_count():
    from refbench.data.masks import encode
    from refbench.results.scoring import DEFAULT_THRESHOLDS, mask_stats, rle_mask_stats

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (48, 64)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            gt = rng.random(shape) < 0.5
            for order in ("C", "F"):
                pred = np.asarray(mask, order=order)
                assert encode(pred) == encode(np.ascontiguousarray(mask))
                pixels, runs = mask_stats(pred, gt, DEFAULT_THRESHOLDS), rle_mask_stats(
                    encode(pred), encode(gt), DEFAULT_THRESHOLDS)
                assert (pixels.inter == runs.inter).all() and (pixels.pred_area == runs.pred_area).all()
                assert pixels.gt_area == runs.gt_area
    with pytest.raises(ValueError, match="differs"):
        rle_mask_stats(encode(np.ones((2, 3), bool)), encode(np.ones((3, 2), bool)), DEFAULT_THRESHOLDS)


def test_well_formed_refs_read_as_field_by_field(shapes_copy: Path, monkeypatch):
    import pickle

    from refbench.data import refer

    path = shapes_copy / "refshapes" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[2]["ref_id"] = float(refs[2]["ref_id"])  # read by Fields: a whole float is an id
    refs[3]["sentences"][0]["sent_id"] = str(refs[3]["sentences"][0]["sent_id"])  # text ids
    refs[4]["sentences"][0]["raw"] = "  "  # falls back to 'sent'
    path.write_bytes(pickle.dumps(refs))
    fast = ReferDataset(shapes_copy, "refshapes")._refs
    monkeypatch.setattr(refer, "_well_formed_ref", lambda *args: None)
    assert ReferDataset(shapes_copy, "refshapes")._refs == fast
    refs[5]["sentences"][0]["sent_id"] = refs[1]["sentences"][0]["sent_id"]
    path.write_bytes(pickle.dumps(refs))
    with pytest.raises(UserError) as slow_error:
        ReferDataset(shapes_copy, "refshapes").splits()
    monkeypatch.undo()
    with pytest.raises(UserError) as fast_error:
        ReferDataset(shapes_copy, "refshapes").splits()
    assert str(fast_error.value) == str(slow_error.value) and "ref 1 (ref_id" in str(fast_error.value)


def test_damaged_index_is_checked_again(cached: Path):
    first = _view(ReferDataset(cached, "refshapes"), "val")
    (folder,) = (index_cache.cache_root() / "instances").iterdir()
    blob = folder / "segmentations.bin"
    blob.write_bytes(blob.read_bytes()[:-10])
    assert index_cache.load(folder, cached / "refshapes" / "instances.json", None) is None  # type: ignore[arg-type]
    assert _view(ReferDataset(cached, "refshapes"), "val") == first
    assert index_cache.load(folder, cached / "refshapes" / "instances.json", None) is not None  # type: ignore[arg-type]


def test_without_orjson_nothing_is_stored_and_all_is_read(cached: Path, shapes_root: Path, monkeypatch):
    monkeypatch.setattr(files, "orjson", None)
    monkeypatch.setattr(index_cache, "orjson", None)
    samples = _view(ReferDataset(cached, "refshapes"), "val")
    assert not index_cache.cache_root().exists()
    monkeypatch.undo()
    monkeypatch.setattr(index_cache, "CACHE_MIN_BYTES", 1 << 60)
    assert samples == _view(ReferDataset(cached, "refshapes"), "val")
