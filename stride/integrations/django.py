"""Django: set the actor of each request, so jobs it dispatches carry the user.

`actor_middleware(get_actor)` builds a middleware factory (sync and async capable) that runs
each request inside `with set_actor(get_actor(request)):`. Django is not imported here: the
factory follows Django's middleware protocol, so this module costs nothing without it.

Example (myapp/middleware.py, then "myapp.middleware.stride_actor" in MIDDLEWARE, after
AuthenticationMiddleware):

    from stride.integrations.django import actor_middleware, authenticated_user

    stride_actor = actor_middleware(authenticated_user)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from stride.errors import ConfigurationError
from stride.security import set_actor

Actor = Mapping[str, Any] | None
Response = Any  # an HttpResponse: its type is Django's, and Stride never looks at it
GetResponse = Callable[[Any], Response]


class Middleware(Protocol):
    """A Django middleware: called with each request, returns the response (or awaitable)."""

    def __call__(self, request: Any) -> Response: ...


def authenticated_user(request: Any) -> Actor:
    """The default actor: `{"id": str(request.user.pk)}` for a logged-in user, else None.

    In async views `request.user` must not be touched lazily; give an async `get_actor` that
    awaits `request.auser()` instead.
    """
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return {"id": str(user.pk)}


def actor_middleware(get_actor: Callable[[Any], Actor | Awaitable[Actor]] = authenticated_user
                     ) -> Callable[[GetResponse], Middleware]:
    """A Django middleware factory that sets the actor from `get_actor(request)` per request.

    `get_actor` may be async when Django serves the request asynchronously (ASGI).
    """
    if not callable(get_actor):
        raise ConfigurationError(f"actor_middleware(get_actor): not callable: {get_actor!r}")

    def factory(get_response: GetResponse) -> Middleware:
        if inspect.iscoroutinefunction(get_response):
            async def async_middleware(request: Any) -> Response:
                actor = get_actor(request)
                if inspect.isawaitable(actor):
                    actor = await actor
                with set_actor(actor):
                    return await get_response(request)

            return async_middleware

        def middleware(request: Any) -> Response:
            actor = get_actor(request)
            if inspect.isawaitable(actor):
                if inspect.iscoroutine(actor):
                    actor.close()  # never awaited: close it so Python does not warn
                raise ConfigurationError(
                    "the Stride actor middleware got an async get_actor in a sync request; "
                    "give a sync function, or serve the app under ASGI")
            with set_actor(actor):
                return get_response(request)

        return middleware

    factory.sync_capable = True  # type: ignore[attr-defined]
    factory.async_capable = True  # type: ignore[attr-defined]
    return factory
