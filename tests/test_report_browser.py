"""The generated site in a real browser: headless Debian Chromium, driven over DevTools.

Loads the site from disk, clicks a column header and checks the rows were re-sorted, checks that
every picture and chart rendered and that nothing was fetched from anywhere but the disk, and
keeps a screenshot as a test artifact (test-artifacts/, or $REFBENCH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_binary
from tests.conftest import REPO

BINARY = chromium_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no chromium binary on PATH: install the Debian package `chromium` "
                           "(.ci/run does) to run the browser test")
ARTIFACTS = Path(os.environ.get("REFBENCH_TEST_ARTIFACTS", REPO / "test-artifacts"))

_FIRST_COLUMN = "Array.from(document.querySelectorAll('#{t} tbody tr')).map(r => r.cells[0].textContent.trim())"
_COLUMN = """Array.from(document.querySelectorAll('#{t} tbody tr')).map(
    r => parseFloat(r.cells[{c}].getAttribute('data-sort')))"""


@pytest.fixture(scope="module")
def browser():
    driver = Browser(BINARY)
    yield driver
    driver.close()


def test_sorting_by_clicking_a_header(browser: Browser, report_site: Path):
    browser.open(report_site / "index.html")
    table = "leaderboard-refshapes-testA"
    columns = browser.evaluate(f"Array.from(document.querySelectorAll('#{table} th')).map(h => h.textContent)")
    miou = columns.index("mIoU")
    before = browser.evaluate(_FIRST_COLUMN.format(t=table))
    browser.click(f"#{table} th:nth-child({miou + 1})")
    after = browser.evaluate(_FIRST_COLUMN.format(t=table))
    values = browser.evaluate(_COLUMN.format(t=table, c=miou))
    assert sorted(after) == sorted(before) and after != before
    assert values == sorted(values, reverse=True)  # numbers: best first
    browser.click(f"#{table} th:nth-child({miou + 1})")
    assert browser.evaluate(_COLUMN.format(t=table, c=miou)) == sorted(values)
    assert browser.evaluate(f"document.querySelector('#{table} th:nth-child({miou + 1})')"
                            f".getAttribute('aria-sort')") == "ascending"
    browser.click(f"#{table} th:nth-child(1)")  # text sorts alphabetically
    names = browser.evaluate(_FIRST_COLUMN.format(t=table))
    assert names == sorted(names, key=str.lower) or names == sorted(names)


def test_every_picture_and_chart_renders_offline(browser: Browser, report_site: Path):
    browser.open(report_site / "index.html")
    charts = browser.evaluate("""Array.from(document.querySelectorAll('svg.chart')).map(s => {
        const box = s.getBoundingClientRect(), band = s.querySelector('polygon.band');
        return [box.width, box.height, s.querySelectorAll('circle').length,
                band ? band.getBBox().height : 0]; })""")
    assert charts and all(w > 100 and h > 100 and points >= 3 and band > 0
                          for w, h, points, band in charts), charts
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-index.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    browser.open(report_site / "gallery.html")
    images = browser.evaluate("""Array.from(document.images).map(i => [i.getAttribute('src'),
        i.complete && i.naturalWidth > 0])""")
    assert len(images) >= 10 and all(ok for _, ok in images), [src for src, ok in images if not ok]
    # the hostile expression is shown as text and never ran
    assert browser.evaluate("document.querySelectorAll('script').length") == 1
    assert '<script>alert("x")</script>' in browser.evaluate(
        "document.querySelector('.expression').textContent")

    urls = browser.requested_urls()
    assert urls and all(u.startswith("file://") for u in urls), urls


_OVERFLOW = """(() => {
    const page = document.documentElement, view = window.innerWidth;
    const boxes = Array.from(document.querySelectorAll('table')).map(t => {
        const box = (t.closest('.scroll') || t).getBoundingClientRect();
        return [t.id || t.className, Math.round(box.right)]; });
    return [page.scrollWidth, view, boxes.filter(([_, right]) => right > view)]; })()"""


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 1920])
def test_pages_fit_the_window_and_read_at_a_glance(browser: Browser, report_site: Path, width: int):
    browser.set_width(width)
    for page in ["index.html", "gallery.html", *sorted(p.relative_to(report_site).as_posix()
                                                      for p in (report_site / "runs").glob("*.html"))]:
        browser.open(report_site / page)
        scroll_width, view, overflowing = browser.evaluate(_OVERFLOW)
        assert scroll_width <= view and not overflowing, (page, width, scroll_width, overflowing)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    browser.open(report_site / "index.html")
    # every breakdown figure carries its interval, shown under it
    ci = browser.evaluate("""Array.from(document.querySelectorAll('table[id^="breakdown-"] td'))
        .slice(1).map(td => td.querySelector('.ci') ? td.querySelector('.ci').textContent : null)""")
    assert ci and any(c and c.startswith("[") for c in ci), ci
    # the best figure of each metric column is bold; the training kind and backbone are shown
    best = browser.evaluate("document.querySelectorAll('#leaderboard-refshapes-testA strong.best').length")
    assert best >= 2
    header = browser.evaluate("Array.from(document.querySelectorAll('#leaderboard-refshapes-testA th')).map(h => h.textContent)")
    assert {"Backbone", "Training"} <= set(header)
    # the grid chart names its band and draws the baseline
    legend = browser.evaluate("Array.from(document.querySelectorAll('svg.chart .legend-text')).map(t => t.textContent)")
    assert any("bootstrap interval" in t for t in legend) and any(t.startswith("GT box") for t in legend), legend
    assert browser.evaluate("document.querySelectorAll('svg.chart line.baseline').length") >= 1
    sources = browser.evaluate("document.querySelector('#methods').nextElementSibling.innerText")
    assert "GT box (gt_box, training-free)" in sources and "Source: refbench reference method" in sources
    browser.screenshot(ARTIFACTS / f"report-index-{width}.png")

    browser.open(report_site / "gallery.html")
    captions = browser.evaluate("Array.from(document.querySelectorAll('.method-row th')).map(t => t.innerText)")
    assert captions and all(re.search(r"IoU \d+\.\d %", c) and
                            re.search(r"mask at score ≥ 0\.\d\d|mask output", c) for c in captions), captions
    bar = browser.evaluate("""(() => { const b = document.querySelector('#colourbar .colourbar');
        return b ? [b.getBoundingClientRect().width, getComputedStyle(b).backgroundImage] : null; })()""")
    assert bar and bar[0] > 100 and bar[1].startswith("linear-gradient"), bar
    # a method's mask and heat map share one row
    rows = browser.evaluate("""Array.from(document.querySelectorAll('.method-row')).map(r =>
        Array.from(r.querySelectorAll('img')).map(i => Math.round(i.getBoundingClientRect().top)))""")
    assert rows and all(len(set(tops)) == 1 for tops in rows), rows
    browser.screenshot(ARTIFACTS / f"report-gallery-{width}.png")


@pytest.mark.slow
def test_a_calibration_run_page_shows_the_curve_that_chose_the_threshold(browser: Browser,
                                                                          report_site: Path):
    browser.set_width(1280)
    for page in sorted((report_site / "runs").glob("*.html")):
        browser.open(page)
        if "calibration of" in browser.evaluate("document.body.innerText") and browser.evaluate(
                "document.querySelectorAll('svg.chart').length"):
            break
    else:
        pytest.fail("no calibration run page with a sweep chart")
    marks = browser.evaluate("Array.from(document.querySelectorAll('svg.chart line.mark')).length")
    assert marks >= 1
    assert "{}" not in browser.evaluate("document.body.innerText.split('Counts')[1].split('Versions')[0]")
    browser.screenshot(ARTIFACTS / "report-calibration-run.png")
