"""The HTML reports in a real browser: headless Chromium driven over the DevTools protocol.

Each task's report (the default logistic sweep, an mlp policy sweep with attribution, a
linear-regression solver sweep; fewer epochs than the commands' defaults, same report
code) is loaded at 1,280 and 390 px: no console error, nothing wider than the viewport;
the mouse is moved over a map cell and over a curve (a bar for solves) and the tooltip
must name that run; a click must open the run's detail with its trace plots. Screenshots
go to build/browser/ (CI keeps them as artifacts).

Chromium is the Debian package (/usr/bin/chromium, installed by .ci/run); the tests are
skipped, saying why, only where it or the playwright package is missing.
"""

import os
import shutil
from pathlib import Path

import pytest

from stability_lab.cli import main

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "build" / "browser"
CHROMIUM = os.environ.get("STABILITY_LAB_CHROMIUM") or shutil.which("chromium") or \
    "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTHS = (1280, 390)

REPORTS = {
    "default": ["--task", "logistic_regression", "--sweep", "precision,lr,lambda",
                "--epochs", "20"],
    "mlp-policy": ["--task", "mlp", "--sweep", "policy", "--epochs", "24", "--attribute", "4"],
    "linear-solver": ["--task", "linear_regression", "--sweep", "solver"],
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install the Debian package "
                    "(apt-get install -y chromium), as .ci/run does")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed "
                                          "(pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        profile = tmp_path_factory.mktemp("chromium-profile")
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900})
        yield ctx
        ctx.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    pages = {}
    for name, argv in REPORTS.items():
        page = out / f"{name}.html"
        assert main([*argv, "--out", str(out / "store"), "--html", str(page), "--quiet",
                     "--no-progress"]) == 0
        pages[name] = page
    return pages


def _overflowing(page):
    """Elements whose box sticks out of the viewport, and the page's scroll width."""
    return page.evaluate("""() => {
        const w = document.documentElement.clientWidth, out = [];
        for (const e of document.querySelectorAll('body *')) {
            const r = e.getBoundingClientRect();
            if (r.width > 0 && (r.right > w + 1 || r.left < -1))
                out.push(`${e.tagName}.${e.className.baseVal ?? e.className} ` +
                         `${Math.round(r.left)}..${Math.round(r.right)}`);
        }
        return {scroll: document.documentElement.scrollWidth, width: w, out: out.slice(0, 8)};
    }""")


def _point_on(page, selector):
    """A screen point on the first visible element matching selector (on a curve's
    stroke for SVG paths), scrolled into view."""
    page.locator(selector).first.scroll_into_view_if_needed()
    return page.evaluate("""(sel) => {
        const e = [...document.querySelectorAll(sel)].find(x => {
            const r = x.getBoundingClientRect(); return r.width > 0 || r.height > 0; });
        if (e.tagName === 'path') {
            const p = e.getPointAtLength(e.getTotalLength() * 0.5);
            const m = e.getScreenCTM();
            return {x: p.x * m.a + p.y * m.c + m.e, y: p.x * m.b + p.y * m.d + m.f,
                    run: e.getAttribute('data-run')};
        }
        const r = e.getBoundingClientRect();
        return {x: r.left + r.width / 2, y: r.top + r.height / 2,
                run: e.getAttribute('data-run')};
    }""", selector)


def _hover_names_run(page, selector):
    pt = _point_on(page, selector)
    # the element the mouse will be over (curves overlap: the one drawn on top)
    hit = page.evaluate("""([x, y]) => { const e = document.elementFromPoint(x, y);
        return e && e.closest('[data-run]') ? {run: e.closest('[data-run]').dataset.run,
            tag: e.tagName, cls: e.getAttribute('class')} : null; }""", [pt["x"], pt["y"]])
    assert hit and hit["cls"] == page.eval_on_selector(
        selector, "e => e.getAttribute('class')"), (selector, hit)
    page.mouse.move(pt["x"], pt["y"])  # Input.dispatchMouseEvent over the protocol
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=2000)
    text = tip.inner_text()
    assert f"run {hit['run']}" in text, (selector, text)
    label = page.evaluate("id => window.labReport.data.runs[id].label", hit["run"])
    assert label in text
    return {**pt, "run": hit["run"]}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(REPORTS))
def test_report_in_chromium(browser, reports, name, width):
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(reports[name].as_uri())
    page.wait_for_selector("#runs table")
    assert errors == [], errors
    box = _overflowing(page)
    assert box["scroll"] <= box["width"] and not box["out"], box
    data = page.evaluate("window.labReport.data")
    # every run the page shows is named: in the run table, by id
    ids = page.eval_on_selector_all("#runs tr[data-run]", "rows => rows.map(r => r.dataset.run)")
    assert ids == data["order"]
    # sections each task must have
    assert page.locator("#map .cell").count() == len(data["order"])
    if name == "linear-solver":
        assert page.locator("#digits rect.bar").count() == len(data["order"])
        curve = "#digits rect.bar"
    else:
        curve = "#curves-loss path.hit"
        # every run is drawn (a run that failed at its second step is a dot)
        drawn = page.eval_on_selector_all(
            "#curves-loss .hit, #curves-loss circle.dot", "es => es.map(e => e.dataset.run)")
        assert set(drawn) == set(data["order"])
    if name == "mlp-policy":
        assert page.locator("#policy .conclusion").inner_text().startswith(
            ("Cheapest policy within tolerance: ", "No policy stayed"))
        assert page.locator("#attribution rect.hm").count() > 0
    assert page.locator("#verification").count() == 1
    page.screenshot(path=str(_shot(name, width)), full_page=True)
    # hover: a map cell, then a curve (bar), each names its run
    _hover_names_run(page, "#map .cell")
    pt = _hover_names_run(page, curve)
    # click: the run's detail with its trace plots and findings
    page.mouse.click(pt["x"], pt["y"])
    dialog = page.locator("dialog#detail")
    dialog.wait_for(state="visible", timeout=2000)
    assert pt["run"] in page.locator("#dtitle").inner_text()
    # the close button's label on one line (not broken letter by letter at 390 px)
    assert page.evaluate("""() => { const r = document.createRange();
        r.selectNodeContents(document.getElementById('dclose'));
        return r.getClientRects().length; }""") == 1
    body = page.locator("#dbody").inner_text()
    assert "Findings" in body and "Verdict:" in body
    if name != "linear-solver":
        assert "Phases" in body and page.locator("#dbody svg").count() >= 2
    if name == "mlp-policy":
        assert "Attribution" in body and page.locator("#dbody rect.hm").count() > 0
    box = _overflowing(page)
    assert box["scroll"] <= box["width"], box
    page.screenshot(path=str(_shot(name + "-detail", width)))
    page.locator("#dclose").click()
    assert errors == [], errors
    page.close()


def _shot(name, width) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / f"{name}-{width}.png"
