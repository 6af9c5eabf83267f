"""Guarantees 2 and 7 inside one process: what a replay of the handler sees.

A run replays its handler from the top after a retry's backoff. Each test below makes one
step fail once on purpose to force such a replay, then checks that the finished steps
came back from the memo (same value, same type, body not called again), or that a replay
which diverged from the recorded steps was stopped with a clear error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from stride import Backoff, Context, Run, Stride, SyncContext


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="engine-replay", database_url=sqlite_url,
                 backoff=Backoff(initial=0.05, jitter=0.0))
    yield app
    await app.aclose()


async def run_to_end(app: Stride, event: str, data: dict[str, Any] | None = None) -> Run:
    """Dispatch `event`, run a worker until the one run it triggers finished; return it."""
    async with app.worker(concurrency=4, lease=2):
        [event_id] = await app.dispatch(event, data or {})
        [run] = await app.get_runs(event_id=event_id)
        return await app.wait_for(run.id, timeout=10)


def fails_once(ran: list[str], name: str, value: Any = None) -> Any:
    """A step body that raises on its first call only (which forces one replay)."""

    def body() -> Any:
        ran.append(name)
        if ran.count(name) == 1:
            raise ConnectionError(f"{name} failed once")
        return value

    return body


class Invoice(BaseModel):
    number: str
    cents: int


def load_invoice(ran: list[str]) -> Invoice:
    ran.append("load-invoice")
    return Invoice(number="INV-7", cents=1250)


# --- values and types come back from the memo ------------------------------------------------


async def test_a_step_returning_a_model_is_restored_as_the_model_on_replay(app: Stride) -> None:
    ran: list[str] = []
    seen: list[Any] = []

    @app.define_job(id="bill", trigger="order/placed")
    async def bill(ctx: Context[dict[str, Any]]) -> int:
        invoice = await ctx.step.run("load-invoice", load_invoice, ran)
        seen.append(invoice)
        await ctx.step.run("send", fails_once(ran, "send"))
        return invoice.cents

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", 1250)
    assert ran.count("load-invoice") == 1
    assert seen == [Invoice(number="INV-7", cents=1250)] * 2, "first run, then the replay"
    assert all(type(invoice) is Invoice for invoice in seen)
    assert run.step("load-invoice").output == {"number": "INV-7", "cents": 1250}


async def test_every_replay_sees_the_first_value_of_a_step(app: Stride) -> None:
    ran: list[str] = []
    seen: list[str] = []

    @app.define_job(id="token", trigger="order/placed")
    async def token(ctx: Context[dict[str, Any]]) -> str:
        value = await ctx.step.run("make-token", lambda: uuid.uuid4().hex)
        seen.append(value)
        await ctx.step.run("flaky-1", fails_once(ran, "flaky-1"))
        await ctx.step.run("flaky-2", fails_once(ran, "flaky-2"))
        return value

    run = await run_to_end(app, "order/placed")

    assert run.status == "completed"
    assert len(seen) == 3 and len(set(seen)) == 1, "first execution and two replays"
    assert run.output == run.step("make-token").output == seen[0]


async def test_restoring_a_model_needs_the_return_annotation(app: Stride) -> None:
    """Without an annotation (a lambda) the memo can only give back the JSON form."""
    seen: list[Any] = []

    @app.define_job(id="bill", trigger="order/placed")
    async def bill(ctx: Context[dict[str, Any]]) -> None:
        seen.append(await ctx.step.run("load", lambda: Invoice(number="INV-8", cents=5)))

    run = await run_to_end(app, "order/placed")

    assert run.status == "completed"
    assert seen == [{"number": "INV-8", "cents": 5}]


async def test_a_repeated_step_id_gets_a_counter(app: Stride) -> None:
    ran: list[str] = []

    def fetch(page: int) -> list[int]:
        ran.append(f"fetch {page}")
        return [page * 10, page * 10 + 1]

    @app.define_job(id="crawl", trigger="site/crawl")
    async def crawl(ctx: Context[dict[str, Any]]) -> list[int]:
        items: list[int] = []
        for page in range(3):
            items += await ctx.step.run("fetch", fetch, page)
        await ctx.step.run("index", fails_once(ran, "index"))
        return items

    run = await run_to_end(app, "site/crawl")

    assert run.output == [0, 1, 10, 11, 20, 21]
    assert [step.id for step in run.steps] == ["fetch", "fetch:1", "fetch:2", "index"]
    assert [step.position for step in run.steps] == [0, 1, 2, 3]
    assert run.step("fetch:2").output == [20, 21]
    assert ran.count("fetch 0") == ran.count("fetch 1") == ran.count("fetch 2") == 1


async def test_a_step_named_like_a_counter_does_not_capture_another_call(app: Stride) -> None:
    ran: list[str] = []

    @app.define_job(id="collide", trigger="site/crawl")
    async def collide(ctx: Context[dict[str, Any]]) -> list[str]:
        first = await ctx.step.run("fetch:1", lambda: ran.append("a") or "A")
        second = await ctx.step.run("fetch", lambda: ran.append("b") or "B")
        third = await ctx.step.run("fetch", lambda: ran.append("c") or "C")
        return [first, second, third]

    run = await run_to_end(app, "site/crawl")

    if run.status == "completed":
        assert run.output == ["A", "B", "C"]
        assert ran == ["a", "b", "c"]
    else:  # refusing an id that looks like a counter, with a clear message, is fine too
        assert run.error is not None and "fetch:1" in run.error["message"]


# --- plain def handlers ----------------------------------------------------------------------


async def test_a_sync_handler_runs_sync_and_async_steps_and_memoizes_them(app: Stride) -> None:
    ran: list[str] = []

    def read_config() -> dict[str, int]:
        ran.append("read-config")
        return {"factor": 3}

    async def fetch_price() -> int:
        ran.append("fetch-price")
        await asyncio.sleep(0.01)
        return 14

    @app.define_job(id="price", trigger="order/placed")
    def price(ctx: SyncContext[dict[str, Any]]) -> int:
        config = ctx.step.run("read-config", read_config)
        amount = ctx.step.run("fetch-price", fetch_price)
        ctx.step.run("publish", fails_once(ran, "publish"))
        return config["factor"] * amount

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", 42)
    assert ran.count("read-config") == 1
    assert ran.count("fetch-price") == 1
    assert ran.count("publish") == 2
    assert [step.id for step in run.steps] == ["read-config", "fetch-price", "publish"]


async def test_a_sync_handler_restores_models_too(app: Stride) -> None:
    ran: list[str] = []
    seen: list[type] = []

    @app.define_job(id="bill-sync", trigger="order/placed")
    def bill(ctx: SyncContext[dict[str, Any]]) -> str:
        invoice = ctx.step.run("load-invoice", load_invoice, ran)
        seen.append(type(invoice))
        ctx.step.run("send", fails_once(ran, "send"))
        return invoice.number

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", "INV-7")
    assert seen == [Invoice, Invoice]
    assert ran.count("load-invoice") == 1


# --- parallel steps ----------------------------------------------------------------------------


async def test_parallel_steps_are_memoized_each(app: Stride) -> None:
    ran: list[str] = []

    async def slow(name: str) -> str:
        ran.append(name)
        await asyncio.sleep(0.1)  # still running when its sibling has already failed
        return name.upper()

    @app.define_job(id="fan-out", trigger="order/placed")
    async def fan_out(ctx: Context[dict[str, Any]]) -> list[str]:
        results = await asyncio.gather(
            ctx.step.run("resize-a", slow, "a"),
            ctx.step.run("resize-b", slow, "b"),
            ctx.step.run("upload", fails_once(ran, "upload", "UP")),
        )
        return list(results)

    run = await run_to_end(app, "order/placed")

    assert (run.status, run.output) == ("completed", ["A", "B", "UP"])
    assert ran.count("a") == 1, "the sibling finished and was checkpointed before the replay"
    assert ran.count("b") == 1
    assert ran.count("upload") == 2
    assert [(step.id, step.position) for step in run.steps] == [
        ("resize-a", 0), ("resize-b", 1), ("upload", 2)]


# --- non-determinism is reported, not mixed ------------------------------------------------------

INVOICE_FIRST = True  # flipped by a step body, as a deploy between attempts would


@pytest.fixture
def invoice_first() -> Iterator[None]:
    global INVOICE_FIRST
    INVOICE_FIRST = True
    yield
    INVOICE_FIRST = True


async def test_a_replay_that_calls_another_step_raises_non_determinism(
        app: Stride, invoice_first: None) -> None:
    ran: list[str] = []

    def notify() -> None:
        global INVOICE_FIRST
        ran.append("notify")
        if ran.count("notify") == 1:
            INVOICE_FIRST = False  # the next replay takes the other branch
            raise ConnectionError("mail server down")

    @app.define_job(id="diverges", trigger="order/placed", retries=1)
    async def diverges(ctx: Context[dict[str, Any]]) -> None:
        if INVOICE_FIRST:
            await ctx.step.run("create-invoice", lambda: ran.append("create-invoice"))
        else:
            await ctx.step.run("send-reminder", lambda: ran.append("send-reminder"))
        await ctx.step.run("notify", notify)

    run = await run_to_end(app, "order/placed")

    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "NonDeterminismError"
    message = run.error["message"]
    assert "'create-invoice'" in message, "names the step the run recorded"
    assert "'send-reminder'" in message, "names the step the handler called instead"
    assert "step #1" in message
    assert "send-reminder" not in ran, "the diverging step never ran"
    assert [step.id for step in run.steps] == ["create-invoice", "notify"]
