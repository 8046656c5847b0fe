"""From stored rows to reported numbers: metrics per method, results.json and the console table."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refbench.data.sample import Sample
from refbench.metrics import confusion_miou, iou, summarize, summarize_sweep, threshold_index
from refbench.store import SampleRow, Store

CONFUSION_SIZE = 256  # category ids are < 255 (255 = ignore); 0 is background


@dataclass
class RunSamples:
    """One run's per-sample counts over exactly a list of samples, in that list's order (so
    two runs over the same samples line up row by row for paired comparisons)."""

    rows: list[SampleRow]
    inter: np.ndarray  # (N, T)
    union: np.ndarray  # (N, T)
    missing: int

    @property
    def is_mask(self) -> bool:
        return bool(self.rows) and all(r.is_mask for r in self.rows)

    @property
    def image_ids(self) -> np.ndarray:
        return np.array([r.image_id for r in self.rows], dtype=np.int64)

    def ious(self, k: int) -> np.ndarray:
        """Per-sample IoU at threshold index ``k``."""
        return iou(self.inter[:, k], self.union[:, k])


def load_run_samples(store: Store, run_key: str, samples: Sequence[Sample],
                     thresholds: Sequence[float]) -> RunSamples:
    """The stored rows of ``samples`` (rows of other samples are ignored; absent ones counted)."""
    by_id = {r.sample_id: r for r in store.rows(run_key)}
    rows = [by_id[s.sample_id] for s in samples if s.sample_id in by_id]
    t = len(thresholds)
    inter = np.array([r.inter for r in rows], dtype=np.int64).reshape(-1, t)
    pred = np.array([r.pred_area for r in rows], dtype=np.int64).reshape(-1, t)
    gt = np.array([r.gt_area for r in rows], dtype=np.int64).reshape(-1, 1)
    return RunSamples(rows, inter, pred + gt - inter, len(samples) - len(rows))


def breakdown(stored: RunSamples, k: int, field: str) -> dict[str, dict[str, float]]:
    """Metrics at threshold index ``k`` per value of the sample meta ``field`` (e.g. RefShapes'
    ``kind``); samples without the field are grouped under "(none)". Empty when no sample has it."""
    values = [str(r.meta.get(field, "(none)")) for r in stored.rows]
    if all(v == "(none)" for v in values):
        return {}
    keys = np.array(values)
    return {value: summarize(stored.inter[keys == value, k], stored.union[keys == value, k])
            for value in sorted(set(values))}


def collect(store: Store, run_key: str, samples: Sequence[Sample], thresholds: Sequence[float],
            report_threshold: float, semantic: bool = False,
            breakdown_field: str | None = None) -> dict[str, Any]:
    """Metrics of one run over exactly ``samples`` (rows of other samples are ignored), broken
    down by ``breakdown_field`` of the samples' meta where they have it."""
    stored = load_run_samples(store, run_key, samples, thresholds)
    rows = stored.rows
    t = len(thresholds)
    sweep = summarize_sweep(stored.inter, stored.union, thresholds)
    is_mask = stored.is_mask
    k = threshold_index(thresholds, report_threshold)
    result: dict[str, Any] = {
        "n": len(rows), "missing": stored.missing, "output": "mask" if is_mask else "scores",
        "threshold": None if is_mask else report_threshold,
        "metrics": {key: v for key, v in sweep[k].items() if key != "threshold"},
        "counts": _counts(rows),
    }
    if breakdown_field and (groups := breakdown(stored, k, breakdown_field)):
        result["breakdown"] = {breakdown_field: groups}
    if not is_mask:
        result["sweep"] = sweep
    if semantic:
        groups = {s.group for s in samples}
        confusion = np.zeros((t, CONFUSION_SIZE, CONFUSION_SIZE), dtype=np.int64)
        for g in store.groups(run_key):
            if g.group_id in groups:
                index = np.array([0] + list(g.classes))
                confusion[:, index[:, None], index[None, :]] += g.confusion
        per_threshold = [{"threshold": th, **confusion_miou(confusion[i])} for i, th in enumerate(thresholds)]
        result["semantic"] = {key: v for key, v in per_threshold[k].items() if key != "threshold"}
        if not is_mask:
            result["semantic_sweep"] = per_threshold
    return result


def _counts(rows: Sequence[Any]) -> dict[str, float]:
    """Sums of numeric per-sample info fields (e.g. how often a method fell back)."""
    counts: dict[str, float] = {}
    for row in rows:
        for key, value in row.info.items():
            if isinstance(value, bool | int | float):
                counts[key] = counts.get(key, 0) + value
    return counts


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a results file."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The console table: one row per method, metrics in percent."""
    semantic = any("semantic" in r for r in results.values())
    header = ["method", "n", "thr", "oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"]
    if semantic:
        header.append("sem.mIoU")
    lines = []
    for name, r in results.items():
        m = r["metrics"]
        row = [name, str(r["n"]), "mask" if r["threshold"] is None else f"{r['threshold']:.2f}",
               _pct(m["oIoU"]), _pct(m["mIoU"]), *(_pct(m[f"P@{k}"]) for k in (0.5, 0.6, 0.7, 0.8, 0.9))]
        if semantic:
            row.append(_pct(r.get("semantic", {}).get("mIoU")))
        lines.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    table = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(l) for l in lines)]
    for name, r in results.items():
        for field, groups in r.get("breakdown", {}).items():
            parts = [f"{value} {_pct(g['mIoU'])} (n={g['n']})" for value, g in groups.items()]
            table.append(f"{name} mIoU by {field}: " + ", ".join(parts))
    return "\n".join(table)


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
