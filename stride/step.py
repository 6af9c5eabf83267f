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
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from stride._current import StepScope, current_step
from stride._replay import StepCall
from stride.errors import ConfigurationError
from stride.jobs import parse_duration

P = ParamSpec("P")
T = TypeVar("T")


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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _wake_at(until: datetime) -> int:
    if until.tzinfo is None:
        raise ConfigurationError(
            f"sleep_until needs an aware datetime (with tzinfo), got naive {until!r}")
    return int(until.timestamp() * 1000)


def _wake_after(duration: float | timedelta | str) -> int:
    return _now_ms() + int(parse_duration(duration, what="sleep duration") * 1000)


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


async def _await(value: Awaitable[T]) -> T:
    return await value
