"""`refbench report`: the site's figures, calibration, escaping, links, exports, spec errors."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from refbench.data.masks import decode
from refbench.data.refer import ReferDataset
from refbench.report.exports import to_latex, to_markdown
from refbench.results.tables import Cell, Table
from tests.conftest import HOSTILE_LABEL, PLUGIN_ENV, REPO, assert_user_error, report_spec, run_cli


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text())
    return parser


def _csv(site: Path, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((site / "tables" / name).read_text())))


def test_site_is_self_contained_and_every_link_resolves(report_site: Path):
    pages = [report_site / "index.html", report_site / "gallery.html",
             *sorted((report_site / "runs").glob("*.html"))]
    assert len(pages) > 5
    for page in pages:
        links = _parse(page)
        assert links.scripts == 1, page  # the inline sorting script, nothing else
        for url in links.urls:
            assert not re.match(r"^[a-z]+:|^//", url), (page, url)  # no network, no CDN
            assert (page.parent / url.split("#")[0]).resolve().is_file() or url.startswith("#"), (page, url)
        text = page.read_text()
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text


def test_leaderboard_figures_match_an_independent_computation(report_site: Path, hostile_root):
    root, _ = hostile_root
    samples = ReferDataset(root, "refshapes").samples("testA")
    gt = np.array([decode(s.gt).sum() for s in samples], dtype=float)
    area = np.array([s.height * s.width for s in samples], dtype=float)
    rows = {r["Method"]: r for r in _csv(report_site, "leaderboard-refshapes-testA.csv")}
    full = rows["Full image"]
    assert float(full["mIoU"]) == pytest.approx(100 * np.mean(gt / area), abs=0.006)
    assert float(full["oIoU"]) == pytest.approx(100 * gt.sum() / area.sum(), abs=0.006)
    assert full["Threshold"] == "mask" and int(full["n"]) == len(samples)
    for row in rows.values():
        assert float(row["mIoU low"]) <= float(row["mIoU"]) <= float(row["mIoU high"])


def test_threshold_is_chosen_on_val_and_applied_to_test(report_site: Path, hostile_root,
                                                        tmp_path: Path):
    root, _ = hostile_root
    runs = {}
    for split in ("val", "testA"):
        out = tmp_path / split
        result = run_cli("run", "--methods", "shared_blobs", "--set", "shared_blobs.alpha=0.9",
                         "--data-root", str(root), "--split", split, "--out", str(out),
                         "--no-progress", env=PLUGIN_ENV)
        assert result.returncode == 0, result.stderr
        runs[split] = json.loads((out / "results.json").read_text())["results"]["shared_blobs"]
    val_sweep = runs["val"]["sweep"]
    best = max(val_sweep, key=lambda r: r["mIoU"])["threshold"]
    test_at_best = next(r for r in runs["testA"]["sweep"] if r["threshold"] == best)
    test_best = max(r["mIoU"] for r in runs["testA"]["sweep"])
    rows = {r["Method"]: r for r in _csv(report_site, "leaderboard-refshapes-testA.csv")}
    row = rows[HOSTILE_LABEL]
    assert float(row["Threshold"]) == pytest.approx(best)
    assert float(row["mIoU"]) == pytest.approx(100 * test_at_best["mIoU"], abs=0.006)
    # the grid cell with the same config shows the same figures
    cells = {r["alpha"]: r for r in _csv(report_site, next(
        p.name for p in (report_site / "tables").glob("grid-*.csv")))}
    assert cells["0.9"]["mIoU"] == row["mIoU"] and cells["0.9"]["Threshold"] == row["Threshold"]
    assert 100 * test_best >= float(row["mIoU"])  # tuning on test could only have flattered it
    assert "calibration split &#39;val&#39;" in (report_site / "index.html").read_text()


def test_breakdown_by_kind_matches_the_rows(report_site: Path, hostile_root):
    root, _ = hostile_root
    samples = ReferDataset(root, "refshapes").samples("testB")
    gt = np.array([decode(s.gt).sum() for s in samples], dtype=float)
    area = np.array([s.height * s.width for s in samples], dtype=float)
    kinds = np.array([s.meta["kind"] for s in samples])
    (row,) = [r for r in _csv(report_site, "breakdown-refshapes-testB.csv") if r["Method"] == "Full image"]
    for kind in set(kinds):
        column = next(c for c in row if c.startswith(f"{kind} mIoU"))
        assert f"(n={(kinds == kind).sum()})" in column
        assert float(row[column]) == pytest.approx(100 * np.mean((gt / area)[kinds == kind]), abs=0.006)


def test_paired_comparison_counts_wins(report_site: Path):
    rows = _csv(report_site, "comparisons-refshapes-testA.csv")
    by_pair = {(r["A"], r["B"]): r for r in rows}
    box = by_pair[("GT box", "Full image")]  # the default: every method against the first
    assert int(box["wins"]) > 0 and int(box["losses"]) == 0 and float(box["ΔmIoU (A−B) low"]) > 0
    # testA has 3 images: the exact sign-flip p-value of a difference of one sign is 2/2^3
    assert box["images"] == "3" and box["p-value"] == "0.250"


def test_untrusted_text_is_escaped(report_site: Path):
    gallery = (report_site / "gallery.html").read_text()
    assert "&lt;script&gt;alert(" in gallery and "<script>alert(" not in gallery
    assert "onerror=alert" not in gallery.replace("onerror=alert(1)&gt;", "")
    index = (report_site / "index.html").read_text()
    assert "Colour &amp; &lt;b&gt;noise&lt;/b&gt;" in index and "<b>noise</b>" not in index
    assert "Shapes &lt;i&gt;only&lt;/i&gt;" in index and "All &lt;b&gt;galleries&lt;/b&gt;" in index
    latex = next((report_site / "tables").glob("leaderboard-refshapes-testA.tex")).read_text()
    assert r"Colour \& <b>noise</b>" in latex


def test_gallery_shows_each_method_and_heat_maps(report_site: Path, hostile_root):
    _, hostile_id = hostile_root
    gallery = (report_site / "gallery.html").read_text()
    rows = re.findall(r'id="sample-([^"]+)"', gallery)
    assert rows[0] == hostile_id and len(rows) == 3  # the included one, then 2 most different
    figures = re.findall(r'<img src="([^"]+)"', gallery)
    assert len(figures) == 3 * (2 + 3 + 1)  # image, truth, 3 masks, 1 heat map (the score method)
    assert sum("-heat" in f for f in figures) == 3
    assert all((report_site / f).stat().st_size > 500 for f in figures)


def test_run_pages_show_config_and_provenance(report_site: Path):
    pages = {p.read_text().count("shared_blobs") > 0: p for p in (report_site / "runs").glob("*.html")}
    page = pages[True].read_text()
    for fragment in ("method fingerprint", "run key", "dataset fingerprint", "&#34;alpha&#34;",
                     "numpy", "Sweep thresholds"):
        assert fragment in page, fragment


def test_tuning_on_a_reported_split_is_refused_unless_forced(hostile_root, tmp_path: Path):
    root, hostile_id = hostile_root
    spec = tmp_path / "tuned.yaml"
    text = report_spec(root, tmp_path / "store", calibration="calibration:\n  split: testA\n",
                       grids="", gallery="")
    spec.write_text(text)
    assert_user_error(run_cli("report", str(spec), "--out", str(tmp_path / "a"), env=PLUGIN_ENV),
                      "calibration split 'testA' is also a reported split", "tune_on_reported_split")
    spec.write_text(text.replace("split: testA\n", "split: testA\n  tune_on_reported_split: true\n"))
    result = run_cli("report", str(spec), "--out", str(tmp_path / "b"), "--no-progress", env=PLUGIN_ENV)
    assert result.returncode == 0, result.stderr
    rows = {r["Method"]: r for r in _csv(tmp_path / "b", "leaderboard-refshapes-testA.csv")}
    assert rows[HOSTILE_LABEL]["Threshold"].endswith("†")
    other = {r["Method"]: r for r in _csv(tmp_path / "b", "leaderboard-refshapes-testB.csv")}
    assert not other[HOSTILE_LABEL]["Threshold"].endswith("†")  # tuned on testA, not on testB
    assert "tuned on the reported split" in (tmp_path / "b" / "index.html").read_text()


@pytest.mark.parametrize("section, fragments", [
    ({"head": "title: x\nstor: runs/x\n"}, ["unknown key", "did you mean 'store'"]),
    ({"methods": "methods:\n  - name: gt_bx\n", "grids": "", "gallery": ""},
     ["unknown method 'gt_bx'", "did you mean 'gt_box'"]),
    ({"calibration": "calibration:\n  criterion: IoU\n"}, ["calibration criterion", "did you mean"]),
    ({"gallery": "gallery:\n  contrast: [GT box, Nope]\n"}, ["method label", "'Nope'"]),
    ({"gallery": "gallery:\n  split: val\n"}, ["not a reported split"]),
    ({"head": "title: x\nlinks:\n  - {title: x, href: 'javascript:alert(1)'}\n"},
     ["href 'javascript:alert(1)'", "relative to the site"]),
    ({"grids": "grids:\n  - method: gt_box\n    params: {grw: [0, 1]}\n"}, ["did you mean 'grow'"]),
])
def test_spec_mistakes_are_one_line_errors(hostile_root, tmp_path: Path, section, fragments):
    root, _ = hostile_root
    spec = tmp_path / "bad.yaml"
    spec.write_text(report_spec(root, tmp_path / "store", **section))
    assert_user_error(run_cli("report", str(spec), "--out", str(tmp_path / "site"), env=PLUGIN_ENV),
                      *fragments)


def test_exports_carry_the_same_cells():
    table = Table("t", "A & B", ["Method", "mIoU"], [[Cell("x_1 †"), Cell("50.00", 50.0, "48.00", "52.00")]],
                  ["note 100%"])
    markdown = to_markdown(table)
    assert "| x_1 † | 50.00 [48.00, 52.00] |" in markdown.replace("  ", " ") and "note 100%" in markdown
    latex = to_latex(table)
    assert r"x\_1 \textsuperscript{\dag} & 50.00 {\scriptsize[48.00, 52.00]} \\" in latex
    assert r"\caption{A \& B}" in latex and r"note 100\%" in latex


def test_gallery_warns_when_a_rerun_differs_from_the_scored_counts(report_site: Path, hostile_root,
                                                                   tmp_path: Path):
    import shutil
    import sqlite3

    root, hostile_id = hostile_root
    warning = "the rerun differs from the scored run"
    assert warning not in (report_site / "gallery.html").read_text()  # a faithful rerun: no note
    store = tmp_path / "store"
    shutil.copytree(report_site.parent / "store", store)
    with sqlite3.connect(store / "store.sqlite") as db:  # the stored counts of one gallery sample
        rows = db.execute("SELECT s.run_key, s.inter FROM samples s JOIN runs r USING (run_key) "
                          "WHERE r.method = 'shared_blobs' AND s.sample_id = ?", (hostile_id,)).fetchall()
        assert rows
        for run_key, inter in rows:
            bumped = (np.frombuffer(inter, dtype="<i8") + 1).astype("<i8").tobytes()
            db.execute("UPDATE samples SET inter = ? WHERE run_key = ? AND sample_id = ?",
                       (bumped, run_key, hostile_id))
    spec = tmp_path / "spec.yaml"
    spec.write_text(report_spec(root, store).replace("HOSTILE_ID", hostile_id))
    result = run_cli("report", str(spec), "--out", str(tmp_path / "site"), "--no-progress", env=PLUGIN_ENV)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "gallery.html").read_text()
    assert page.count(warning) == 1  # the tampered sample, and not the other one shown


def test_reported_rows_cite_their_source_and_are_marked(shapes_root, tmp_path: Path):
    """A spec's published figures: rows in the leaderboard of their data set and split, marked
    reported, and a table of all of them with citations; an unknown id is an error."""
    registry = REPO / "leaderboards" / "reported.yaml"
    (tmp_path / "reported.yaml").write_text(registry.read_text().replace(
        "dataset: refcoco\n    split: val\n    backbone: Stable Diffusion 1.5\n    protocol: image and mask squashed to 512x512, IoU there; token length 40\n    metrics: {P@0.5: 85.52",
        "dataset: refshapes\n    split: testA\n    backbone: Stable Diffusion 1.5\n    protocol: image and mask squashed to 512x512, IoU there; token length 40\n    metrics: {P@0.5: 85.52", 1))
    spec = tmp_path / "spec.yaml"
    spec.write_text(report_spec(shapes_root, tmp_path / "store", grids="", gallery="")
                    + "reported: [vpd-refcoco-val, diffsegmenter-voc]\n")
    result = run_cli("report", str(spec), "--out", str(tmp_path / "site"), "--no-progress", env=PLUGIN_ENV)
    assert result.returncode == 0, result.stderr
    rows = {r["Method"]: r for r in _csv(tmp_path / "site", "leaderboard-refshapes-testA.csv")}
    vpd = rows["VPD [reported: Zhao W., ICCV 2023]"]
    assert vpd["Threshold"] == "reported" and vpd["oIoU"] == "73.46" and vpd["n"] == "-"
    assert not any("reported" in m for m in _csv(tmp_path / "site", "leaderboard-refshapes-testB.csv")[0])
    published = _csv(tmp_path / "site", "reported.csv")
    assert [r["Method"] for r in published] == ["VPD", "DiffSegmenter"]
    assert "Unleashing Text-to-Image Diffusion Models for Visual Perception" in published[0]["Work"]
    assert "semantic_mIoU 60.10" in published[1]["Reported (percent)"]
    assert "Published figures" in (tmp_path / "site" / "index.html").read_text()
    spec.write_text(report_spec(shapes_root, tmp_path / "store", grids="", gallery="")
                    + "reported: [vpd-refcoco-vall]\n")
    assert_user_error(run_cli("report", str(spec), "--out", str(tmp_path / "s2"), env=PLUGIN_ENV),
                      "unknown reported figure", "did you mean 'vpd-refcoco-val'")
    listing = run_cli("reported", "--file", str(registry))
    assert listing.returncode == 0 and "vpd-refcocog-val" in listing.stdout and "Nanli Wu" in listing.stdout
