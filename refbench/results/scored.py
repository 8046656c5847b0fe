"""A run's stored rows, read once, and the figures they give at the reported threshold.

``RunRows`` is one run's counts over exactly a list of samples, in that list's order (so two runs
over the same samples line up row by row for paired comparisons), read from the store in one
query. ``Scored`` is everything a table, a results file or a DataFrame shows for one run on one
split: the threshold and how it was chosen, every metric, the intervals, the breakdown and the
counts, all computed from that one read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refbench.data.sample import Sample
from refbench.results.calibration import Threshold
from refbench.results.metrics import SEMANTIC_MIOU, confusion_miou, iou, summarize, summarize_sweep
from refbench.results.stats import Interval, StatsOptions, bootstrap_ci
from refbench.store import RunRecord, SampleRow, Store

CONFUSION_SIZE = 256  # category ids are < 255 (255 = ignore); 0 is background
INFO_PREFIX = "info."  # a breakdown field naming what the method noted per sample


def field_value(row: SampleRow, name: str) -> str:
    """A row's value of a sample field (``kind``) or of a method's per-sample note
    (``info.binding_applied``), as text; "(none)" where it has none."""
    source = row.info if name.startswith(INFO_PREFIX) else row.meta
    key = name[len(INFO_PREFIX):] if name.startswith(INFO_PREFIX) else name
    value = source.get(key)
    if value is None and name.startswith(INFO_PREFIX):
        value = 0  # a note a method did not make is a count of 0
    return "(none)" if value is None else str(value)


@dataclass
class RunRows:
    """One run's per-sample counts over exactly a list of samples, in that order."""

    run_key: str
    rows: list[SampleRow]
    inter: np.ndarray  # (N, T)
    union: np.ndarray  # (N, T)
    thresholds: tuple[float, ...]
    missing: int  # samples of the list the store has no row for
    confusion: np.ndarray | None = None  # (T, C, C) summed over the samples' images (semantic)
    empty_iou: float = 1.0  # the IoU of a sample whose prediction and truth are both empty

    @classmethod
    def load(cls, store: Store, run_key: str, samples: Sequence[Sample],
             thresholds: Sequence[float], semantic: bool = False, empty_iou: float = 1.0) -> RunRows:
        """Read the run's rows once; rows of other samples are ignored, absent ones counted."""
        by_id = {r.sample_id: r for r in store.rows(run_key)}
        rows = [by_id[s.sample_id] for s in samples if s.sample_id in by_id]
        t = len(thresholds)
        inter = np.array([r.inter for r in rows], dtype=np.int64).reshape(-1, t)
        pred = np.array([r.pred_area for r in rows], dtype=np.int64).reshape(-1, t)
        gt = np.array([r.gt_area for r in rows], dtype=np.int64).reshape(-1, 1)
        confusion = None
        if semantic:
            wanted = {s.group for s in samples}
            confusion = np.zeros((t, CONFUSION_SIZE, CONFUSION_SIZE), dtype=np.int64)
            for g in store.groups(run_key):
                if g.group_id in wanted:
                    index = np.array([0] + list(g.classes))
                    confusion[:, index[:, None], index[None, :]] += g.confusion
        return cls(run_key, rows, inter, pred + gt - inter, tuple(thresholds),
                   len(samples) - len(rows), confusion, empty_iou)

    @property
    def is_mask(self) -> bool:
        return bool(self.rows) and all(r.is_mask for r in self.rows)

    @property
    def image_ids(self) -> np.ndarray:
        return np.array([r.image_id for r in self.rows], dtype=np.int64)

    def ious(self, k: int) -> np.ndarray:
        """Per-sample IoU at threshold index ``k``."""
        return iou(self.inter[:, k], self.union[:, k], self.empty_iou)

    def sweep(self) -> list[dict[str, float]]:
        return summarize_sweep(self.inter, self.union, self.thresholds, self.empty_iou)

    def semantic_sweep(self) -> list[dict[str, float]] | None:
        if self.confusion is None:
            return None
        return [{"threshold": th, **confusion_miou(self.confusion[i])}
                for i, th in enumerate(self.thresholds)]

    def sweeps(self) -> dict[str, list[dict[str, float]] | None]:
        """What a threshold is chosen from (``calibration.choose_threshold``)."""
        return {"sweep": self.sweep(), "semantic_sweep": self.semantic_sweep()}

    def counts(self) -> dict[str, float]:
        """Sums of numeric per-sample info fields (e.g. how often a method fell back)."""
        counts: dict[str, float] = {}
        for row in self.rows:
            for key, value in row.info.items():
                if isinstance(value, bool | int | float):
                    counts[key] = counts.get(key, 0) + value
        return counts

    def values(self, field_name: str) -> np.ndarray:
        """Each row's value of a sample field or method note (``field_value``)."""
        return np.array([field_value(r, field_name) for r in self.rows])

    def breakdown(self, k: int, field_name: str,
                  stats: StatsOptions | None = None) -> dict[str, dict[str, float]]:
        """Metrics at threshold index ``k`` per value of ``field_name``: a sample field (e.g.
        RefShapes' ``kind``; samples without it are grouped under "(none)") or a method's note
        (``info.binding_applied``). Empty when no sample has the field. With ``stats``, each
        group also gets its bootstrap interval (``mIoU_low``, ``mIoU_high``, ...), images of the
        group resampled: a group of 65 sentences is read very differently from one of 400."""
        values = [field_value(r, field_name) for r in self.rows]
        if all(v == "(none)" for v in values):
            return {}
        keys = np.array(values)
        groups = {}
        for value in sorted(set(values)):
            inside = keys == value
            group = summarize(self.inter[inside, k], self.union[inside, k], self.empty_iou)
            if stats is not None:
                for name, interval in bootstrap_ci(
                        self.inter[inside, k], self.union[inside, k], self.image_ids[inside],
                        stats.resamples, stats.confidence, stats.seed,
                        empty=self.empty_iou).items():
                    group[f"{name}_low"], group[f"{name}_high"] = interval.low, interval.high
            groups[value] = group
        return groups


@dataclass
class Work:
    """Who computed a run's rows in this invocation."""

    computed: int = 0  # by this process (all processes, under accelerate)
    reused: int = 0  # already in the store when the run started
    seconds: float = 0.0  # predict + score + write, image loading excluded

    def as_dict(self, n: int) -> dict[str, Any]:
        return {"computed": self.computed, "reused": self.reused,
                "computed_elsewhere": max(0, n - self.computed - self.reused),
                "seconds_per_sample": self.seconds / self.computed if self.computed else None}


@dataclass
class Scored:
    """A run's figures on one split at its reported threshold."""

    label: str
    record: RunRecord
    plugin: str
    work: Work
    rows: RunRows
    threshold: Threshold
    k: int  # index of the threshold in the sweep (any index for masks: they score the same)
    metrics: dict[str, float]  # every metric at k, and n
    intervals: dict[str, Interval]
    semantic: dict[str, float] | None = None
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @classmethod
    def of(cls, label: str, record: RunRecord, plugin: str, work: Work, rows: RunRows,
           threshold: Threshold, stats: StatsOptions, breakdown: str | None = None) -> Scored:
        from refbench.results.scoring import threshold_index

        k = 0 if threshold.value is None else threshold_index(rows.thresholds, threshold.value)
        metrics = summarize(rows.inter[:, k], rows.union[:, k], rows.empty_iou)
        intervals = bootstrap_ci(rows.inter[:, k], rows.union[:, k], rows.image_ids,
                                 stats.resamples, stats.confidence, stats.seed,
                                 empty=rows.empty_iou)
        semantic = None
        if rows.confusion is not None:
            semantic = confusion_miou(rows.confusion[k])
        breakdowns = {}
        if breakdown and (groups := rows.breakdown(k, breakdown, stats)):
            breakdowns[breakdown] = groups
        return cls(label, record, plugin, work, rows, threshold, k, metrics, intervals,
                   semantic, breakdowns)

    @property
    def run_key(self) -> str:
        return self.record.run_key

    @property
    def n(self) -> int:
        return int(self.metrics["n"])

    def figure(self, name: str) -> float:
        """A metric by name, ``semantic_mIoU`` included."""
        if name == SEMANTIC_MIOU:
            return float("nan") if self.semantic is None else self.semantic["mIoU"]
        return self.metrics[name]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: identity, config, threshold and how it was chosen, every figure."""
        out: dict[str, Any] = {
            "label": self.label, "method": self.record.method, "plugin": self.plugin,
            "fingerprint": self.record.method_fingerprint, "run_key": self.run_key,
            "config": self.record.config, "dataset": self.record.dataset, "split": self.record.split,
            "dataset_fingerprint": self.record.dataset_fingerprint, "seed": self.record.seed,
            "limit": self.record.limit_n, "n": self.n, "missing": self.rows.missing,
            "output": "mask" if self.rows.is_mask else "scores",
            "threshold": self.threshold.value, "threshold_label": self.threshold.label(),
            "calibration": self.threshold.as_dict(),
            "metrics": self.metrics, "intervals": {k: v.as_dict() for k, v in self.intervals.items()},
            "counts": self.rows.counts(),
        }
        if self.breakdowns:
            out["breakdown"] = self.breakdowns
        if not self.rows.is_mask:
            out["sweep"] = self.rows.sweep()
        if self.semantic is not None:
            out["semantic"] = self.semantic
            if not self.rows.is_mask:
                out["semantic_sweep"] = self.rows.semantic_sweep()
        out.update(self.work.as_dict(self.n))
        return out
