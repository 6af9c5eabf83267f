"""A real uvicorn server for a real app, in a background thread, on a free local port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from stride import Stride
from stride.server import create_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(app: Stride, *, worker_jobs: list[str] | None = None,
                **server_options: Any) -> Iterator[str]:
    """Serve `app` (plus an in-process worker for `worker_jobs`) until the block ends."""
    port = free_port()
    config = uvicorn.Config(create_server(app, **server_options), host="127.0.0.1", port=port,
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    async def main() -> None:
        await app.store()
        handle = app.worker(jobs=worker_jobs, lease=2) if worker_jobs else None
        if handle is not None:
            await handle.start()
        try:
            await server.serve()
        finally:
            if handle is not None:
                await handle.stop(grace=0)
            await app.aclose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name="stride-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if failure or time.monotonic() > deadline:
            raise RuntimeError(f"the live server did not start: {failure}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
