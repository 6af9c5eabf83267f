"""Server-sent events: the first page of runs, sent again whenever it changes.

Polling one index-backed page query is cheaper and simpler than fanning out change
notifications, and it also catches status changes made by workers in other processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from stride.server.models import RunQuery, StreamQuery
from stride.server.queries import run_page
from stride.server.state import ServerState

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


def runs_stream(server: ServerState, query: StreamQuery) -> StreamingResponse:
    return StreamingResponse(_snapshots(server, query), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _snapshots(server: ServerState, query: StreamQuery) -> AsyncIterator[str]:
    store = await server.app.store()
    page_query = RunQuery(**query.model_dump(exclude={"max_events", "cursor"}))
    last, sent, quiet = "", 0, 0.0
    while True:
        body = (await run_page(store, page_query)).model_dump_json()
        if body != last:
            yield f"event: runs\ndata: {body}\n\n"
            last, sent, quiet = body, sent + 1, 0.0
            if query.max_events is not None and sent >= query.max_events:
                return
        elif quiet >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(POLL_SECONDS)
        quiet += POLL_SECONDS
