"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
uvicorn server with an in-process worker: pages, filters, timeline, cancel, replay, live
updates, keyboard focus; screenshots at 1280 and 390 px under test-artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import make_app, populate
from tests.server.live import live_server

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


class Site:
    def __init__(self, url: str, ids: dict[str, Any]) -> None:
        self.url = url
        self.ids = ids

    def send(self, name: str, data: dict[str, Any]) -> str:
        request = urllib.request.Request(f"{self.url}/e/dev-key", method="POST",
                                         data=json.dumps({"name": name, "data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            ids: list[str] = json.load(response)["ids"]
        return ids[0]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('browser') / 'stride.db'}")

    async def prepare() -> tuple[list[str], str, list[str], str]:
        made = await populate(app)
        await app.aclose()
        return made

    greet, flaky, parked, quiet = asyncio.run(prepare())
    with live_server(app, dev=True, worker_jobs=["greet", "flaky"]) as url:
        yield Site(url, {"greet": greet, "flaky": flaky, "parked": parked, "quiet": quiet})


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not errors, f"browser console errors: {errors}"


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{label}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_every_page_loads_and_is_photographed(page: Any, site: Site) -> None:
    run = site.get(f"/api/v1/runs/{site.ids['flaky']}")
    pages = {"runs": "/", "run-failed": f"/runs/{site.ids['flaky']}",
             "run-completed": f"/runs/{site.ids['greet'][0]}", "events": "/events",
             "event": f"/events/{run['event_id']}", "jobs": "/jobs", "send": "/send",
             "health": "/health"}
    for name, path in pages.items():
        response = page.goto(site.url + path)
        assert response.status == 200, path
        assert page.locator("main h1").count() == 1
        shoot(page, name)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_pages_fit_a_phone_screen(page: Any, site: Site) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/", f"/runs/{site.ids['flaky']}", "/jobs", "/events", "/health"):
        page.goto(site.url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path


def test_filtering_runs_by_status(page: Any, site: Site) -> None:
    page.goto(site.url + "/")
    page.select_option("select[name=status]", "failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/?status=failed")
    rows = page.locator("#run-rows tr[data-id]")
    assert rows.count() >= 1
    labels = {" ".join(text.split()) for text in rows.locator(".status").all_inner_texts()}
    assert labels == {"✕ failed"}, "each status carries an icon and a word"


def test_opening_a_run_shows_its_timeline(page: Any, site: Site) -> None:
    page.goto(site.url + "/?job=flaky")
    page.locator(f"tr[data-id='{site.ids['flaky']}'] a", has_text="flaky").click()
    page.wait_for_url(f"**/runs/{site.ids['flaky']}")
    assert page.locator("table.gantt svg.lane-svg").count() >= 3
    assert page.locator("rect.b-failed").count() >= 2
    traceback = page.locator("pre.tb").first
    assert not traceback.is_visible(), "tracebacks start folded"
    page.locator("summary", has_text="Traceback").first.click()
    assert traceback.is_visible()
    assert "ConnectionError: upstream is down" in traceback.inner_text()


def test_cancelling_a_queued_run(page: Any, site: Site) -> None:
    run_id = site.ids["parked"][0]
    page.goto(f"{site.url}/runs/{run_id}")
    page.get_by_role("button", name="Cancel run").click()
    page.wait_for_url("**done=cancelled")
    assert page.locator("h1 .status").inner_text().endswith("cancelled")
    assert page.get_by_role("button", name="Cancel run").count() == 0


def test_replaying_a_failed_run(page: Any, site: Site) -> None:
    page.goto(f"{site.url}/runs/{site.ids['flaky']}")
    page.get_by_role("button", name="Replay").click()
    page.wait_for_url("**done=replayed")
    assert site.ids["flaky"] not in page.url
    assert page.get_by_text("Replay started").is_visible()
    shoot(page, "run-replayed")


def test_a_new_run_appears_live_without_reload(page: Any, site: Site) -> None:
    page.goto(site.url + "/")
    page.wait_for_selector("#live-state:not([hidden])")
    page.evaluate("window.__marker = 'same page'")
    event_id = site.send("demo/greet", {"name": "live"})
    [run] = site.get(f"/api/v1/runs?event_id={event_id}")["data"]
    page.wait_for_selector(f"tr[data-id='{run['id']}']", timeout=10_000)
    assert page.evaluate("window.__marker") == "same page", "the page was not reloaded"


def test_bulk_selection_and_keyboard_focus(page: Any, site: Site) -> None:
    page.goto(site.url + "/?job=parked")
    cancel = page.get_by_role("button", name="Cancel selected")
    assert cancel.is_disabled()
    page.locator("#select-all").check()
    assert cancel.is_enabled()
    page.keyboard.press("Tab")
    page.goto(site.url + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").strip().startswith("▸▸")


def test_sending_an_event_from_the_form(page: Any, site: Site) -> None:
    page.goto(site.url + "/send")
    page.fill("#event-json", '{"name": "demo/greet", "data": {"name": "form"}}')
    page.get_by_role("button", name="Send event").click()
    page.wait_for_url("**/events/**")
    assert page.get_by_text("Event sent.").is_visible()
    assert page.locator("ul.started li").count() == 1
