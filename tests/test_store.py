"""The SQLite store: round trips, no duplicates, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from refbench.store import GroupRow, RunRecord, SampleRow, Store


def _record(key: str = "k1") -> RunRecord:
    return RunRecord(run_key=key, method="m", method_fingerprint="fp", config={"a": 1},
                     dataset="d", split="val", dataset_fingerprint="dfp", seed=0,
                     thresholds=(0.25, 0.5, 0.75), versions={"x": "1"}, git_hash=None, limit_n=None)


def _row(i: int) -> SampleRow:
    return SampleRow(sample_id=str(i), image_id=i // 2, group_id=str(i), inter=np.array([3, 2, i]),
                     pred_area=np.array([9, 5, i + 1]), gt_area=4, is_mask=False,
                     mask_rle={"size": [2, 2], "counts": "04"}, meta={"kind": "plain"}, info={"f": 1})


def test_round_trip_and_no_duplicates(tmp_path: Path):
    with Store(tmp_path / "s.sqlite") as store:
        store.register_run(_record())
        store.register_run(_record())
        store.write("k1", [_row(1), _row(2)])
        store.write("k1", [_row(2), _row(3)], [GroupRow("g", [5], np.arange(12).reshape(3, 2, 2))])
        rows = store.rows("k1", with_masks=True)
        assert sorted(r.sample_id for r in rows) == ["1", "2", "3"]
        row = next(r for r in rows if r.sample_id == "3")
        assert row.inter.tolist() == [3, 2, 3] and row.pred_area.tolist() == [9, 5, 4]
        assert row.meta == {"kind": "plain"} and row.mask_rle["counts"] == "04"
        (group,) = store.groups("k1")
        assert group.confusion.shape == (3, 2, 2) and group.confusion[2, 1, 1] == 11
        assert store.run("k1")["thresholds"] == [0.25, 0.5, 0.75]
        assert len(store.runs()) == 1


def _writer(path: str, start: int) -> None:
    store = Store(path)
    store.register_run(_record())
    for i in range(start, start + 200, 4):
        store.write("k1", [_row(j) for j in range(i, i + 4)])
    store.close()


def test_two_processes_write_one_store(tmp_path: Path):
    path = str(tmp_path / "s.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, start)) for start in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(path) as store:
        assert store.count("k1") == 300  # 0..299, the overlap 100..199 written once
