"""The dashboard's pages, rendered from real runs; escaping; the form actions."""

from __future__ import annotations

import httpx
import pytest

from stride.server import create_server
from tests.server.conftest import BASE_URL, World


@pytest.fixture
async def dev(world: World) -> httpx.AsyncClient:
    server = create_server(world.app, dev=True)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server), base_url=BASE_URL)


async def test_every_page_renders(client: httpx.AsyncClient, world: World) -> None:
    run = await world.app.get_run(world.flaky_run)
    for path in ("/", "/?status=failed", f"/runs/{world.flaky_run}",
                 f"/runs/{world.greet_runs[0]}", "/events", f"/events/{run.event_id}",
                 "/jobs", "/health", "/login"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")


async def test_runs_page_filters_and_pages(client: httpx.AsyncClient, world: World) -> None:
    page = (await client.get("/", params={"status": "failed"})).text
    assert world.flaky_run in page
    assert all(run_id not in page for run_id in world.greet_runs)
    rows = (await client.get("/", params={"job": "greet", "fragment": "rows"})).text
    assert rows.count("<tr data-id=") == 3 and "<html" not in rows
    bad = await client.get("/", params={"status": "exploded"})
    assert bad.status_code == 400


async def test_run_page_shows_the_timeline_attempts_and_tracebacks(
        client: httpx.AsyncClient, world: World) -> None:
    page = (await client.get(f"/runs/{world.flaky_run}")).text
    assert page.count('class="bar b-failed"') >= 2, "each failed attempt is a bar"
    assert "ConnectionError: upstream is down" in page
    assert "Replay" in page and "Cancel run" not in page
    greet = (await client.get(f"/runs/{world.greet_runs[0]}")).text
    assert "<details class=\"j\"" in greet, "the 600-character value is folded"


async def test_user_data_is_escaped_everywhere(client: httpx.AsyncClient) -> None:
    for path in ("/events", "/", "/?q=linus"):
        text = (await client.get(path)).text
        assert "<script>alert(1)</script>" not in text
    events = (await client.get("/events")).text
    assert "\\u003cscript\\u003e" in events or "&lt;script&gt;" in events


async def test_cancel_and_replay_buttons(client: httpx.AsyncClient, world: World) -> None:
    run_id = world.parked_runs[1]
    cancelled = await client.post(f"/runs/{run_id}/cancel")
    assert cancelled.headers["location"] == f"/runs/{run_id}?done=cancelled"
    replayed = await client.post(f"/runs/{world.flaky_run}/replay")
    new_id = replayed.headers["location"].split("/runs/")[1].split("?")[0]
    assert (await world.app.get_run(new_id)).job_id == "flaky"


async def test_bulk_cancel_of_selected_runs(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/runs/bulk", data={"action": "cancel", "job": "parked",
                                                     "ids": world.parked_runs})
    assert response.headers["location"] == "/?job=parked&done=bulk"
    assert {(await world.app.get_run(r)).status for r in world.parked_runs} == {"cancelled"}


async def test_send_event_form_is_dev_only(client: httpx.AsyncClient,
                                           dev: httpx.AsyncClient) -> None:
    assert (await client.get("/send")).status_code == 404
    form = await dev.get("/send")
    assert "demo/flaky" in form.text
    sent = await dev.post("/send", data={"event": '{"name": "demo/parked", "data": {"n": 1}}'})
    assert sent.status_code == 303 and sent.headers["location"].startswith("/events/")
    wrong = await dev.post("/send", data={"event": '{"name": "bad name"}'})
    assert wrong.status_code == 400 and "has a character outside" in wrong.text
    broken = await dev.post("/send", data={"event": "{"})
    assert broken.status_code == 400 and "not valid JSON" in broken.text


async def test_unknown_things_are_404_pages(client: httpx.AsyncClient) -> None:
    assert (await client.get("/runs/nope")).status_code == 404
    assert (await client.get("/events/nope")).status_code == 404
    missing = await client.get("/api/v1/nothing")
    assert (missing.status_code, missing.json()) == (404, {"error": "not found"})
