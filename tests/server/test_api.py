"""Every endpoint of the JSON API and event ingestion, against runs made by a real worker."""

from __future__ import annotations

import time

import httpx
import pytest

from stride.server import create_server
from tests.conftest import eventually
from tests.server.conftest import BASE_URL, EVENT_KEY, World

# -- ingestion ------------------------------------------------------------------------------


async def test_ingesting_one_event_stores_it_and_starts_its_runs(
        anonymous: httpx.AsyncClient, world: World) -> None:
    response = await anonymous.post(f"/e/{EVENT_KEY}",
                                    json={"name": "demo/parked", "data": {"n": 9}})
    assert response.status_code == 200
    [event_id] = response.json()["ids"]
    runs = await world.app.get_runs(event_id=event_id)
    assert [(run.job_id, run.status) for run in runs] == [("parked", "queued")]


async def test_ingesting_an_array_keeps_the_order_and_given_ids(
        anonymous: httpx.AsyncClient) -> None:
    body = [{"name": "demo/parked", "data": {}, "id": "evt-a"},
            {"name": "nobody/listens", "id": "evt-b", "user": {"id": "u1"}}]
    response = await anonymous.post(f"/e/{EVENT_KEY}", json=body)
    assert response.json() == {"ids": ["evt-a", "evt-b"]}


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "bad name!", "data": {}}, "event name 'bad name!' has a character outside"),
    ({"name": "demo/x", "data": [1, 2]}, "data must be a JSON object"),
    ({"data": {}}, "event #0 has no 'name'"),
    ([{"name": "ok/one"}, 7], "event #1 must be a JSON object"),
    ({"name": "demo/x", "user": "bob"}, "'user' must be a JSON object or null"),
])
async def test_an_invalid_event_is_refused_with_the_dispatch_message(
        anonymous: httpx.AsyncClient, body: object, message: str) -> None:
    response = await anonymous.post(f"/e/{EVENT_KEY}", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert "\n" not in response.json()["error"]


async def test_a_body_that_is_not_json_is_a_400(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.post(f"/e/{EVENT_KEY}", content=b"{nope")
    assert response.status_code == 400
    assert response.json() == {"error": "the request body is not valid JSON"}


async def test_a_wrong_event_key_is_a_401_and_stores_nothing(
        anonymous: httpx.AsyncClient, world: World) -> None:
    before = len(await world.app.get_runs(limit=1000))
    response = await anonymous.post("/e/not-the-key", json={"name": "demo/parked"})
    assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
    assert len(await world.app.get_runs(limit=1000)) == before


async def test_dev_mode_accepts_any_event_key(world: World) -> None:
    server = create_server(world.app, dev=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                 base_url=BASE_URL) as dev:
        response = await dev.post("/e/whatever", json={"name": "nobody/listens"})
    assert response.status_code == 200


# -- runs ------------------------------------------------------------------------------------


async def test_runs_are_listed_newest_first_with_filters(
        client: httpx.AsyncClient, world: World) -> None:
    everything = (await client.get("/api/v1/runs")).json()["data"]
    ids = [run["id"] for run in everything]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 7

    failed = (await client.get("/api/v1/runs", params={"status": "failed"})).json()["data"]
    assert [run["id"] for run in failed] == [world.flaky_run]
    greet = (await client.get("/api/v1/runs", params={"job": "greet"})).json()["data"]
    assert sorted(run["id"] for run in greet) == sorted(world.greet_runs)
    one = everything[0]
    by_event = (await client.get("/api/v1/runs", params={"event_id": one["event_id"]})).json()
    assert [run["id"] for run in by_event["data"]] == [one["id"]]


async def test_runs_can_be_found_by_text_in_their_event_data(client: httpx.AsyncClient) -> None:
    found = (await client.get("/api/v1/runs", params={"q": "GRACE"})).json()["data"]
    assert [run["job_id"] for run in found] == ["greet"]
    assert (await client.get("/api/v1/runs", params={"q": "100%_"})).json()["data"] == []


async def test_runs_can_be_filtered_by_creation_time(client: httpx.AsyncClient) -> None:
    future = time.time() + 3600
    later = (await client.get("/api/v1/runs", params={"since": int(future)})).json()["data"]
    assert later == []
    earlier = (await client.get("/api/v1/runs", params={"until": int(future)})).json()["data"]
    assert len(earlier) == 7
    iso = (await client.get("/api/v1/runs", params={"since": "2000-01-01T00:00:00Z"})).json()
    assert len(iso["data"]) == 7


async def test_cursor_pagination_walks_every_run_once(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/runs", params=params)).json()
        seen += [run["id"] for run in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1000}, {"status": "nope"},
                                    {"since": "yesterday"}])
async def test_bad_query_parameters_are_a_400(client: httpx.AsyncClient,
                                              params: dict[str, object]) -> None:
    response = await client.get("/api/v1/runs", params=params)
    assert response.status_code == 400
    assert response.json()["error"].startswith("query parameter")


async def test_one_run_has_its_steps_attempts_timings_output_and_event(
        client: httpx.AsyncClient, world: World) -> None:
    run = (await client.get(f"/api/v1/runs/{world.greet_runs[0]}")).json()
    assert run["status"] == "completed"
    assert run["output"]["greeting"].startswith("hello ")
    assert [step["id"] for step in run["steps"]] == ["load", "compose"]
    assert all(step["duration_ms"] is not None for step in run["steps"])
    assert run["steps"][0]["history"][0]["outcome"] == "completed"
    assert run["event"]["name"] == "demo/greet"

    flaky = (await client.get(f"/api/v1/runs/{world.flaky_run}")).json()
    assert flaky["status"] == "failed"
    assert flaky["error"]["name"] == "StepError"
    explode = flaky["steps"][1]
    assert (explode["id"], explode["status"], explode["attempts"]) == ("explode", "failed", 2)
    assert [a["outcome"] for a in explode["history"]] == ["failed", "failed"]
    assert "ConnectionError: upstream is down" in explode["history"][0]["error"]["traceback"]


async def test_an_unknown_run_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/runs/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "no run with id 'nope'"}


async def test_a_queued_run_can_be_cancelled_once(client: httpx.AsyncClient,
                                                  world: World) -> None:
    run_id = world.parked_runs[0]
    first = await client.post(f"/api/v1/runs/{run_id}/cancel")
    assert first.json() == {"id": run_id, "cancelled": True}
    again = await client.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.json() == {"id": run_id, "cancelled": False}
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert (run["status"], run["error"]["name"], run["error"]["by"]) == (
        "cancelled", "Cancelled", "api")
    assert (await client.post("/api/v1/runs/nope/cancel")).status_code == 404


async def test_a_failed_run_can_be_replayed(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post(f"/api/v1/runs/{world.flaky_run}/replay")
    body = response.json()
    assert body["replay_of"] == world.flaky_run
    new = (await client.get(f"/api/v1/runs/{body['id']}")).json()
    old = (await client.get(f"/api/v1/runs/{world.flaky_run}")).json()
    assert (new["job_id"], new["event_id"], new["status"]) == ("flaky", old["event_id"], "queued")
    assert (await client.post("/api/v1/runs/nope/replay")).status_code == 404


async def test_bulk_cancel_by_filter_cancels_only_unfinished_matching_runs(
        client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/api/v1/runs/cancel", json={"job": "parked"})
    assert response.json()["matched"] == 3
    assert sorted(response.json()["ids"]) == sorted(world.parked_runs)
    again = await client.post("/api/v1/runs/cancel", json={"status": "completed"})
    assert again.json() == {"matched": 3, "ids": []}


async def test_bulk_replay_by_ids(client: httpx.AsyncClient, world: World) -> None:
    response = await client.post("/api/v1/runs/replay",
                                 json={"ids": [*world.greet_runs[:2], "missing"]})
    assert response.json()["matched"] == 2
    assert len(response.json()["ids"]) == 2
    bad = await client.post("/api/v1/runs/replay", json={"ids": "not-a-list"})
    assert bad.status_code == 400


async def test_the_stream_sends_a_snapshot_of_the_first_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/stream", params={"max_events": 1, "job": "greet"})
    assert response.headers["content-type"].startswith("text/event-stream")
    event, data = response.text.strip().split("\n")
    assert event == "event: runs"
    assert len(httpx.Response(200, content=data.removeprefix("data: ")).json()["data"]) == 3


# -- events, jobs, health, metrics -----------------------------------------------------------


async def test_events_list_their_runs_or_why_they_have_none(client: httpx.AsyncClient,
                                                            world: World) -> None:
    events = (await client.get("/api/v1/events")).json()["data"]
    assert len(events) == 8
    quiet = next(event for event in events if event["id"] == world.quiet_event)
    assert quiet["runs"] == []
    assert quiet["no_runs_reason"] == "no job is triggered by 'nobody/listens'"
    flaky = next(event for event in events if event["name"] == "demo/flaky")
    assert [run["id"] for run in flaky["runs"]] == [world.flaky_run]


async def test_events_are_paged_with_a_cursor(client: httpx.AsyncClient) -> None:
    first = (await client.get("/api/v1/events", params={"limit": 5})).json()
    second = (await client.get("/api/v1/events",
                               params={"limit": 5, "cursor": first["next_cursor"]})).json()
    assert len(first["data"]) == 5 and len(second["data"]) == 3
    assert second["next_cursor"] is None
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert len(set(ids)) == 8
    bad = await client.get("/api/v1/events", params={"cursor": "garbage"})
    assert bad.status_code == 400


async def test_one_event_with_its_runs(client: httpx.AsyncClient, world: World) -> None:
    event = (await client.get(f"/api/v1/events/{world.quiet_event}")).json()
    assert (event["name"], event["data"], event["runs"]) == (
        "nobody/listens", {"why": "no job"}, [])
    assert (await client.get("/api/v1/events/nope")).status_code == 404


async def test_jobs_show_their_triggers_and_options(client: httpx.AsyncClient) -> None:
    jobs = {job["id"]: job for job in (await client.get("/api/v1/jobs")).json()["data"]}
    assert sorted(jobs) == ["flaky", "greet", "parked"]
    assert jobs["flaky"]["triggers"] == [{"event": "demo/flaky", "if": None}]
    assert jobs["flaky"]["options"]["retries"] == 1


async def test_health_reports_the_store_workers_and_queue(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    health = response.json()
    assert response.status_code == 200
    assert health["store"] == {"reachable": True, "backend": "sqlite", "error": None}
    assert health["queue"]["depth"] == 3
    assert health["queue"]["oldest_queued_age_ms"] >= 0
    assert len(health["workers"]) == 1
    assert health["workers"][0]["heartbeat_at"] <= health["time"]
    assert health["status"] in ("ok", "degraded")


async def test_metrics_are_prometheus_text_from_the_store(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'stride_runs{job="greet",status="completed"} 3.0' in text
    assert 'stride_runs{job="parked",status="queued"} 3.0' in text
    assert "stride_queue_depth 3.0" in text
    assert 'stride_step_duration_seconds_bucket{job="greet",le="+Inf",status="completed"} 6.0' \
        in text
    assert "stride_queue_lag_seconds" in text


async def test_replayed_run_is_executed_by_a_worker(client: httpx.AsyncClient,
                                                    world: World) -> None:
    new_id = (await client.post(f"/api/v1/runs/{world.greet_runs[0]}/replay")).json()["id"]
    async with world.app.worker(jobs=["greet"], lease=2):
        async def done() -> bool:
            run = (await client.get(f"/api/v1/runs/{new_id}")).json()
            return run["status"] == "completed"

        await eventually(done, what="the replayed run to complete")
