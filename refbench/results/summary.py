"""``Results``: what an evaluation returns, for notebooks, the command line and reports alike.

Per-sample rows and per-method figures as pandas DataFrames, the sweep, the intervals, the
counts, and a JSON form (the body of ``results.json``) that records the versions, the git
commit, the data set's fingerprint and whether ``limit`` cut the split. Everything is in memory:
the store the evaluation used may be gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench import provenance
from refbench.data.sample import Sample
from refbench.results.calibration import Calibration
from refbench.results.files import dumps, timestamp
from refbench.results.metrics import METRIC_NAMES, SEMANTIC_MIOU
from refbench.results.scored import Scored
from refbench.results.scoring import DEFAULT_PROTOCOL, Protocol
from refbench.results.stats import StatsOptions
from refbench.results.tables import Table, breakdown_table, leaderboard, slug

LIMIT_NOTE = "limit was used: these figures cover a subset and are NOT a real score"


@dataclass(frozen=True)
class SplitInfo:
    """What was evaluated on: enough to cite the data without opening it again."""

    dataset: str
    split: str
    task: str
    root: str
    fingerprint: str
    n_samples: int
    skipped_empty_gt: int = 0  # samples left out for an empty ground truth (--skip-empty-gt)
    # semantic data: the protocol as the papers' tables name it (VOC21 with background, VOC20
    # without, ...): a figure is only comparable with one of the same protocol
    benchmark: str = ""


@dataclass
class Results:
    """Figures per (method label, reported split), computed from the store once."""

    splits: list[SplitInfo]
    scored: dict[tuple[str, str], Scored]  # (label, split) -> figures
    calibration: Calibration
    statistics: StatsOptions
    seed: int
    limit: int | None
    batch_size: int
    processes: int
    breakdown: str | None = None
    calibrating: dict[str, Scored] = field(default_factory=dict)  # label -> its calibration run
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # split -> what was evaluated
    protocol: Protocol = DEFAULT_PROTOCOL
    created: str = field(default_factory=timestamp)

    # -- access ----------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(label for label, _ in self.scored))

    @property
    def split_names(self) -> list[str]:
        return [s.split for s in self.splits]

    def on(self, split: str | None = None) -> dict[str, Scored]:
        """Label -> figures on one reported split (the only one, if there is one)."""
        split = split or self._only_split()
        return {label: s for (label, sp), s in self.scored.items() if sp == split}

    def __getitem__(self, label: str) -> Scored:
        return self.on()[label]

    def __iter__(self) -> Iterator[Scored]:
        return iter(self.scored.values())

    def _only_split(self) -> str:
        if len(self.splits) != 1:
            raise ValueError(f"these results cover splits {self.split_names}: name one")
        return self.splits[0].split

    # -- tables ----------------------------------------------------------------------------
    @property
    def metrics(self) -> Any:
        """One row per method and split: threshold, n, every metric (fractions), intervals."""
        import pandas as pd

        records = []
        for (label, split), s in self.scored.items():
            record: dict[str, Any] = {"method": label, "split": split, "threshold": s.threshold.value,
                                      "n": s.n}
            for name in METRIC_NAMES:
                record[name] = s.metrics[name]
                if name in s.intervals:
                    record[f"{name} low"] = s.intervals[name].low
                    record[f"{name} high"] = s.intervals[name].high
            if s.semantic is not None:
                record[SEMANTIC_MIOU] = s.semantic["mIoU"]
            records.append(record)
        return pd.DataFrame.from_records(records)

    @property
    def rows(self) -> Any:
        """One row per sample and method: ids, the sample's fields (e.g. ``kind``), the counts
        and IoU at the method's reported threshold, and what the method noted (``info.*``)."""
        import pandas as pd

        records = []
        for (label, split), s in self.scored.items():
            ious = s.rows.ious(s.k)
            for j, row in enumerate(s.rows.rows):
                inter, union = int(s.rows.inter[j, s.k]), int(s.rows.union[j, s.k])
                records.append({
                    "method": label, "split": split, "sample_id": row.sample_id,
                    "image_id": row.image_id, "group_id": row.group_id, **row.meta,
                    "threshold": s.threshold.value, "inter": inter, "union": union,
                    "pred_area": int(row.pred_area[s.k]), "gt_area": row.gt_area,
                    "iou": float(ious[j]), **{f"info.{k}": v for k, v in row.info.items()}})
        return pd.DataFrame.from_records(records)

    @property
    def sweep(self) -> Any:
        """Every metric at every threshold of the sweep, per score-map method and split."""
        import pandas as pd

        records = [{"method": label, "split": split, **point}
                   for (label, split), s in self.scored.items() if not s.rows.is_mask
                   for point in s.rows.sweep()]
        return pd.DataFrame.from_records(records)

    @property
    def intervals(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {key: {m: i.as_dict() for m, i in s.intervals.items()} for key, s in self.scored.items()}

    @property
    def counts(self) -> dict[tuple[str, str], dict[str, float]]:
        return {key: s.rows.counts() for key, s in self.scored.items()}

    def table(self, split: str | None = None) -> Table:
        """The leaderboard of one split, as the console and the site show it."""
        split = split or self._only_split()
        info = next(s for s in self.splits if s.split == split)
        table = leaderboard(f"leaderboard-{slug(f'{info.dataset}-{split}')}", f"Leaderboard: {info.dataset} {split}",
                            list(self.on(split).items()), self.calibration.split,
                            self.statistics.confidence)
        if self.protocol.name != "image":
            table.notes.append(f"Protocol {self.protocol.describe()}.")
        return table

    def breakdown_table(self, split: str | None = None) -> Table | None:
        split = split or self._only_split()
        entries = [(label, s.breakdowns[self.breakdown]) for label, s in self.on(split).items()
                   if self.breakdown and self.breakdown in s.breakdowns]
        info = next(s for s in self.splits if s.split == split)
        return breakdown_table(f"breakdown-{slug(f'{info.dataset}-{split}')}",
                               f"Breakdown by {self.breakdown}: {info.dataset} {split}",
                               self.breakdown or "", entries)

    # -- JSON ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The results file's content: provenance, then one entry per method (per split when
        several were reported)."""
        header = {
            "refbench_version": provenance.versions()["refbench"], "created": self.created,
            "git_hash": provenance.git_hash(), "versions": provenance.versions(),
            "limit": self.limit, "note": LIMIT_NOTE if self.limit is not None else None,
            "seed": self.seed, "batch_size": self.batch_size, "processes": self.processes,
            "calibration": {"split": self.calibration.split, "criterion": self.calibration.criterion,
                            "fixed": self.calibration.fixed,
                            "tune_on_reported_split": self.calibration.tune_on_reported_split},
            "statistics": {"resamples": self.statistics.resamples,
                           "confidence": self.statistics.confidence, "seed": self.statistics.seed},
            "protocol": {"name": self.protocol.name, "size": self.protocol.output_size,
                         "description": self.protocol.describe()},
        }
        if len(self.splits) == 1:
            (info,) = self.splits
            return {**header, "dataset": _split_dict(info),
                    "results": {label: s.as_dict() for label, s in self.on(info.split).items()}}
        return {**header, "datasets": {s.split: _split_dict(s) for s in self.splits},
                "results": {s.split: {label: x.as_dict() for label, x in self.on(s.split).items()}
                            for s in self.splits}}

    def to_json(self, path: str | Path | None = None) -> str:
        """The results as JSON text; written to ``path`` too when given."""
        text = dumps(self.as_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    def __repr__(self) -> str:
        shown = ", ".join(f"{label} on {split}: mIoU {100 * s.metrics['mIoU']:.2f}"
                          for (label, split), s in self.scored.items())
        return f"Results({shown})"


def _split_dict(info: SplitInfo) -> dict[str, Any]:
    return {"name": info.dataset, "split": info.split, "task": info.task, "root": info.root,
            "fingerprint": info.fingerprint, "n_samples": info.n_samples,
            "skipped_empty_gt": info.skipped_empty_gt,
            **({"benchmark": info.benchmark} if info.benchmark else {})}

