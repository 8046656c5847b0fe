"""Checked indexes of large data files (COCO instances, REFER refs), kept on disk so such a
file is parsed and checked once.

Parsing RefCOCO's 122 MB instances.json costs seconds and most of a gigabyte, although a split
uses a few thousand of its 196,771 annotations. The first run that reads a large file (over
``CACHE_MIN_BYTES``) indexes it as ``instances.index_instances`` always does and, when the file
had no problem at all, stores the index: images and annotation ids as arrays, each
annotation's segmentation as its JSON text in one blob read through a memory map. Later runs
load that in a fraction of a second and parse a segmentation only when its mask is built, where
it is checked exactly as before (``Instances.mask``). A refs file's checked refs are kept the same
way, as JSON records (``save_records``), ids unique over the whole file as when it was checked.

The index is keyed by the file's SHA-256 and by the source of the code that checks it, so a
changed file, or changed checks, are checked again; a file with problems is never stored, so
``refbench data check`` lists them every time. Where the cache folder cannot be written the
file is simply indexed each time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from refbench.data import instances as instances_module, schema
from refbench.data.files import file_sha256, orjson, parse_json, paused_gc, read_json_exact
from refbench.data.instances import ImageRecord, Instances, index_instances
from refbench.data.schema import Validator

CACHE_MIN_BYTES = 4 * 1024 * 1024  # smaller files are checked in well under a second
INSTANCES_CHECKS = (instances_module, schema)
CACHE_ENV = "REFBENCH_CACHE"


def cache_root() -> Path:
    """``$REFBENCH_CACHE``, else ``$XDG_CACHE_HOME/refbench``, else ``~/.cache/refbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "refbench"


def _checks_hash(modules: tuple[ModuleType, ...]) -> str:
    """The source of the code whose checks a stored index stands for."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for module in modules:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def stored_folder(kind: str, path: Path, checks: tuple[ModuleType, ...], *flags: str) -> Path | None:
    """Where the checked index of ``path`` is kept (None for a small file: indexed each time)."""
    if not path.is_file() or path.stat().st_size < CACHE_MIN_BYTES:
        return None
    return cache_root() / kind / "-".join([file_sha256(path), _checks_hash(checks), *flags])


@contextmanager
def _writing(folder: Path) -> Iterator[Path]:
    """A staging folder renamed to ``folder`` when complete: readers see all of it or none.
    Any failure (a read-only cache, another process first, a value orjson cannot write
    exactly) leaves no index: the file is checked again next time."""
    staging = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        yield staging
        shutil.rmtree(folder, ignore_errors=True)  # one that could not be read (damaged)
        staging.rename(folder)
    except (OSError, OverflowError, TypeError, ValueError):
        shutil.rmtree(staging, ignore_errors=True)


def save_records(folder: Path, records: list[Any]) -> None:
    """Checked records (JSON values) of a file, stored under ``folder``."""
    if orjson is None:  # json cannot be trusted to write back what it read (NaN): no index
        return
    with _writing(folder) as staging:
        (staging / "records.json").write_bytes(orjson.dumps(records))


def load_records(folder: Path) -> list[Any] | None:
    try:
        with paused_gc():
            return parse_json((folder / "records.json").read_bytes())
    except (OSError, ValueError):
        return None


class CompactAnnotations(Mapping[int, dict[str, Any]]):
    """Annotation id -> the fields readers use (id, image_id, category_id when it has one,
    iscrowd, segmentation), built on access from the stored arrays."""

    def __init__(self, folder: Path):
        arrays = np.load(folder / "annotations.npz")
        self._ids = arrays["id"]
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted = self._ids[self._order]
        self._image, self._category = arrays["image_id"], arrays["category_id"]
        self._has_category, self._crowd = arrays["has_category"], arrays["iscrowd"]
        self._offsets = arrays["offsets"]
        blob = folder / "segmentations.bin"
        size = blob.stat().st_size
        if size != int(self._offsets[-1]) or len(self._offsets) != len(self._ids) + 1:
            raise ValueError(f"{folder} is incomplete")  # damaged: the file is checked again
        self._blob = np.memmap(blob, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)

    def _row(self, ann_id: object) -> int | None:
        if type(ann_id) is not int:
            return None
        at = int(np.searchsorted(self._sorted, ann_id))
        return int(self._order[at]) if at < len(self._sorted) and self._sorted[at] == ann_id else None

    def __getitem__(self, ann_id: int) -> dict[str, Any]:
        row = self._row(ann_id)
        if row is None:
            raise KeyError(ann_id)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        ann: dict[str, Any] = {"id": ann_id, "image_id": int(self._image[row]),
                               "iscrowd": int(self._crowd[row])}
        if self._has_category[row]:
            ann["category_id"] = int(self._category[row])
        if end > start:
            ann["segmentation"] = parse_json(self._blob[start:end].tobytes())
        return ann

    def __contains__(self, ann_id: object) -> bool:
        return self._row(ann_id) is not None

    def __iter__(self) -> Iterator[int]:
        return (int(v) for v in self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def save(instances: Instances, folder: Path) -> None:
    """Store a checked instances index (segmentations streamed: little memory)."""
    if orjson is None:  # json cannot be trusted to write back what it read (NaN): no index
        return
    with _writing(folder) as staging:
        images = list(instances.images.values())
        (staging / "images.json").write_bytes(orjson.dumps(
            {"images": [[i.image_id, i.file_name, i.height, i.width] for i in images],
             "categories": [[k, v] for k, v in instances.categories.items()]}))
        anns = instances.annotations.values()
        offsets = [0]
        with open(staging / "segmentations.bin", "wb") as handle:
            for ann in anns:
                segmentation = ann.get("segmentation")
                offsets.append(offsets[-1] + (0 if segmentation is None else
                                              handle.write(orjson.dumps(segmentation))))
        np.savez(staging / "annotations.npz",
                 id=np.array([a["id"] for a in anns], dtype=np.int64),
                 image_id=np.array([a["image_id"] for a in anns], dtype=np.int64),
                 category_id=np.array([a.get("category_id") or 0 for a in anns], dtype=np.int64),
                 has_category=np.array([a.get("category_id") is not None for a in anns]),
                 iscrowd=np.array([int(bool(a.get("iscrowd", 0))) for a in anns], dtype=np.int8),
                 offsets=np.array(offsets, dtype=np.int64))


def load(folder: Path, path: Path, validator: Validator) -> Instances | None:
    """The stored index, or None when there is none (or it cannot be read)."""
    try:
        meta = parse_json((folder / "images.json").read_bytes())
        annotations = CompactAnnotations(folder)
    except (OSError, ValueError, KeyError):
        return None
    with paused_gc():
        images = {i: ImageRecord(i, name, h, w) for i, name, h, w in meta["images"]}
        by_image: dict[int, list[int]] = defaultdict(list)
        for ann_id, image_id in zip(annotations._ids.tolist(), annotations._image.tolist()):
            by_image[image_id].append(ann_id)
    return Instances(path, validator, images, annotations,  # type: ignore[arg-type]
                     {k: v for k, v in meta["categories"]}, dict(by_image))


def read_instances(path: Path, hint: str, validator: Validator,
                   require_categories: bool = False) -> Instances:
    """Read and index ``path``, reporting the first bad record through ``validator``; a large
    file's checked index is kept on disk, keyed by its hash (``index_cache``)."""
    folder = stored_folder("instances", path, INSTANCES_CHECKS,
                           "c" if require_categories else "n")
    if folder is not None and (cached := load(folder, path, validator)) is not None:
        return cached
    with paused_gc():
        data, exact = read_json_exact(path, hint)
        problems = validator.count
        instances = index_instances(data, path, hint, validator, require_categories)
    if folder is not None and exact and validator.count == problems:  # only a clean file
        save(instances, folder)
    return instances
