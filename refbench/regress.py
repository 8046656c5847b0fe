"""``refbench regress``: recompute a small leaderboard and compare it with committed figures.

The figures are recomputed from scratch in a temporary store every time: a store left over
from older code would otherwise hand back the old rows (the run key hashes the config and the
version, not the code) and hide exactly the change this check exists to catch. A figure that
moves by more than its tolerance in *either* direction fails: an unexplained improvement is as
much a change in behaviour as a drop. After an intended change, ``--update`` rewrites the
baseline, and the diff shows up in review.

A baseline records what its figures were measured on (limit, seed, each split's data
fingerprint) and with what (versions). Before anything is computed, a baseline measured on other
samples is refused in one line (its figures would be compared with figures of other samples);
other library versions are named in one line and the check goes on. Exit codes: 0 every figure
within tolerance, 1 a regression, 2 an error (a bad spec, a missing or foreign baseline).
For CI systems the outcome is also written as JUnit XML (``--junit``: one test case per checked
figure) and as a Markdown table (``--summary``, and ``$GITHUB_STEP_SUMMARY`` when set).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refbench import distributed, provenance
from refbench.errors import UserError
from refbench.plugins import PluginHost
from refbench.data.source import open_dataset
from refbench.report.build import SplitReport, run_leaderboards, source_of
from refbench.report.spec import ReportSpec
from refbench.results.files import timestamp, write_json
from refbench.results.metrics import METRIC_NAMES, SEMANTIC_MIOU
from refbench.results.tables import Cell, Table, aligned, to_text
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


def data_fingerprints(host: PluginHost, spec: ReportSpec) -> dict[str, str]:
    """dataset/split -> the data fingerprint of every split the spec reports (synthetic data
    generated first), read before anything is computed."""
    out = {}
    for entry in spec.datasets:
        dataset = open_dataset(host, source_of(entry), generate=True)
        for split in entry.splits:
            out[f"{entry.name}/{split}"] = dataset.fingerprint(split)
    return out


TRACKED_VERSIONS = ("refbench", "torch", "diffusers", "transformers", "numpy")


def check_baseline(saved: dict[str, Any], spec: ReportSpec, fingerprints: dict[str, str],
                   where: Path) -> list[str]:
    """Refuse a baseline measured on other samples (one line: which setting, both values, the
    fix); return a line per library version that differs (the comparison goes on)."""
    fix = f"rerun with the baseline's settings, or rewrite it: refbench regress {spec.path} --update"
    for key, now in (("limit", spec.limit), ("seed", spec.seed)):
        if key in saved and saved[key] != now:
            raise UserError(f"{where} was recorded with {key} {saved[key]}, the spec now has "
                            f"{key} {now}: its figures are of other samples; {fix}")
    recorded = saved.get("data") or {}
    for split, fingerprint in fingerprints.items():
        if split in recorded and recorded[split] != fingerprint:
            raise UserError(f"{where} was recorded on other data for {split} (fingerprint "
                            f"{recorded[split][:12]}, now {fingerprint[:12]}); {fix}")
    notes = []
    for package, then in (saved.get("versions") or {}).items():
        now = provenance.versions().get(package)
        if then != now:
            notes.append(f"regress: the baseline was recorded with {package} {then}, this is "
                         f"{package} {now}: a figure that moves may be the library's doing")
    return notes


def junit_xml(diffs: list[Difference], spec_name: str) -> str:
    """One test case per checked figure (classname: the run, name: the metric); a failure
    carries the expected and measured values and the tolerance."""
    suite = ET.Element("testsuite", name=f"refbench regress {spec_name}", tests=str(len(diffs)),
                       failures=str(sum(d.failed for d in diffs)), errors="0", skipped="0")
    for d in diffs:
        case = ET.SubElement(suite, "testcase", classname=d.key, name=d.metric)
        if d.failed:
            tol = f" (tolerance {d.tolerance})" if d.tolerance is not None else ""
            message = f"{d.status}: expected {d.baseline}, measured {d.current}{tol}"
            failure = ET.SubElement(case, "failure", message=message, type=d.status)
            failure.text = message
    root = ET.Element("testsuites", name="refbench regress", tests=suite.get("tests"),
                      failures=suite.get("failures"))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def summary_markdown(diffs: list[Difference], spec_name: str) -> str:
    """A pull request's summary: the verdict, then the failed checks (or all, when none failed)."""
    failed = [d for d in diffs if d.failed]
    verdict = (f"**{len(failed)} of {len(diffs)} checks failed**" if failed
               else f"all {len(diffs)} checks within tolerance")
    table = diff_table(failed or diffs)
    lines = [[c.text for c in row] for row in table.rows]
    return "\n".join([f"### refbench regress {spec_name}: {verdict}", "",
                      *aligned([table.columns, *lines], markdown=True), ""])


def _write(path: Path, text: str, what: str, append: bool = False) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if append else "w") as handle:
            handle.write(text)
    except OSError as error:
        raise UserError(f"cannot write the {what} {path} ({error.strerror}): choose a writable "
                        f"path") from None


def regress(host: PluginHost, spec: ReportSpec, update: bool = False, progress: bool = True,
            junit: Path | None = None, summary: Path | None = None) -> int:
    """Recompute the spec's leaderboards and compare them with its baseline: 0 when every
    figure is within tolerance, 1 otherwise (2 stays for user errors)."""
    if spec.regress is None:
        raise UserError(f"{spec.path} has no 'regress:' section (baseline and tolerance)")
    baseline_path = spec.regress.baseline
    cluster = distributed.detect()
    saved: dict[str, Any] = {}
    if not update:
        try:
            saved = json.loads(baseline_path.read_text())
            baseline = saved["figures"]
        except FileNotFoundError:
            raise UserError(f"no baseline at {baseline_path}: create it with "
                            f"`refbench regress {spec.path} --update` and commit it") from None
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise UserError(f"{baseline_path} is not a refbench baseline ({error}): rewrite it with "
                            f"--update") from None
    fingerprints = data_fingerprints(host, spec)
    notes = [] if update else check_baseline(saved, spec, fingerprints, baseline_path)
    if cluster.is_main:
        for note in notes:
            print(note)
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
        versions = provenance.versions()
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(baseline_path, {
            "spec": spec.path.name, "created": timestamp(), "git_hash": provenance.git_hash(),
            "refbench": versions["refbench"], "limit": spec.limit, "seed": spec.seed,
            "data": fingerprints, "versions": {p: versions.get(p) for p in TRACKED_VERSIONS},
            "tolerance": spec.regress.tolerance, "figures": current})
        print(f"regress: wrote {len(current)} runs' figures to {baseline_path}")
        return 0
    diffs = compare(baseline, current, spec.regress.tolerance)
    failed = [d for d in diffs if d.failed]
    print(to_text(diff_table(diffs)))
    if junit is not None:
        _write(junit, junit_xml(diffs, spec.path.name), "JUnit report")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    for path, append in ((summary, False), (Path(step_summary) if step_summary else None, True)):
        if path is not None:
            _write(path, summary_markdown(diffs, spec.path.name), "summary", append=append)
    if failed:
        print(f"regress: {len(failed)} of {len(diffs)} checks FAILED against {baseline_path} "
              f"(if the change is intended: refbench regress {spec.path} --update)")
        return 1
    print(f"regress: all {len(diffs)} checks within tolerance of {baseline_path}")
    return 0
