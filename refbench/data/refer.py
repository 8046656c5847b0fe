"""Reader for the RefCOCO family in the layout of REFER, LAVT and VPD.

    <root>/<dataset>/refs(<splitBy>).p     pickled list of refs (restricted unpickling)
    <root>/<dataset>/instances.json        COCO instances of the referred images
    <root>/images/train2014/<file_name>    images (directory configurable)

One sample per sentence, ``sample_id = sent_id``; the ground truth is the referred annotation's
mask, its polygons merged into one RLE.
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from refbench.data import index_cache, safe_pickle, schema
from refbench.data.files import announce_large, combine_hashes, file_sha256, paused_gc, read_json
from refbench.data.index_cache import read_instances
from refbench.data.instances import Instances, index_instances
from refbench.data.safe_pickle import load_plain_pickle
from refbench.data.sample import Sample
from refbench.data.schema import Fields, Problem, Validator, shown
from refbench.errors import UserError, did_you_mean

REFS_CHECKS = (sys.modules[__name__], schema, safe_pickle)  # what a stored refs index stands for

# The split-bys each public data set was released with (REFER's README).
KNOWN_SPLIT_BYS = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}


def layout_hint(root: Path, name: str, split_by: str, image_dir: Path) -> str:
    return (f"expected the REFER layout {root}/{name}/refs({split_by}).p, "
            f"{root}/{name}/instances.json and images under {image_dir} "
            f"(see the README's 'Data layout'; --image-dir sets the image folder)")


class ReferDataset:
    """A RefCOCO-family data set (refcoco, refcoco+, refcocog, or any data in that layout)."""

    task = "referring"

    def __init__(self, root: Path, name: str, split_by: str | None = None,
                 image_dir: str | Path | None = None, default_split_by: str = "unc",
                 kinds: tuple[str, ...] | list[str] | None = None):
        self.root = Path(root)
        self.name = name
        # keep only sentences of these kinds (RefShapes records one per sentence): a subset
        # such as the attribute-distractor expressions, evaluated as a data set of its own
        self.kinds = tuple(sorted(kinds)) if kinds else None
        self.split_by = split_by or default_split_by
        known = KNOWN_SPLIT_BYS.get(name)
        if known and self.split_by not in known:
            raise did_you_mean(self.split_by, known, f"split-by for {name}")
        self.image_dir = Path(image_dir) if image_dir else self.root / "images" / "train2014"
        self.refs_path = self.root / name / f"refs({self.split_by}).p"
        self.instances_path = self.root / name / "instances.json"
        self.hint = layout_hint(self.root, name, self.split_by, self.image_dir)
        # strict: the first bad record is the error; `refbench data check` collects them all
        self.validator = Validator()

    # -- raw files -------------------------------------------------------------------------
    @cached_property
    def refs(self) -> list[dict[str, Any]]:
        if not self.refs_path.is_file():
            raise UserError(f"missing {self.refs_path}: {self.hint}")
        announce_large(self.refs_path)
        with paused_gc():
            refs = load_plain_pickle(self.refs_path)
        if not isinstance(refs, list):
            raise UserError(f"{self.refs_path} holds a {type(refs).__name__}, not a list of refs: "
                            f"{self.hint}")
        return refs

    def instances_data(self) -> Any:
        """The COCO instances as read (a reader of another layout builds them from its files)."""
        return read_json(self.instances_path, self.hint)

    @cached_property
    def instances(self) -> Instances:
        if type(self).instances_data is ReferDataset.instances_data:  # the file: its index is cached
            return read_instances(self.instances_path, self.hint, self.validator)
        return index_instances(self.instances_data(), self.instances_path, self.hint, self.validator)

    @cached_property
    def _refs(self) -> list[_Ref]:
        """Every ref, checked: ids whole numbers, sent_ids unique over the file, each sentence
        with text; a ref's annotation on the ref's image. A large clean refs file's checked
        refs are kept on disk, keyed by its hash (``index_cache``)."""
        folder = (index_cache.stored_folder("refs", self.refs_path, REFS_CHECKS)
                  if type(self).refs is ReferDataset.refs else None)  # a file, not parquet rows
        if folder is not None and (stored := index_cache.load_records(folder)) is not None:
            with paused_gc():
                return [_Ref(*fields[:6], tuple(map(tuple, fields[6]))) for fields in stored]
        out: list[_Ref] = []
        sent_ids: dict[Any, str] = {}
        ref_ids: dict[Any, str] = {}
        problems = self.validator.count
        with paused_gc():
            for index, raw in enumerate(self.refs):
                ref = _well_formed_ref(index, raw, sent_ids, ref_ids)
                if ref is None:
                    ref = _read_ref(self.validator, self.refs_path, index, raw, sent_ids, ref_ids)
                if ref is not None:
                    out.append(ref)
        if folder is not None and self.validator.count == problems:  # only a clean file
            index_cache.save_records(folder, [list(r) for r in out])
        if type(self).refs is ReferDataset.refs:
            self.__dict__.pop("refs", None)  # the raw file (hundreds of MB as objects): read
            # once, as ``_refs``, which is all the reader uses of it
        return out

    # -- Dataset interface -----------------------------------------------------------------
    def splits(self) -> list[str]:
        return sorted({r.split for r in self._refs})

    def fingerprint(self, split: str) -> str:
        return combine_hashes("refer", self.name, self.split_by, split, *(self.kinds or ()),
                              file_sha256(self.refs_path), file_sha256(self.instances_path))

    def samples(self, split: str) -> list[Sample]:
        return list(self.iter_samples(split))

    def iter_samples(self, split: str) -> Iterator[Sample]:
        """The split's samples one by one, each ref's mask built (and checked) when reached:
        ``run --limit N`` builds only what its first N samples need."""
        available = self.splits()
        if split not in available:
            raise did_you_mean(split, available, f"split of {self.name} ({self.split_by})")
        instances = self.instances
        for ref in self._refs:
            if ref.split != split:
                continue
            image = instances.images.get(ref.image_id)
            ann = instances.annotations.get(ref.ann_id)
            where = f"ref {ref.index} (ref_id {ref.ref_id})"
            if image is None or ann is None:
                field_name, value = ("image_id", ref.image_id) if image is None else ("ann_id", ref.ann_id)
                self.validator.report(Problem(
                    self.refs_path, where, field_name, f"is {value}, which {self.instances_path} "
                    f"lacks", "the refs file and the instances file do not belong together"))
                continue
            if ann["image_id"] != ref.image_id:
                self.validator.report(Problem(
                    self.refs_path, where, "image_id", f"is {ref.image_id}, but annotation "
                    f"{ref.ann_id} is on image {ann['image_id']}", "the refs file and the "
                    "instances file do not belong together"))
                continue
            if ref.category_id is not None and instances.categories and \
                    ref.category_id not in instances.categories:
                self.validator.report(Problem(
                    self.refs_path, where, "category_id", f"is {ref.category_id}, which no "
                    f"category of {self.instances_path} has", REF_FIX))
                continue
            gt = instances.mask(ref.ann_id)
            if gt is None:
                continue
            category_id = ref.category_id if ref.category_id is not None else ann.get("category_id")
            for sent_id, text, kind in ref.sentences:
                if self.kinds is not None and kind not in self.kinds:
                    continue
                meta = {"ref_id": ref.ref_id, "ann_id": ref.ann_id, "category_id": category_id,
                        "category": instances.categories.get(category_id, "")}
                if kind is not None:
                    meta["kind"] = kind
                yield Sample(
                    sample_id=str(sent_id), image_id=ref.image_id,
                    image_path=self.image_dir / image.file_name, height=image.height,
                    width=image.width, expression=text.strip(), gt=gt, meta=meta,
                    origin=f"{self.instances_path} annotation {ref.ann_id}")

    def label_map(self, image_id: int) -> np.ndarray:
        raise NotImplementedError("referring data sets have no label maps")

    def category_names(self) -> dict[int, str]:
        return dict(self.instances.categories)


class _Ref(NamedTuple):  # a tuple: 50,000 of them are built in milliseconds
    index: int
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int | None
    sentences: tuple[tuple[int | str, str, str | None], ...]  # (sent_id, text, kind)


REF_FIX = "fix or drop that ref in the refs file, or regenerate it"


def _well_formed_ref(index: int, raw: Any, sent_ids: dict[Any, str],
                     ref_ids: dict[Any, str]) -> _Ref | None:
    """``_read_ref`` for a ref it accepts as it is (ids of exact type int, texts str, every id
    new), in a tight loop; None, having changed nothing, for anything else, which ``_read_ref``
    then reads field by field. Checking 50,000 refs through ``Fields`` takes seconds."""
    if type(raw) is not dict:
        return None
    ref_id, ann_id, image_id = raw.get("ref_id"), raw.get("ann_id"), raw.get("image_id")
    split, category_id, items = raw.get("split"), raw.get("category_id"), raw.get("sentences")
    if not (type(ref_id) is int and type(ann_id) is int and type(image_id) is int
            and type(split) is str and split.strip() and (category_id is None or type(category_id) is int)
            and type(items) is list and items and ref_id not in ref_ids):
        return None
    sentences = []
    for item in items:
        if type(item) is not dict:
            return None
        sent_id, raw_text, sent_text, kind = (item.get("sent_id"), item.get("raw"), item.get("sent"),
                                              item.get("kind"))
        if not ((type(sent_id) is int or (type(sent_id) is str and sent_id.strip()))
                and (raw_text is None or type(raw_text) is str)
                and (sent_text is None or type(sent_text) is str) and (kind is None or type(kind) is str)):
            return None
        text = raw_text if raw_text and raw_text.strip() else sent_text
        if text is None or not text.strip() or sent_id in sent_ids \
                or any(sent_id == other for other, _, _ in sentences):
            return None
        sentences.append((sent_id, text, kind))
    record = f"ref {index} (ref_id {shown(ref_id)})"  # what _read_ref names them by
    ref_ids[ref_id] = record
    for k, (sent_id, _, _) in enumerate(sentences):
        sent_ids[sent_id] = f"{record}, sentences[{k}]"
    return _Ref(index, ref_id, ann_id, image_id, split, category_id, tuple(sentences))


def _read_ref(validator: Validator, path: Path, index: int, raw: Any, sent_ids: dict[Any, str],
              ref_ids: dict[Any, str]) -> _Ref | None:
    """One ref of a refs file, checked field by field (None after a collected problem)."""
    record = f"ref {index}" + (f" (ref_id {shown(raw.get('ref_id'))})" if isinstance(raw, dict) else "")
    f = Fields(validator, path, record, raw, REF_FIX)
    ref_id, ann_id, image_id = f.integer("ref_id"), f.integer("ann_id"), f.integer("image_id")
    split = f.text("split", nonempty=True)
    category_id = f.integer("category_id", required=False)
    sentences_raw = f.listing("sentences", nonempty=True)
    if not f.ok or not validator.unique(ref_ids, ref_id, path, record, "ref_id",
                                        "give each ref its own ref_id"):
        return None
    sentences = []
    for k, item in enumerate(sentences_raw or []):
        s = Fields(validator, path, f"{record}, sentences[{k}]", item,
                   "give every sentence a unique sent_id (a whole number) and its text in 'raw' or 'sent'")
        sent_id = s.identifier("sent_id")
        raw_text, sent_text = s.text("raw", required=False), s.text("sent", required=False)
        kind = s.text("kind", required=False)
        if not s.ok:
            return None
        text = raw_text if raw_text and raw_text.strip() else sent_text
        if text is None or not text.strip():
            s.problem("raw", "is missing" if raw_text is None and sent_text is None else
                      f"is empty ({raw_text!r}); so is 'sent'")
            return None
        if not validator.unique(sent_ids, sent_id, path, f"{record}, sentences[{k}]", "sent_id",
                                "give every sentence its own sent_id (samples are keyed by it)"):
            return None
        sentences.append((sent_id, text, kind))
    return _Ref(index, ref_id, ann_id, image_id, split, category_id, tuple(sentences))  # type: ignore[arg-type]
