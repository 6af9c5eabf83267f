"""A real app on a real SQLite file, with runs made by a real in-process worker, served by
`create_server` through httpx's ASGITransport (no network, no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from stride import Backoff, Context, Stride
from stride.server import create_server
from tests.conftest import eventually

EVENT_KEY = "ek_" + "e" * 29
API_KEY = "ak_" + "a" * 29
BASE_URL = "http://127.0.0.1"


def make_app(database_url: str) -> Stride:
    """Three jobs: `greet` completes with two steps, `flaky` fails after a retry, and
    `parked` is never given to a worker, so its runs stay queued."""
    app = Stride(app_id="server-tests", database_url=database_url,
                 backoff=Backoff(initial=0.05, jitter=0.0))

    @app.define_job(id="greet", trigger="demo/greet")
    async def greet(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        name = await ctx.step.run("load", lambda: ctx.event.data.get("name", "world"))
        text = await ctx.step.run("compose", lambda: {"text": f"hello {name}", "pad": "x" * 600})
        return {"greeting": text["text"]}

    @app.define_job(id="flaky", trigger="demo/flaky", retries=1)
    async def flaky(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("fetch", lambda: 1)
        await ctx.step.run("explode", _explode)

    @app.define_job(id="parked", trigger="demo/parked")
    async def parked(ctx: Context[dict[str, Any]]) -> None:
        return None

    return app


def _explode() -> None:
    raise ConnectionError("upstream is down")


@dataclass
class World:
    """The app, its ASGI server and the ids of the runs the fixture made."""

    app: Stride
    server: Any
    greet_runs: list[str]
    flaky_run: str
    parked_runs: list[str]
    quiet_event: str


async def populate(app: Stride) -> tuple[list[str], str, list[str], str]:
    async with app.worker(jobs=["greet", "flaky"], lease=2):
        for name in ("ada", "grace", "linus<script>alert(1)</script>"):
            await app.dispatch("demo/greet", {"name": name})
        [flaky_event] = await app.dispatch("demo/flaky", {"order": 42})
        for number in range(3):
            await app.dispatch("demo/parked", {"n": number})
        [quiet] = await app.dispatch("nobody/listens", {"why": "no job"})

        async def finished() -> list[Any] | None:
            runs = await app.get_runs(limit=100)
            done = [r for r in runs if r.job_id != "parked" and r.finished]
            return runs if len(done) == 4 else None

        runs = await eventually(finished, what="greet and flaky runs to finish", timeout=20)
    greet = [r.id for r in runs if r.job_id == "greet"]
    [flaky] = [r.id for r in runs if r.event_id == flaky_event]
    parked = [r.id for r in runs if r.job_id == "parked"]
    return greet, flaky, parked, quiet


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[World]:
    app = make_app(sqlite_url)
    greet, flaky, parked, quiet = await populate(app)
    server = create_server(app, event_keys=[EVENT_KEY], api_keys=[API_KEY])
    yield World(app, server, greet, flaky, parked, quiet)
    await app.aclose()


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=world.server)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
async def anonymous(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=world.server)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client
