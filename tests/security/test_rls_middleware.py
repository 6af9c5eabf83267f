"""Web middlewares set the actor for exactly one request (Starlette over ASGI, Django)."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stride.errors import ConfigurationError
from stride.integrations.django import actor_middleware, authenticated_user
from stride.integrations.starlette import ActorMiddleware
from stride.security import current_actor


async def whoami(request: Request) -> JSONResponse:
    await asyncio.sleep(0)
    return JSONResponse({"actor": current_actor()})


def header_actor(conn: HTTPConnection) -> dict[str, Any] | None:
    user = conn.headers.get("x-user")
    return {"id": user} if user else None


async def async_header_actor(conn: HTTPConnection) -> dict[str, Any] | None:
    await asyncio.sleep(0)
    return header_actor(conn)


@pytest.mark.parametrize("actor", [header_actor, async_header_actor])
async def test_starlette_middleware_sets_the_actor_per_request(actor: Any) -> None:
    app = Starlette(routes=[Route("/me", whoami)])
    app.add_middleware(ActorMiddleware, actor=actor)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(
            *(client.get("/me", headers={"x-user": f"u{i}"} if i % 3 else {})
              for i in range(12)))
    for i, response in enumerate(responses):
        assert response.json() == {"actor": {"id": f"u{i}"} if i % 3 else None}
    assert current_actor() is None


def test_starlette_middleware_needs_a_callable() -> None:
    with pytest.raises(ConfigurationError, match="callable"):
        ActorMiddleware(Starlette(), actor="user")  # type: ignore[arg-type]


def make_request(pk: int | None) -> SimpleNamespace:
    user = SimpleNamespace(pk=pk, is_authenticated=pk is not None)
    return SimpleNamespace(user=user)


def test_django_sync_middleware() -> None:
    factory = actor_middleware()
    assert getattr(factory, "sync_capable", False) and getattr(factory, "async_capable", False)
    middleware = factory(lambda request: current_actor())
    assert middleware(make_request(7)) == {"id": "7"}
    assert middleware(make_request(None)) is None
    assert current_actor() is None
    assert authenticated_user(SimpleNamespace()) is None


async def test_django_async_middleware_with_an_async_actor() -> None:
    async def get_response(request: Any) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return current_actor()

    async def get_actor(request: Any) -> dict[str, Any]:
        return {"id": request.uid}

    middleware = actor_middleware(get_actor)(get_response)
    assert inspect.iscoroutinefunction(middleware)
    results = await asyncio.gather(*(middleware(SimpleNamespace(uid=f"u{i}"))
                                     for i in range(10)))
    assert results == [{"id": f"u{i}"} for i in range(10)]
    assert current_actor() is None


def test_django_sync_request_with_an_async_actor_is_refused() -> None:
    async def get_actor(request: Any) -> dict[str, Any]:
        return {}

    middleware = actor_middleware(get_actor)(lambda request: None)
    with pytest.raises(ConfigurationError, match="async get_actor"):
        middleware(SimpleNamespace())
