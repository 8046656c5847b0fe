"""Published figures: what the papers and write-ups report, kept apart from what refbench measures.

A registry (``leaderboards/reported.yaml``) lists works (title, authors, venue, address) and
their reported results (method, source table, data set, split, backbone, protocol, metrics in
percent, or a parameter curve). A spec names the entries its pages show; a leaderboard of the
same data set and split shows them as rows marked "reported", the rest are listed in a table of
their own. Every value is checked when the registry is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refbench.errors import UserError, did_you_mean
from refbench.results.metrics import METRIC_NAMES, SEMANTIC_MIOU

REGISTRY = "reported.yaml"  # beside the specs
KNOWN_METRICS = (*METRIC_NAMES, SEMANTIC_MIOU)


@dataclass(frozen=True)
class Work:
    key: str
    title: str
    authors: str
    venue: str
    url: str | None

    def citation(self) -> str:
        """Title, authors and venue (or address), as user-facing text cites a work."""
        where = f", {self.venue}" if self.venue else ""
        return f'"{self.title}", {self.authors}{where}' + (f" ({self.url})" if self.url else "")

    def short(self) -> str:
        first = self.authors.split(",")[0].split("(")[0].strip()
        return f"{first}, {self.venue}" if self.venue else first


@dataclass(frozen=True)
class Reported:
    id: str
    work: Work
    method: str
    source: str
    dataset: str
    split: str
    backbone: str
    protocol: str
    metrics: dict[str, float] = field(default_factory=dict)  # percent
    threshold: float | None = None
    curve: dict[str, Any] | None = None  # {param, metric, points: {value: percent}}
    # semantic figures: the open-vocabulary protocol (True: background a class, VOC21 / Context60;
    # False: background ignored, VOC20 / PC59) and where the image's class labels came from
    # ("true": the ground truth's classes, as refbench's protocol; else how they were predicted)
    background: bool | None = None
    image_labels: str = ""

    def protocol_line(self) -> str:
        """The protocol as one line: the background rule, the labels, then the free text."""
        parts = []
        if self.background is not None:
            parts.append("with background" if self.background else "without background")
        if self.image_labels:
            parts.append(f"image labels: {self.image_labels}")
        return "; ".join(parts + ([self.protocol] if self.protocol else []))


def _section(data: Any, where: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in keys:
            raise did_you_mean(str(key), keys, f"key in {where}")
    missing = sorted(required - set(data))
    if missing:
        raise UserError(f"{where}: missing required key {missing[0]!r}")
    return data


def load_registry(path: Path) -> dict[str, Reported]:
    """Every entry of a registry file, checked."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no registry of reported figures at {path}: it lives beside the specs "
                        f"(leaderboards/{REGISTRY})") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({error})".replace("\n", " ")) from None
    top = _section(data, path.name, {"works", "results"}, {"works", "results"})
    works = {}
    for key, raw in (top["works"] or {}).items():
        w = _section(raw, f"{path.name}: works.{key}", {"title", "authors", "venue", "url"},
                     {"title", "authors"})
        works[str(key)] = Work(str(key), str(w["title"]), str(w["authors"]), str(w.get("venue") or ""),
                               w.get("url"))
    out: dict[str, Reported] = {}
    keys = {"id", "work", "method", "source", "dataset", "split", "backbone", "protocol",
            "metrics", "threshold", "curve", "background", "image_labels"}
    for i, raw in enumerate(top["results"] or []):
        where = f"{path.name}: results[{i}]"
        r = _section(raw, where, keys, {"id", "work", "method", "source", "dataset", "split"})
        if r["work"] not in works:
            raise did_you_mean(str(r["work"]), works, f"work in {where}")
        metrics = {str(k): float(v) for k, v in (r.get("metrics") or {}).items()}
        for name in metrics:
            if name not in KNOWN_METRICS:
                raise did_you_mean(name, KNOWN_METRICS, f"metric in {where}")
        if not metrics and not r.get("curve"):
            raise UserError(f"{where}: give metrics or a curve")
        if str(r["id"]) in out:
            raise UserError(f"{where}: id {r['id']!r} is used twice")
        background = r.get("background")
        if background is not None and not isinstance(background, bool):
            raise UserError(f"{where}: background must be true or false, got {background!r}")
        if SEMANTIC_MIOU in metrics and (background is None or not r.get("image_labels")):
            raise UserError(f"{where}: a semantic figure must record its protocol: give "
                            f"background (true: VOC21 / Context60; false: VOC20 / PC59) and "
                            f"image_labels (true, or how they were predicted)")
        out[str(r["id"])] = Reported(
            str(r["id"]), works[r["work"]], str(r["method"]), str(r["source"]), str(r["dataset"]),
            str(r["split"]), str(r.get("backbone") or ""), str(r.get("protocol") or ""), metrics,
            r.get("threshold"), r.get("curve"), background, str(r.get("image_labels") or ""))
    return out


def chosen(registry_path: Path, ids: list[str], where: str) -> list[Reported]:
    """The entries a spec names, in its order; an unknown id is an error with a suggestion."""
    if not ids:
        return []
    registry = load_registry(registry_path)
    for key in ids:
        if key not in registry:
            raise did_you_mean(key, registry, f"reported figure in {where}")
    return [registry[key] for key in ids]


def curve_text(entry: Reported) -> str:
    if not entry.curve:
        return ""
    points = entry.curve.get("points", {})
    return f"{entry.curve.get('metric', '')} by {entry.curve.get('param', '')}: " + ", ".join(
        f"{k}: {v}" for k, v in points.items())
