"""API operations declared once: the route, its input and output models, its auth, its errors.

`endpoint()` turns an `Operation` into a Starlette endpoint that checks auth, validates the
query and body with the operation's models and serialises the returned model; `openapi.py`
writes the OpenAPI document from the same declarations, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stride.errors import InvalidEventError, RunNotFound, StoreUnavailable
from stride.server.auth import has_bearer, same_origin

if TYPE_CHECKING:
    from stride.server.state import ServerState

M = TypeVar("M", bound=BaseModel)
AuthKind = Literal["api", "event", "none"]
MAX_BODY_BYTES = 4 * 1024 * 1024


class NotFound(Exception):
    """The thing named in the path does not exist (answered as 404 with this message)."""


class BadRequest(Exception):
    """The request is wrong (answered as 400 with this message)."""


class BodyTooLarge(Exception):
    """The body exceeds MAX_BODY_BYTES (answered as 413)."""


@dataclass(slots=True)
class Call:
    """What an operation's handler receives."""

    request: Request
    server: ServerState
    query: BaseModel | None
    body: Any

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model)
        return self.query

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model)
        return self.body

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Call], Awaitable[BaseModel | Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the API, as served and as documented."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: AuthKind = "api"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    raw_body: bool = False  # the handler reads the body itself; `body` only documents it
    response: type[BaseModel] | None = None
    media_type: str = "application/json"
    errors: tuple[int, ...] = field(default=())
    also: tuple[int, ...] = field(default=())  # statuses that answer with `response` too

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def statuses(self) -> tuple[int, ...]:
        implied = {"api": (401,), "event": (401,), "none": ()}[self.auth]
        inputs = (400,) if self.query or self.body else ()
        unsafe = (403,) if self.method == "POST" else ()
        return tuple(sorted({*self.errors, *implied, *inputs, *unsafe} - set(self.also)))


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def unauthorized() -> JSONResponse:
    """No detail: the same answer for a missing, malformed, wrong or expired credential."""
    return error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})


def _one_line(exc: ValidationError, where: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where} {loc!r}: {first['msg']}{more}" if loc else f"{where}: {first['msg']}{more}"


async def read_json(request: Request) -> Any:
    """The request body as JSON; raises BadRequest or BodyTooLarge."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None


async def _inputs(op: Operation, request: Request) -> tuple[BaseModel | None, Any]:
    query = body = None
    if op.query is not None:
        try:
            query = op.query.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise BadRequest(_one_line(exc, "query parameter")) from None
    if op.body is not None and not op.raw_body:
        try:
            body = op.body.model_validate(await read_json(request))
        except ValidationError as exc:
            raise BadRequest(_one_line(exc, "body field")) from None
    return query, body


def _authorised(op: Operation, server: ServerState, request: Request) -> bool:
    if op.auth == "api":
        return server.auth.allows(request)
    if op.auth == "event":
        return server.auth.event_key_ok(str(request.path_params.get("event_key", "")))
    return True


def _csrf_checked(op: Operation, server: ServerState, request: Request) -> bool:
    """Requests a browser may send with ambient credentials (a cookie, or none in dev)."""
    return not has_bearer(request) and (op.auth == "api" or server.auth.dev)


def endpoint(op: Operation, server: ServerState) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint serving `op`."""

    async def serve(request: Request) -> Response:
        if not _authorised(op, server, request):
            return unauthorized()
        if _csrf_checked(op, server, request) and not same_origin(request):
            return error(403, "cross-site request refused")
        try:
            query, body = await _inputs(op, request)
            result = await op.handler(Call(request, server, query, body))
        except (BadRequest, InvalidEventError) as exc:
            return error(400, str(exc).splitlines()[0] if str(exc) else "bad request")
        except (NotFound, RunNotFound) as exc:
            return error(404, str(exc))
        except BodyTooLarge:
            return error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        except StoreUnavailable:
            return error(503, "the store is unavailable; try again")
        if isinstance(result, Response):
            return result
        return Response(result.model_dump_json(), media_type="application/json")

    return serve
