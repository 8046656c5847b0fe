"""RefCOCO-family data from the parquet files of three hub data sets, read as REFER's refs.

Each layout turns its rows into REFER's refs and COCO's image and annotation records; the REFER
reader then makes the samples (one per sentence, the referred annotation's polygons merged into
one RLE), so the same content gives the same samples whatever the files. The column names and
nesting below are those of the data sets' cards (their ``dataset_info``); what the cards do not
say is marked as an assumption.

``jxu124/refcoco-benchmark`` (``BenchmarkParquetDataset``)
    one row per image: ``image_info`` (COCO's image record) and ``ref_list``, a list of
    ``{ann_info: {id, image_id, category_id, bbox, area, iscrowd, segmentation (polygons)},
    ref_info: {ref_id, ann_id, image_id, category_id, file_name, sent_ids, sentences: [{raw,
    sent, sent_id, tokens}], split}}``. One file per split, named like ``refcoco_unc_val``,
    ``refcoco_plus_unc_testA``, ``refcocog_umd_test``, ``refcoco_google_val``: these are the
    split names here (``--split refcoco_unc_testA``), so one data set covers all eleven.
``jxu124/refcoco`` (also ``jxu124/refcocoplus``, ``jxu124/refcocog``; ``ReferRowsParquetDataset``)
    one row per ref, REFER's fields as columns (``ref_id``, ``ann_id``, ``image_id``,
    ``category_id``, ``split``, ``sentences``) plus ``raw_anns`` (a JSON string: the referred
    annotation) and ``raw_image_info`` (a JSON string: the image record). Files are named by the
    hub's splits (train, validation, test, testB); the samples' split is the row's ``split``
    (REFER's names: val, testA, testB; umd's val, test for refcocog). Assumed: ``raw_anns`` is
    the annotation record (a list of records is searched for ``ann_id``); where
    ``raw_image_info`` is absent the image size is read from the image file.
``lmms-lab/RefCOCO`` (``LmmsParquetDataset``)
    one row per referred object, for a multimodal model's evaluation: ``question_id``, ``image``
    (the JPEG's bytes), ``question`` (the model's instruction, not an expression), ``answer``
    (the object's sentences), ``segmentation`` (one flat polygon), ``bbox``, ``file_name``. Its
    splits are val (8811 rows), test (5000), testA (1975) and testB (1810): testA and testB have
    the row counts of UNC's testA and testB refs, but val and test match no UNC split (UNC's val
    has 3811 refs; UNC has no test), so report them as lmms-lab's own splits, never as RefCOCO
    val. Nothing in a row names REFER's ids: a sample is ``<question_id>#<k>`` (the k-th answer),
    the image id is the trailing number of ``file_name`` (COCO's), annotation and ref ids count
    rows. An object drawn as several polygons in COCO has only the one flat list here (assumed:
    the first polygon, or several concatenated; the two cannot be told apart). The images are
    written once to ``--image-dir`` (default ``<root>/images``) as ``file_name``.
"""

from __future__ import annotations

import io
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from refbench.data.files import combine_hashes
from refbench.data.parquet import local_root, read_rows, split_files
from refbench.data.refer import KNOWN_SPLIT_BYS, ReferDataset
from refbench.errors import UserError

Records = tuple[list[dict[str, Any]], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]


class ParquetReferDataset(ReferDataset):
    """REFER's reader over refs and instances built from a layout's parquet rows."""

    layout = ""  # the hub data set the layout is named after
    reads_hub = True  # the root may be hf://owner/name
    default_image_subdir = "images/train2014"  # under the root, when --image-dir is not given

    def __init__(self, root: Path, name: str = "refcoco", split_by: str | None = None,
                 image_dir: str | Path | None = None, kinds: tuple[str, ...] | list[str] | None = None):
        folder = local_root(root, f"data set {name!r} in the {self.layout} layout")
        super().__init__(folder, name, split_by, image_dir or folder / self.default_image_subdir,
                         KNOWN_SPLIT_BYS.get(name, ("unc",))[0], kinds)
        self.refs_path = self.instances_path = folder  # REFER's messages then name the folder
        self.hint = (f"expected the {self.layout} parquet files in {folder} or {folder}/data, "
                     f"images under {self.image_dir} (see the README's 'Data layout'; --image-dir "
                     f"sets the image folder)")

    def _files(self) -> dict[str, list[Path]]:
        files = split_files(self.root)
        if not files:
            raise UserError(f"no parquet file in {self.root}: {self.hint}")
        return files

    def _records(self) -> Records:
        """Refs (REFER's dicts, with ``split``), images and annotations by id."""
        raise NotImplementedError

    @cached_property
    def _content(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """REFER's refs and COCO's instances from the rows; REFER's reader checks them record
        by record (unique sent_ids included), as it checks its own files."""
        refs, images, annotations = self._records()
        return refs, {"images": list(images.values()), "annotations": list(annotations.values())}

    @cached_property
    def refs(self) -> list[dict[str, Any]]:
        return self._content[0]

    def instances_data(self) -> dict[str, Any]:
        return self._content[1]

    def fingerprint(self, split: str) -> str:
        """A hash of the split's refs and of the annotations and images they point at."""
        refs = [r for r in self.refs if r.get("split") == split]
        anns = {r["ann_id"] for r in refs}
        used = {r["image_id"] for r in refs}
        instances = self.instances_data()
        content = json.dumps([refs, [a for a in instances["annotations"] if a["id"] in anns],
                              [i for i in instances["images"] if i["id"] in used]],
                             sort_keys=True, default=str)
        return combine_hashes("refer-parquet", self.layout, self.name, self.split_by, split,
                              *(self.kinds or ()), content)


def _record(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict) or any(k not in value for k in keys):
        missing = [k for k in keys if not isinstance(value, dict) or k not in value]
        raise UserError(f"{where} is not a record with {', '.join(keys)} (lacks {missing[0]!r})")
    return value


def _json(text: Any, where: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise UserError(f"{where} is not a JSON string ({error})") from None


def _add(table: dict[int, dict[str, Any]], record: dict[str, Any], where: str) -> None:
    """Index a record by id; the same id twice must be the same record."""
    key = int(record["id"])
    if key in table and table[key] != record:
        raise UserError(f"{where}: id {key} names two different records")
    table[key] = record


class BenchmarkParquetDataset(ParquetReferDataset):
    """``jxu124/refcoco-benchmark``: one row per image, its refs nested; splits as on the hub."""

    layout = "jxu124/refcoco-benchmark"

    def _records(self) -> Records:
        refs: list[dict[str, Any]] = []
        images: dict[int, dict[str, Any]] = {}
        annotations: dict[int, dict[str, Any]] = {}
        for split, paths in self._files().items():
            for path in paths:
                for i, row in enumerate(read_rows(path, ("ref_list", "image_info"), self.layout)):
                    where = f"{path} row {i}"
                    _add(images, _record(row["image_info"], f"{where} image_info",
                                         ("id", "file_name", "height", "width")), where)
                    if not isinstance(row["ref_list"], list):
                        raise UserError(f"{where}: ref_list is not a list")
                    for entry in row["ref_list"]:
                        entry = _record(entry, f"{where} ref_list entry", ("ann_info", "ref_info"))
                        ann = _record(entry["ann_info"], f"{where} ann_info", ("id", "segmentation"))
                        ref = _record(entry["ref_info"], f"{where} ref_info",
                                      ("ref_id", "ann_id", "image_id", "sentences"))
                        if ref.get("split") not in (None, split.rsplit("_", 1)[-1]):
                            raise UserError(f"{where}: ref {ref['ref_id']} says split "
                                            f"{ref['split']!r} in the file of {split}")
                        _add(annotations, ann, where)
                        refs.append({**ref, "split": split})
        return refs, images, annotations


class ReferRowsParquetDataset(ParquetReferDataset):
    """``jxu124/refcoco``: one row per ref, the annotation and image as JSON strings."""

    layout = "jxu124/refcoco"
    _REQUIRED = ("ref_id", "ann_id", "image_id", "split", "sentences", "raw_anns")

    def _records(self) -> Records:
        refs: list[dict[str, Any]] = []
        images: dict[int, dict[str, Any]] = {}
        annotations: dict[int, dict[str, Any]] = {}
        for paths in self._files().values():
            for path in paths:
                for i, row in enumerate(read_rows(path, self._REQUIRED, self.layout,
                                                  ("category_id", "raw_image_info", "image_path"))):
                    where = f"{path} row {i}"
                    ann = _json(row["raw_anns"], f"{where} raw_anns")
                    if isinstance(ann, list):  # the image's annotations: take the referred one
                        ann = next((a for a in ann if isinstance(a, dict) and a.get("id") == row["ann_id"]), None)
                    _add(annotations, _record(ann, f"{where} raw_anns (annotation {row['ann_id']})",
                                              ("id", "segmentation")), where)
                    if row.get("raw_image_info"):
                        image = _json(row["raw_image_info"], f"{where} raw_image_info")
                    else:
                        image = self._image_from_file(row, where)
                    _add(images, _record(image, f"{where} raw_image_info",
                                         ("id", "file_name", "height", "width")), where)
                    refs.append({k: row[k] for k in ("ref_id", "ann_id", "image_id", "split",
                                                     "sentences", "category_id") if k in row})
        return refs, images, annotations

    def _image_from_file(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        name = Path(str(row.get("image_path") or "")).name
        if not name:
            raise UserError(f"{where} has neither raw_image_info nor image_path: {self.hint}")
        width, height = _image_size(self.image_dir / name)
        return {"id": row["image_id"], "file_name": name, "height": height, "width": width}


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise UserError(f"image {path} is missing: check the image folder (--image-dir)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {path} cannot be read ({error}): restore the file") from None


_TRAILING_NUMBER = re.compile(r"(\d+)$")


class LmmsParquetDataset(ParquetReferDataset):
    """``lmms-lab/RefCOCO``: one row per object with its sentences and the image's bytes."""

    layout = "lmms-lab/RefCOCO"
    _REQUIRED = ("question_id", "answer", "segmentation", "file_name")
    default_image_subdir = "images"  # where the embedded images are written

    def _records(self) -> Records:
        refs: list[dict[str, Any]] = []
        images: dict[int, dict[str, Any]] = {}
        annotations: dict[int, dict[str, Any]] = {}
        files = self._files()
        self._extract_images(files)
        for split, paths in files.items():
            for path in paths:
                for i, row in enumerate(read_rows(path, self._REQUIRED, self.layout)):
                    where = f"{path} row {i}"
                    answers, polygon = row["answer"], row["segmentation"]
                    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                        raise UserError(f"{where}: answer is not a list of sentences")
                    if not isinstance(polygon, list) or len(polygon) < 6:
                        raise UserError(f"{where}: segmentation is not a flat polygon of 3 or more points")
                    image_id = _image_id(str(row["file_name"]), where)
                    key = len(refs) + 1
                    if images.get(image_id, row)["file_name"] != row["file_name"]:
                        raise UserError(f"{where}: {row['file_name']} and "
                                        f"{images[image_id]['file_name']} both give image id {image_id}")
                    if image_id not in images:
                        width, height = _image_size(self.image_dir / row["file_name"])
                        images[image_id] = {"id": image_id, "file_name": row["file_name"],
                                            "height": height, "width": width}
                    annotations[key] = {"id": key, "image_id": image_id, "segmentation": [polygon]}
                    refs.append({"ref_id": key, "ann_id": key, "image_id": image_id, "split": split,
                                 "sentences": [{"sent_id": f"{row['question_id']}#{k}", "raw": text}
                                               for k, text in enumerate(answers)]})
        return refs, images, annotations

    def _extract_images(self, files: dict[str, list[Path]]) -> None:
        """Write the rows' image bytes to ``image_dir`` once: methods read images from files."""
        for paths in files.values():
            for path in paths:
                names = {str(r["file_name"]) for r in read_rows(path, ("file_name",), self.layout)}
                if all((self.image_dir / n).is_file() for n in names):
                    continue
                self.image_dir.mkdir(parents=True, exist_ok=True)
                for i, row in enumerate(read_rows(path, ("file_name", "image"), self.layout)):
                    target = self.image_dir / str(row["file_name"])
                    image = row["image"]
                    data = image.get("bytes") if isinstance(image, dict) else image
                    if not isinstance(data, bytes):
                        raise UserError(f"{path} row {i}: image holds no bytes")
                    if not target.is_file():
                        _check_image_bytes(data, f"{path} row {i}")
                        temporary = target.with_name(f".{target.name}.part")
                        temporary.write_bytes(data)
                        temporary.rename(target)


def _check_image_bytes(data: bytes, where: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{where}: the image bytes are not an image ({error}): re-download the file") from None


def _image_id(file_name: str, where: str) -> int:
    match = _TRAILING_NUMBER.search(Path(file_name).stem)
    if not match:
        raise UserError(f"{where}: file_name {file_name!r} ends in no image number (COCO's "
                        f"COCO_train2014_<id>.jpg)")
    return int(match.group(1))

