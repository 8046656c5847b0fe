"""Checks of a split as a whole, after its records were read: what no single record shows.

``run`` does the cheap ones before computing (unique sample ids, ground truths that are not
empty, every image's header against its annotation and the pixel limit); ``refbench data
check`` does them all for every split, decoding every image, and collects what it finds instead
of stopping at the first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from refbench.data.images import DEFAULT_MAX_PIXELS, load_rgb, read_header
from refbench.data.masks import area
from refbench.data.sample import Dataset, Sample
from refbench.data.schema import Validator
from refbench.errors import UserError

SKIP_EMPTY_OPTION = "--skip-empty-gt"


def check_unique_ids(samples: Sequence[Sample], where: str) -> None:
    """Rows are keyed by sample id: two samples with one id would be scored from one row."""
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.sample_id in seen:
            raise UserError(f"{where} lists sample id {sample.sample_id!r} twice ("
                            f"{seen[sample.sample_id].origin or 'first'} and {sample.origin or 'again'}): "
                            f"a reader must give each sample its own id")
        seen[sample.sample_id] = sample


def has_truth(sample: Sample) -> bool:
    """Whether the ground truth has pixels (an empty prediction would score IoU 1 against an
    empty one under the image protocol)."""
    return area(dict(sample.gt)) > 0


def split_empty(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples whose ground truth has pixels, and those whose ground truth is empty."""
    kept, empty = [], []
    for sample in samples:
        (kept if has_truth(sample) else empty).append(sample)
    return kept, empty


def refuse_empty(empty: Sequence[Sample], where: str) -> None:
    if empty:
        first = empty[0]
        origin = f" ({first.origin})" if first.origin else ""
        raise UserError(f"{where}: sample {first.sample_id}{origin} has an empty ground truth"
                        f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}: fix the "
                        f"annotation, or pass {SKIP_EMPTY_OPTION} (skip_empty_gt: true in a report "
                        f"spec) to leave such samples out, counted in results.json")


def check_headers(samples: Sequence[Sample], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Each distinct image's header against its annotation's size and the pixel limit."""
    for path, sample in {s.image_path: s for s in samples}.items():
        read_header(path, (sample.height, sample.width), sample.sample_id, max_pixels)


@dataclass
class SplitCheck:
    """What ``refbench data check`` found on one split."""

    split: str
    samples: int = 0
    images: int = 0
    empty: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def collecting(dataset: Dataset) -> Validator:
    """Switch the reader to collecting its problems, where it supports that (a plugin's reader
    that does not still reports its first problem, as an error)."""
    validator = getattr(dataset, "validator", None)
    if not isinstance(validator, Validator):
        return Validator(collect=True)
    if not validator.collect:
        validator = Validator(collect=True)
        dataset.validator = validator  # type: ignore[attr-defined]
    return validator


def check_split(dataset: Dataset, split: str, validator: Validator,
                max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> SplitCheck:
    """Every check of one split; ``validator`` is the reader's collecting one (``collecting``).
    Problems of a whole file are listed under the first split that read it."""
    result = SplitCheck(split)
    try:
        samples = dataset.samples(split)
    except UserError as error:  # a whole-file problem, or a reader that cannot collect
        _add(result, error)
        return result
    finally:
        for problem in validator.problems:
            _add(result, problem)
        result.problem_count += validator.count - len(validator.problems)
        validator.problems.clear()
        validator.count = 0
    result.samples = len(samples)
    seen: set[str] = set()
    for sample in samples:
        if sample.sample_id in seen:
            _add(result, f"sample id {sample.sample_id!r} appears twice ({sample.origin})")
        seen.add(sample.sample_id)
    _, empty = split_empty(samples)
    result.empty = len(empty)
    for sample in empty:
        _add(result, f"sample {sample.sample_id} ({sample.origin}) has an empty ground truth")
    images = {s.image_path: s for s in samples}
    result.images = len(images)
    for path, sample in images.items():
        try:
            header = read_header(path, (sample.height, sample.width), sample.sample_id, max_pixels)
            result.modes[header.kind] += 1
            if decode:
                load_rgb(path, (sample.height, sample.width), sample.sample_id, max_pixels)
        except UserError as error:
            _add(result, error)
    return result


def _add(result: SplitCheck, problem: object) -> None:
    result.problem_count += 1
    if len(result.problems) < 200:
        result.problems.append(str(problem))
