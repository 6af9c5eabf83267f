"""Leases this process may hold without knowing it, handed back once the server is back.

A claim whose reply was lost in an outage may have committed; a checkpoint or finish that
gave up (or was refused) leaves its run to "resume after the lease expires". But a worker's
heartbeat extends every lease it owns, so such runs would never expire while it lives.
Handing them back by lease token is a no-op when the lease has moved on, and requeues the
run when this process still held it unknowingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from stride.stores.base import Lease

log = logging.getLogger("stride.store.postgres")

RETRY_SECONDS = 1.0


class Orphans:
    """Lost claims (by token) and abandoned leases, handed back in the background."""

    def __init__(self, hand_back: Callable[[list[str], list[Lease]], Awaitable[None]]) -> None:
        self._hand_back = hand_back
        self._claims: set[str] = set()
        self._leases: set[Lease] = set()
        self._task: asyncio.Task[None] | None = None

    def add_claim(self, token: str) -> None:
        self._claims.add(token)
        self._kick()

    def add_leases(self, leases: list[Lease]) -> None:
        self._leases.update(leases)
        if leases:
            self._kick()

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stride-pg-orphans")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while self._claims or self._leases:
                claims, leases = list(self._claims), list(self._leases)
                try:
                    await self._hand_back(claims, leases)
                except Exception as exc:
                    log.debug("could not hand back orphaned leases yet: %s", exc)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                self._claims.difference_update(claims)
                self._leases.difference_update(leases)
        finally:
            self._task = None
