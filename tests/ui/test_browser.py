"""The web view in a real browser: headless Chromium (the system's, driven by Playwright) against `mmlib ui`'s server
on a free port, over one store with three names, a 20-version lineage of updates, snapshots and provenance versions,
and damaged entries. Each page visited is saved as a screenshot under bench-results/ui/ (git-ignored).

Skipped only where no Chromium is installed (`apt-get install chromium`; `bash setup.sh --test` installs it where
it can): Playwright's own browser download is not used.
"""

import os
import re
import shutil
import threading
import time

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

import mmlib
from mmlib.ui import create_app
from mmlib.ui.server import LOOPBACK_NAMES, bound_socket, url_of
from ui_stores import LINEAGE, LINEAGE_PLAN, build_lineage, build_small

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "bench-results", "ui")
_START_TIMEOUT_S = 30
_STEP_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: the browser tests need the system's "
                                "chromium (apt-get install chromium; bash setup.sh --test installs it where it can)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(store, the small store's BuiltStore, ids of the lineage's versions) in one embedded store; MMLIB_CONFIG stays
    set for the module, so that diffs with values can retrain the provenance versions."""
    directory = tmp_path_factory.mktemp("browser")
    store = mmlib.open_store(str(directory / "store"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        lineage = build_lineage(store, str(directory), monkeypatch)
        yield store, build_small(store), lineage


@pytest.fixture(scope="module")
def base_url(built):
    """The URL of the web view, served by uvicorn in a thread of this process."""
    sock = bound_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(built[0], allowed_hosts=LOOPBACK_NAMES), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the web view's server did not start")
        time.sleep(0.05)
    yield url_of(sock).rstrip("/")
    server.should_exit = True
    thread.join(timeout=_START_TIMEOUT_S)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, base_url) -> Page:
    context = browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(_STEP_TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


def _screenshot(page: Page, name: str) -> None:
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, name), full_page=True)


def _row_ids(page: Page) -> list[str]:
    return page.locator("#models tbody tr[data-id]").evaluate_all("rows => rows.map(row => row.dataset.id)")


def test_the_models_table_sorts_and_filters(page, built):
    _, small, lineage = built
    page.goto("/")
    expect(page.locator("h1")).to_have_text("Models")
    assert len(_row_ids(page)) == len(lineage) + len(small.ids) + 1  # the lost model is a (damaged) row
    _screenshot(page, "models.png")
    page.fill("input[name=q]", LINEAGE)
    page.select_option("select[name=sort]", "metrics.val_loss")
    page.click("button:has-text('Apply')")
    expect(page).to_have_url(re.compile(r"q=classifier.*sort=metrics.val_loss"))
    assert _row_ids(page) == [lineage[f"{LINEAGE}:v{number}"] for number in range(20, 0, -1)]  # lowest loss first
    page.click("#models thead a:has-text('Version')")
    expect(page).to_have_url(re.compile(r"sort=number"))
    assert _row_ids(page) == [lineage[f"{LINEAGE}:v{number}"] for number in range(1, 21)]
    expect(page.locator("#summary")).to_contain_text("20 model(s) match")
    _screenshot(page, "models-filtered.png")


def test_a_lineage_leads_to_a_version_and_its_diff(page, built):
    store, _, lineage = built
    page.goto("/")
    page.locator("#models a", has_text=LINEAGE).first.click()
    expect(page).to_have_url(re.compile(f"/names/{LINEAGE}$"))
    nodes = page.locator("#lineage circle")
    expect(nodes).to_have_count(20)
    classes = nodes.evaluate_all("circles => circles.map(circle => circle.getAttribute('class'))")
    expected = {"snapshot": LINEAGE_PLAN.count("snapshot") + LINEAGE_PLAN.count("rebase"),
                "update": LINEAGE_PLAN.count("update"), "provenance": LINEAGE_PLAN.count("provenance")}
    assert {kind: classes.count(kind) for kind in expected} == expected
    expect(page.locator("#lineage .alias", has_text="[candidate]")).to_have_count(1)
    _screenshot(page, "lineage.png")

    candidate = lineage[f"{LINEAGE}:v11"]
    page.locator(f'#lineage a[data-id="{candidate}"] text').click()
    expect(page).to_have_url(re.compile(f"/version/{candidate}$"))  # a stable link: the full id
    expect(page.locator("h1")).to_contain_text(f"{LINEAGE}:v11")
    expect(page.locator("h1")).to_contain_text("provenance")
    expect(page.locator("#lineage-chain tbody tr")).to_have_count(11)
    _screenshot(page, "version.png")

    page.fill("#diff-form input[name=b]", f"{LINEAGE}:v10")
    page.check("#diff-form input[name=values]")
    page.click("#diff-form button")
    expect(page).to_have_url(re.compile(r"/diff\?a=[0-9a-f]{64}&b=classifier%3Av10&values=1"))
    expected_diff = mmlib.diff(candidate, f"{LINEAGE}:v10", store, values=True)
    expect(page.locator("#diff tbody tr")).to_have_count(len(expected_diff.changes))
    expect(page.locator("#diff-summary")).to_contain_text(f"{len(expected_diff.changed)} changed")
    first = expected_diff.changes[0]
    expect(page.locator("#diff tbody tr").first).to_contain_text(f"{first.max_abs:.4g}")
    _screenshot(page, "diff.png")


def test_damaged_entries_are_shown_as_damaged(page, built):
    _, small, _ = built
    page.goto("/")
    damaged = page.locator("#damaged-models")
    expect(damaged).to_contain_text("teleported")
    damaged.locator(f'a[href="/version/{small.broken}"]').click()
    expect(page.locator("h1")).to_contain_text("DAMAGED")
    expect(page.locator("#damage")).to_contain_text("cannot be read")
    _screenshot(page, "damaged.png")
    page.goto("/")
    page.locator(f'#models tr[data-id="{small.lost}"] a[href="/version/{small.lost}"]').first.click()
    expect(page.locator(".damage").first).to_contain_text("missing")
    _screenshot(page, "damaged-blob.png")
