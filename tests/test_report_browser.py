"""The generated site in a real browser: headless Debian Chromium, driven over DevTools.

Loads the site from disk, clicks a column header and checks the rows were re-sorted, checks that
every picture and chart rendered and that nothing was fetched from anywhere but the disk, and
keeps a screenshot as a test artifact (test-artifacts/, or $REFBENCH_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
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
