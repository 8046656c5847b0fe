"""Report specs: the YAML files in leaderboards/ that say what a leaderboard shows.

A spec names data sets and the splits to report, the split thresholds are calibrated on, the
methods (each with optional config overrides and a display label), the grids, the gallery, the
statistics and, for ``refbench regress``, the committed baseline and its tolerances. The README's
"Reports" section documents every field. Every key is checked: a typo is an error with a
suggestion, never a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refbench.config import Override, as_text
from refbench.errors import UserError, did_you_mean
from refbench.grid import GridSpec
from refbench.reported import REGISTRY, Reported, chosen
from refbench.results.calibration import Calibration, check_criterion
from refbench.results.metrics import METRIC_NAMES, SEMANTIC_MIOU
from refbench.results.scoring import Protocol
from refbench.results.stats import StatsOptions

REGRESS_METRICS = (*METRIC_NAMES, SEMANTIC_MIOU)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    splits: list[str]
    calibration_split: str | None
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodEntry:
    name: str
    label: str
    overrides: list[Override] = field(default_factory=list)


@dataclass(frozen=True)
class GridEntry:
    grid: GridSpec
    dataset: str
    split: str
    baseline: str | None = None  # a method label whose figure the grid's chart draws across


@dataclass(frozen=True)
class GalleryEntry:
    dataset: str
    split: str
    count: int
    include: list[str]
    contrast: tuple[str, str]
    methods: list[str]


@dataclass(frozen=True)
class RegressEntry:
    baseline: Path
    tolerance: dict[str, float]


@dataclass(frozen=True)
class Link:
    """A link in every page's navigation: another spec's site, a README section."""

    title: str
    href: str

    @property
    def is_address(self) -> bool:
        """An http(s) address, used as is; anything else is relative to the site root."""
        return self.href.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class ReportSpec:
    path: Path
    title: str
    store: Path
    seed: int
    batch_size: int
    limit: int | None
    sweep_step: float
    breakdown: str | None
    calibration: Calibration
    stats: StatsOptions
    datasets: list[DatasetEntry]
    methods: list[MethodEntry]
    compare: list[tuple[str, str]]
    grids: list[GridEntry]
    gallery: GalleryEntry | None
    regress: RegressEntry | None
    note: str = ""  # a paragraph under the title: what the page shows, the verdict
    links: list[Link] = field(default_factory=list)
    protocol: Protocol = field(default_factory=Protocol)  # where IoU is taken
    compare_by: str | None = None  # paired tests also within each value of this field
    reported: list[Reported] = field(default_factory=list)  # published figures shown beside ours
    skip_empty_gt: bool = False  # leave out samples whose ground truth is empty (counted)

    def method(self, label: str) -> MethodEntry:
        return _find_method(self.methods, label, "methods")

    def dataset(self, name: str) -> DatasetEntry:
        return _find_dataset(self.datasets, name, "datasets")


def _find_method(methods: list[MethodEntry], label: str, where: str) -> MethodEntry:
    for m in methods:
        if m.label == label:
            return m
    raise did_you_mean(label, [m.label for m in methods], f"method label in {where}")


def _find_dataset(datasets: list[DatasetEntry], name: str, where: str) -> DatasetEntry:
    for d in datasets:
        if d.name == name:
            return d
    raise did_you_mean(name, [d.name for d in datasets], f"dataset in {where}")


class _Section:
    """One mapping of the spec, read key by key; unread keys are errors."""

    def __init__(self, data: Any, where: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a mapping, got {type(data).__name__}")
        self.data, self.where, self.read = data, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False, minimum: float | None = None) -> Any:
        self.read.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise UserError(f"{self.where}: missing required key {key!r}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise UserError(f"{self.where}.{key} must be {names}, got {value!r}")
        if minimum is not None and isinstance(value, (int, float)) and not value >= minimum:
            raise UserError(f"{self.where}.{key} must be at least {minimum:g}, got {value!r}")
        return value

    def done(self) -> None:
        for key in self.data:
            if key not in self.read:
                raise did_you_mean(str(key), self.read, f"key in {self.where}")


def _text_list(value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, (dict, list)) or v is None for v in items):
        raise UserError(f"{where} must be a value or a list of values, got {value!r}")
    return [as_text(v) for v in items]


def _links(raw: list[Any], where: str) -> list[Link]:
    """Relative paths (from the site root) or http(s) addresses: never a script URL."""
    links = []
    for i, item in enumerate(raw):
        section = _Section(item, f"{where}[{i}]")
        link = Link(section.get("title", str, required=True), section.get("href", str, required=True))
        section.done()
        scheme = link.href.split(":", 1)[0].lower() if ":" in link.href.split("/", 1)[0] else ""
        if scheme not in ("", "http", "https") or link.href.startswith("/"):
            raise UserError(f"{section.where}.href {link.href!r} must be a path relative to the "
                            f"site (e.g. binding/index.html) or an http(s) address")
        links.append(link)
    return links


def _overrides(method: str, data: Any, where: str) -> list[Override]:
    """A ``set:`` mapping as overrides; YAML values are checked against the config's types."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must map config keys to values, got {data!r}")
    return [Override(method, str(k), v) for k, v in data.items()]


def _nullable(section: _Section, key: str, default: str | None) -> str | None:
    """A text field where an explicit null means "none" (no calibration split: a fixed
    threshold; no breakdown) and absence means ``default``."""
    if key in section.data and section.data[key] is None:
        section.read.add(key)
        return None
    return section.get(key, str, default)


def _label(name: str, overrides: list[Override]) -> str:
    return name + (f" ({', '.join(f'{o.key}={o.text}' for o in overrides)})" if overrides else "")


def load_spec(path: Path, limit: int | None = None, store: Path | None = None) -> ReportSpec:
    """Read and check a spec; ``limit`` and ``store`` override the spec's own (command line)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"spec {path} does not exist (the specs live in leaderboards/)") from None
    except yaml.YAMLError as error:
        raise UserError(f"spec {path} is not valid YAML ({error})".replace("\n", " ")) from None
    top = _Section(data, path.name)

    cal = _Section(top.get("calibration", dict), f"{path.name}: calibration")
    calibration = Calibration(
        split=_nullable(cal, "split", "val"),
        criterion=check_criterion(cal.get("criterion", str, "mIoU")),
        tune_on_reported_split=cal.get("tune_on_reported_split", bool, False),
        fixed=cal.get("threshold", float, 0.5))
    cal.done()
    st = _Section(top.get("statistics", dict), f"{path.name}: statistics")
    stats = StatsOptions(resamples=st.get("resamples", int, 2000),
                         confidence=st.get("confidence", float, 0.95), seed=st.get("seed", int, 0))
    st.done()
    stats.check(f"{path.name}: statistics")

    datasets = []
    for i, raw in enumerate(top.get("datasets", list, required=True)):
        d = _Section(raw, f"{path.name}: datasets[{i}]")
        root = d.get("root", str)
        datasets.append(DatasetEntry(
            name=d.get("name", str, required=True),
            splits=_text_list(d.get("splits", (list, str), required=True), f"{d.where}.splits"),
            calibration_split=_nullable(d, "calibration_split", calibration.split),
            root=Path(root) if root else None, options=d.get("options", dict, {})))
        d.done()
    if not datasets:
        raise UserError(f"{path.name}: datasets is empty")

    methods: list[MethodEntry] = []
    for i, raw in enumerate(top.get("methods", list, required=True)):
        m = _Section(raw, f"{path.name}: methods[{i}]")
        name = m.get("name", str, required=True)
        overrides = _overrides(name, m.get("set", dict, {}), f"{m.where}.set")
        methods.append(MethodEntry(name, m.get("label", str, _label(name, overrides)), overrides))
        m.done()
    labels = [m.label for m in methods]
    if not methods or len(set(labels)) != len(labels):
        raise UserError(f"{path.name}: methods must be non-empty with distinct labels "
                        f"(give 'label:' to entries of one method with different 'set:')")

    compare = top.get("compare", list)
    pairs = [tuple(_text_list(p, f"{path.name}: compare")) for p in compare] if compare else [
        (m.label, methods[0].label) for m in methods[1:]]
    for pair in pairs:
        if len(pair) != 2:
            raise UserError(f"{path.name}: compare entries are pairs of method labels, got {list(pair)}")
        for label in pair:
            _find_method(methods, label, f"{path.name}: compare")

    grids = []
    for i, raw in enumerate(top.get("grids", list, [])):
        g = _Section(raw, f"{path.name}: grids[{i}]")
        method = g.get("method", str, required=True)
        params = {str(k): _text_list(v, f"{g.where}.params.{k}")
                  for k, v in g.get("params", dict, required=True).items()}
        metric = g.get("metric", str, "mIoU")
        if metric not in METRIC_NAMES:
            raise did_you_mean(metric, METRIC_NAMES, f"metric in {g.where}")
        dataset = _find_dataset(datasets, g.get("dataset", str, datasets[0].name), g.where)
        fixed = _overrides(method, g.get("set", dict, {}), f"{g.where}.set")
        split = g.get("split", str, dataset.splits[0])
        baseline = g.get("baseline", str)
        if baseline is not None:
            baseline = _find_method(methods, baseline, f"{g.where}.baseline").label
            if split not in dataset.splits:
                raise UserError(f"{g.where}.baseline: the grid's split {split!r} is not reported "
                                f"for {dataset.name} ({', '.join(dataset.splits)}), so the "
                                f"baseline has no figure there: drop baseline or report {split}")
        grids.append(GridEntry(GridSpec(method, params, fixed, metric), dataset.name, split,
                               baseline))
        g.done()

    gallery = None
    if (raw := top.get("gallery", dict)) is not None:
        g = _Section(raw, f"{path.name}: gallery")
        dataset = _find_dataset(datasets, g.get("dataset", str, datasets[0].name), g.where)
        shown = [_find_method(methods, label, g.where).label
                 for label in _text_list(g.get("methods", (list, str), labels), f"{g.where}.methods")]
        contrast = _text_list(g.get("contrast", list, shown[:2]), f"{g.where}.contrast")
        if len(contrast) != 2:
            raise UserError(f"{g.where}.contrast must name two method labels")
        for label in contrast:
            _find_method(methods, label, g.where)
        include = g.get("include", (list, str, int))
        split = g.get("split", str, dataset.splits[0])
        if split not in dataset.splits:
            raise UserError(f"{g.where}.split {split!r} is not a reported split of {dataset.name} "
                            f"({', '.join(dataset.splits)})")
        gallery = GalleryEntry(
            dataset=dataset.name, split=split,
            count=g.get("samples", int, 6, minimum=1),
            include=_text_list(include, f"{g.where}.include") if include else [],
            contrast=(contrast[0], contrast[1]), methods=shown)
        g.done()

    regress = None
    if (raw := top.get("regress", dict)) is not None:
        r = _Section(raw, f"{path.name}: regress")
        tolerance_section = _Section(r.get("tolerance", dict, {"mIoU": 0.0}), f"{r.where}.tolerance")
        tolerance = {str(k): tolerance_section.get(str(k), float, minimum=0)
                     for k in tolerance_section.data}
        for metric in tolerance:
            if metric not in REGRESS_METRICS:
                raise did_you_mean(metric, REGRESS_METRICS, f"metric in {r.where}.tolerance")
        regress = RegressEntry(path.parent / r.get("baseline", str, f"baselines/{path.stem}.json"),
                               tolerance)
        r.done()

    spec_limit = top.get("limit", int, minimum=1)
    spec_store = Path(top.get("store", str, f"runs/{path.stem}"))
    spec = ReportSpec(
        path=path, title=top.get("title", str, path.stem), store=store or spec_store,
        seed=top.get("seed", int, 0), batch_size=top.get("batch_size", int, 8, minimum=1),
        limit=limit if limit is not None else spec_limit,
        sweep_step=top.get("sweep_step", float, 0.05), breakdown=_nullable(top, "breakdown", "kind"),
        calibration=calibration, stats=stats, datasets=datasets, methods=methods,
        compare=pairs, grids=grids, gallery=gallery, regress=regress,  # type: ignore[arg-type]
        note=top.get("note", str, "").strip(),
        links=_links(top.get("links", list, []), f"{path.name}: links"),
        compare_by=_nullable(top, "compare_by", None),
        protocol=Protocol(top.get("protocol", str, "image"), top.get("protocol_size", int, 512, minimum=1)),
        reported=chosen(path.parent / REGISTRY, _text_list(top.get("reported", (list, str)),
                                                           f"{path.name}: reported")
                        if top.data.get("reported") else [], f"{path.name}: reported"),
        skip_empty_gt=top.get("skip_empty_gt", bool, False))
    top.done()
    if spec.limit is not None and spec.limit < 1:
        raise UserError(f"{path.name}: limit must be positive")
    if spec.batch_size < 1 or not 0 < spec.sweep_step < 1:
        raise UserError(f"{path.name}: batch_size must be positive and sweep_step in (0, 1)")
    return spec
