"""The one shape every background loop has: start, tick every interval, stop.

A tick that raises is logged and the loop goes on: a heartbeat that failed once because
the database blinked must not end the worker's heartbeats for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from stride.errors import ConfigurationError

log = logging.getLogger("stride.looper")


class Looper:
    """Calls `tick` every `interval` seconds in a named asyncio task until stopped."""

    def __init__(self, name: str, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
        if interval <= 0:
            raise ConfigurationError(f"{name} interval must be > 0 seconds, got {interval}")
        self.name = name
        self.interval = interval
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._failing = False

    def start(self) -> None:
        self._stopped.clear()
        self._task = asyncio.create_task(self._loop(), name=f"stride-{self.name}")

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                await self._tick()
                if self._failing:
                    log.warning("%s recovered", self.name)
                self._failing = False
            except Exception as exc:
                if not self._failing:  # one line per outage, not one per tick
                    log.warning("%s failed: %s", self.name, exc)
                self._failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.interval)
