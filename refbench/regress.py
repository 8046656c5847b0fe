"""``refbench regress``: recompute a small leaderboard and compare it with committed figures.

The figures are recomputed from scratch in a temporary store every time: a store left over
from older code would otherwise hand back the old rows (the run key hashes the config and the
version, not the code) and hide exactly the change this check exists to catch. A figure that
moves by more than its tolerance in *either* direction fails: an unexplained improvement is as
much a change in behaviour as a drop. After an intended change, ``--update`` rewrites the
baseline, and the diff shows up in review.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refbench import distributed, provenance
from refbench.errors import UserError
from refbench.plugins import PluginHost
from refbench.report.build import SplitReport, run_leaderboards
from refbench.report.spec import ReportSpec
from refbench.results.files import timestamp, write_json
from refbench.results.metrics import METRIC_NAMES, SEMANTIC_MIOU
from refbench.results.tables import Cell, Table, to_text
from refbench.store import Store


@dataclass(frozen=True)
class Difference:
    key: str  # dataset/split/method label
    metric: str
    baseline: Any
    current: Any
    tolerance: float | None
    status: str  # ok, worse, better, changed, missing, new

    @property
    def failed(self) -> bool:
        return self.status != "ok"


def figures(splits: list[SplitReport]) -> dict[str, dict[str, Any]]:
    """dataset/split/label -> threshold label and every metric (fractions, 6 decimals)."""
    out: dict[str, dict[str, Any]] = {}
    for split in splits:
        for label, scored in split.scored.items():
            values: dict[str, Any] = {"threshold": scored.threshold.label()}
            values.update({m: round(scored.metrics[m], 6) for m in METRIC_NAMES})
            if scored.semantic is not None:
                values[SEMANTIC_MIOU] = round(scored.figure(SEMANTIC_MIOU), 6)
            out[f"{split.dataset.name}/{split.split}/{label}"] = values
    return out


def compare(baseline: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]],
            tolerance: dict[str, float]) -> list[Difference]:
    diffs = []
    for key in list(dict.fromkeys([*baseline, *current])):
        if key not in current:
            diffs.append(Difference(key, "-", "present", "absent", None, "missing"))
            continue
        if key not in baseline:
            diffs.append(Difference(key, "-", "absent", "present", None, "new"))
            continue
        base, now = baseline[key], current[key]
        diffs.append(Difference(key, "threshold", base.get("threshold"), now["threshold"], None,
                                "ok" if base.get("threshold") == now["threshold"] else "changed"))
        for metric, tol in tolerance.items():
            if metric not in now:
                continue
            old, new = base.get(metric), now[metric]
            if old is None or math.isnan(old) != math.isnan(new):
                status = "changed"
            elif abs(new - old) <= tol + 1e-12 or (math.isnan(old) and math.isnan(new)):
                status = "ok"
            else:
                status = "worse" if new < old else "better"
            diffs.append(Difference(key, metric, old, new, tol, status))
    return diffs


def diff_table(diffs: list[Difference]) -> Table:
    def number(value: Any) -> str:
        return f"{100 * value:.2f}" if isinstance(value, float) else str(value)

    rows = []
    for d in diffs:
        delta = (f"{100 * (d.current - d.baseline):+.2f}"
                 if isinstance(d.current, float) and isinstance(d.baseline, float) else "")
        tol = f"±{100 * d.tolerance:.2f}" if d.tolerance is not None else ""
        rows.append([Cell(d.key), Cell(d.metric), Cell(number(d.baseline)), Cell(number(d.current)),
                     Cell(delta), Cell(tol), Cell(d.status.upper() if d.failed else "ok")])
    return Table("regress", "Regression check (metrics in percent points)",
                 ["run", "metric", "baseline", "current", "Δ", "tolerance", "status"], rows)


def regress(host: PluginHost, spec: ReportSpec, update: bool = False, progress: bool = True) -> int:
    """Recompute the spec's leaderboards and compare them with its baseline: 0 when every
    figure is within tolerance, 1 otherwise (2 stays for user errors)."""
    if spec.regress is None:
        raise UserError(f"{spec.path} has no 'regress:' section (baseline and tolerance)")
    baseline_path = spec.regress.baseline
    cluster = distributed.detect()
    # one fresh folder, the main process's, shared by every process (under accelerate launch)
    tmp = Path(cluster.broadcast(tempfile.mkdtemp(prefix="refbench-regress-") if cluster.is_main else None))
    try:
        with Store(tmp / "store.sqlite") as store:
            current = figures(run_leaderboards(host, dataclasses.replace(spec, store=tmp), store,
                                               progress, cluster=cluster))
    finally:
        cluster.barrier()
        if cluster.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    if not cluster.is_main:
        return 0
    if update:
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(baseline_path, {
            "spec": spec.path.name, "created": timestamp(), "git_hash": provenance.git_hash(),
            "refbench": provenance.versions()["refbench"], "limit": spec.limit,
            "tolerance": spec.regress.tolerance, "figures": current})
        print(f"regress: wrote {len(current)} runs' figures to {baseline_path}")
        return 0
    try:
        baseline = json.loads(baseline_path.read_text())["figures"]
    except FileNotFoundError:
        raise UserError(f"no baseline at {baseline_path}: create it with "
                        f"`refbench regress {spec.path} --update` and commit it") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{baseline_path} is not a refbench baseline ({error}): rewrite it with "
                        f"--update") from None
    diffs = compare(baseline, current, spec.regress.tolerance)
    failed = [d for d in diffs if d.failed]
    print(to_text(diff_table(diffs)))
    if failed:
        print(f"regress: {len(failed)} of {len(diffs)} checks FAILED against {baseline_path} "
              f"(if the change is intended: refbench regress {spec.path} --update)")
        return 1
    print(f"regress: all {len(diffs)} checks within tolerance of {baseline_path}")
    return 0
