"""Starlette / FastAPI: set the actor of each request, so jobs it dispatches carry the user.

A pure ASGI middleware (not `BaseHTTPMiddleware`), so the actor it sets is visible to the
endpoint, to background tasks started by it, and to `jobs.dispatch(...)` called without
`user=`. It runs the app inside `with set_actor(actor):`, which ends with the request.

Example:
    def request_actor(request: Request) -> dict[str, Any] | None:
        user = request.scope.get("user")                 # set by AuthenticationMiddleware
        return {"id": user.identity} if user and user.is_authenticated else None

    app.add_middleware(ActorMiddleware, actor=request_actor)   # add it after auth
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from stride.errors import ConfigurationError
from stride.security import set_actor

ActorOf = Callable[[HTTPConnection],
                   Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None]


class ActorMiddleware:
    """ASGI middleware: `actor(request)` (sync or async) gives the acting user's dict, or None
    for anonymous requests; HTTP and WebSocket scopes get it, lifespan passes through."""

    def __init__(self, app: ASGIApp, *, actor: ActorOf) -> None:
        if not callable(actor):
            raise ConfigurationError(f"ActorMiddleware(actor=...) must be callable, got {actor!r}")
        self.app = app
        self.actor = actor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        found = self.actor(HTTPConnection(scope, receive))
        if inspect.isawaitable(found):
            found = await found
        with set_actor(found):
            await self.app(scope, receive, send)
