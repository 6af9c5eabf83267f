"""The step API that handlers call: `ctx.step.run(id, fn, *args)`.

A step's result is checkpointed once it returns; on every later replay of the run the
call returns the recorded value instead of calling `fn` again. `Step` serves `async def`
handlers (await it), `SyncStep` plain `def` handlers (it returns the value directly).
Both accept sync and async callables.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from pydantic import BaseModel

from stride._current import StepScope, current_step
from stride._replay import StepCall
from stride.errors import ConfigurationError
from stride.events import Event, EventType, OutgoingEvent, validate_event_name
from stride.expressions import compile_expression
from stride.jobs import Job, parse_duration

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


class StepDriver(Protocol):
    """What an executor provides to the step API (see `executors.inprocess`)."""

    loop: asyncio.AbstractEventLoop
    threads: Executor

    def begin(self, user_id: str) -> StepCall: ...

    def replayed(self, call: StepCall, fn: Callable[..., Any]) -> Any: ...

    async def succeeded(self, call: StepCall, fn: Callable[..., Any], value: Any,
                        started_at: int) -> Any: ...

    async def sleep_until(self, user_id: str, wake_at: int) -> None: ...

    async def failed(self, call: StepCall, exc: Exception, started_at: int) -> Any: ...

    async def wait_for_event(self, user_id: str, *, event: str, timeout_ms: int,
                             match: str | None, if_: str | None,
                             event_type: EventType[Any] | None) -> Event[Any] | None: ...

    async def send_event(self, user_id: str, events: Sequence[Any]) -> list[str]: ...

    async def invoke(self, user_id: str, *, job: Job[Any, Any] | str, data: Any,
                     timeout_ms: int | None) -> Any: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _wake_at(until: datetime) -> int:
    if until.tzinfo is None:
        raise ConfigurationError(
            f"sleep_until needs an aware datetime (with tzinfo), got naive {until!r}")
    return int(until.timestamp() * 1000)


def _wake_after(duration: float | timedelta | str) -> int:
    return _now_ms() + int(parse_duration(duration, what="sleep duration") * 1000)


def _timeout_ms(timeout: float | timedelta | str | None, what: str) -> int | None:
    return None if timeout is None else int(parse_duration(timeout, what=what) * 1000)


def _wait_target(event: str | EventType[Any], if_: str | None,
                 ) -> tuple[str, EventType[Any] | None]:
    if if_ is not None:  # compiled (and cached) now: a typo fails here, not at the first event
        compile_expression(if_, owner=f"wait_for_event {event!r} if_")
    if isinstance(event, EventType):
        return event.name, event
    return validate_event_name(event), None


def _event_list(events: Any) -> list[Any]:
    """One event (an `OutgoingEvent`, a dict with 'name', a (name, data) tuple) or a list."""
    single = (isinstance(events, (OutgoingEvent, Mapping))
              or (isinstance(events, tuple) and len(events) == 2 and isinstance(events[0], str)))
    return [events] if single else list(events)


def _is_final(call: StepCall) -> bool:
    return call.recorded is not None and call.recorded.status in ("completed", "failed")


class Step:
    """Step API for `async def` handlers."""

    def __init__(self, driver: StepDriver) -> None:
        self._driver = driver

    @overload
    async def run(self, step_id: str, fn: Callable[P, Awaitable[T]], /,
                  *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[P, T], /,
                  *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, step_id: str, fn: Callable[..., Any], /,
                  *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as the step `step_id`, at most once per successful attempt.

        Example:
            file = await ctx.step.run("fetch-file", get_file_by_id, file_id)
        """
        call = self._driver.begin(step_id)
        if _is_final(call):
            return self._driver.replayed(call, fn)
        started = _now_ms()
        token = current_step.set(StepScope(call.step_id, call.previous_attempts + 1))
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn(*args, **kwargs)
            else:  # the worker's own pool: a stuck body must not hold up process exit
                call_in_context = functools.partial(contextvars.copy_context().run, fn,
                                                    *args, **kwargs)
                value = await self._driver.loop.run_in_executor(self._driver.threads,
                                                                call_in_context)
                if inspect.isawaitable(value):
                    value = await value
        except Exception as exc:
            return await self._driver.failed(call, exc, started)
        finally:
            current_step.reset(token)
        return await self._driver.succeeded(call, fn, value, started)

    async def sleep(self, step_id: str, duration: float | timedelta | str) -> None:
        """Suspend the run for `duration` (seconds, a timedelta, or "2h30m"); no worker waits.

        The wake-up time is recorded once, so a replay sleeps until the same instant.
        """
        await self._driver.sleep_until(step_id, _wake_after(duration))

    async def sleep_until(self, step_id: str, until: datetime) -> None:
        """Suspend the run until `until` (an aware datetime); survives restarts."""
        await self._driver.sleep_until(step_id, _wake_at(until))

    @overload
    async def wait_for_event(self, step_id: str, *, event: EventType[M],
                             timeout: float | timedelta | str, match: str | None = None,
                             if_: str | None = None) -> Event[M] | None: ...

    @overload
    async def wait_for_event(self, step_id: str, *, event: str,
                             timeout: float | timedelta | str, match: str | None = None,
                             if_: str | None = None) -> Event[dict[str, Any]] | None: ...

    async def wait_for_event(self, step_id: str, *, event: str | EventType[Any],
                             timeout: float | timedelta | str, match: str | None = None,
                             if_: str | None = None) -> Event[Any] | None:
        """Suspend the run (no worker waits) until an event named `event` arrives; return it,
        or None once `timeout` passed. `match="data.user_id"`: only an event whose
        `data.user_id` equals this run's event's; `if_`: a CEL filter over `event` (this
        run's event) and `async` (the candidate). Only events received after the step
        started count.

        Example:
            approval = await ctx.step.wait_for_event(
                "approval", event="invoice/approved", timeout="7d", match="data.invoice_id")
        """
        name, event_type = _wait_target(event, if_)
        timeout_ms = _timeout_ms(timeout, "wait_for_event timeout")
        assert timeout_ms is not None
        return await self._driver.wait_for_event(step_id, event=name, timeout_ms=timeout_ms,
                                                 match=match, if_=if_, event_type=event_type)

    async def send_event(self, step_id: str, events: Any) -> list[str]:
        """Dispatch one event or a list (the forms `dispatch_many` takes) from this run, once:
        a replay returns the recorded event ids and sends nothing.

        Example:
            await ctx.step.send_event("notify", ("user/notified", {"user_id": user_id}))
        """
        return await self._driver.send_event(step_id, _event_list(events))

    async def invoke(self, step_id: str, *, job: Job[Any, R] | str, data: Any = None,
                     timeout: float | timedelta | str | None = None) -> R:
        """Run `job` as a child run with `data` as its event data; suspend until it finishes
        and return its output. A child that fails raises `StepError` with its error (so does
        a `timeout`, if given).

        Example:
            thumbnail = await ctx.step.invoke("thumb", job=make_thumbnail, data={"id": f})
        """
        result: R = await self._driver.invoke(
            step_id, job=job, data={} if data is None else data,
            timeout_ms=_timeout_ms(timeout, "invoke timeout"))
        return result


class SyncStep:
    """Step API for plain `def` handlers, which run in a worker thread."""

    def __init__(self, driver: StepDriver) -> None:
        self._driver = driver

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._driver.loop).result()

    @overload
    def run(self, step_id: str, fn: Callable[P, Awaitable[T]], /,
            *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def run(self, step_id: str, fn: Callable[P, T], /,
            *args: P.args, **kwargs: P.kwargs) -> T: ...

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as the step `step_id` and return its result.

        Example:
            file = ctx.step.run("fetch-file", get_file_by_id, file_id)
        """
        call = self._driver.begin(step_id)
        if _is_final(call):
            return self._driver.replayed(call, fn)
        started = _now_ms()
        token = current_step.set(StepScope(call.step_id, call.previous_attempts + 1))
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._wait(_await(value))
        except Exception as exc:
            return self._wait(self._driver.failed(call, exc, started))
        finally:
            current_step.reset(token)
        return self._wait(self._driver.succeeded(call, fn, value, started))

    def sleep(self, step_id: str, duration: float | timedelta | str) -> None:
        """Suspend the run for `duration`; see `Step.sleep`."""
        self._wait(self._driver.sleep_until(step_id, _wake_after(duration)))

    def sleep_until(self, step_id: str, until: datetime) -> None:
        """Suspend the run until `until` (an aware datetime); see `Step.sleep_until`."""
        self._wait(self._driver.sleep_until(step_id, _wake_at(until)))

    @overload
    def wait_for_event(self, step_id: str, *, event: EventType[M],
                       timeout: float | timedelta | str, match: str | None = None,
                       if_: str | None = None) -> Event[M] | None: ...

    @overload
    def wait_for_event(self, step_id: str, *, event: str, timeout: float | timedelta | str,
                       match: str | None = None,
                       if_: str | None = None) -> Event[dict[str, Any]] | None: ...

    def wait_for_event(self, step_id: str, *, event: str | EventType[Any],
                       timeout: float | timedelta | str, match: str | None = None,
                       if_: str | None = None) -> Event[Any] | None:
        """Wait for an event, or None after `timeout`; see `Step.wait_for_event`."""
        name, event_type = _wait_target(event, if_)
        timeout_ms = _timeout_ms(timeout, "wait_for_event timeout")
        assert timeout_ms is not None
        return self._wait(self._driver.wait_for_event(
            step_id, event=name, timeout_ms=timeout_ms, match=match, if_=if_,
            event_type=event_type))

    def send_event(self, step_id: str, events: Any) -> list[str]:
        """Dispatch events from this run, once; see `Step.send_event`."""
        return self._wait(self._driver.send_event(step_id, _event_list(events)))

    def invoke(self, step_id: str, *, job: Job[Any, R] | str, data: Any = None,
               timeout: float | timedelta | str | None = None) -> R:
        """Run `job` as a child and return its output; see `Step.invoke`."""
        result: R = self._wait(self._driver.invoke(
            step_id, job=job, data={} if data is None else data,
            timeout_ms=_timeout_ms(timeout, "invoke timeout")))
        return result


async def _await(value: Awaitable[T]) -> T:
    return await value
