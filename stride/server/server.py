"""`create_server`: the ASGI app with the API, ingestion, dashboard and metrics; `serve` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stride.app import Stride
from stride.errors import ConfigurationError
from stride.server import dashboard, jsonfold
from stride.server.api import operations
from stride.server.auth import LOCAL_HOSTS, Auth
from stride.server.charts import human_ms
from stride.server.openapi import openapi_document
from stride.server.routing import endpoint, error
from stride.server.state import ServerState

log = logging.getLogger("stride.server")
HERE = Path(__file__).parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8288
API_VERSION = "1.0.0"
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds a strict CSP and friends to every response (the pages need nothing inline)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _utc(ms: int | None, form: str = "%Y-%m-%d %H:%M:%S") -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(form)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True  # every template, whatever its file name
    templates.env.filters["utc"] = _utc
    templates.env.globals.update(human_ms=human_ms, fold=jsonfold.fold, preview=jsonfold.preview)
    templates.env.filters["iso"] = lambda ms: _utc(ms, "%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z" if ms is not None else "")
    return templates


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "not found", 405: "method not allowed"}.get(status, "error")
    if request.url.path.startswith(("/api/", "/e/")) or "/api/" in request.url.path:
        return error(status, message)
    return HTMLResponse(f"<!doctype html><title>{status}</title><p>{message}</p>",
                        status_code=status)


def create_server(app: Stride, *, dev: bool = False, event_keys: Sequence[str] = (),
                  api_keys: Sequence[str] = (),
                  allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The HTTP API, event ingestion, dashboard and /metrics of `app`, as one ASGI app.

    Outside dev mode it needs at least one event key and one API key (ConfigurationError
    otherwise). In dev mode nothing is checked and only local host names are answered
    (`allowed_hosts` overrides that). Mount it in your own Starlette/FastAPI app, or run it
    with `serve`.

    Example:
        server = create_server(jobs, event_keys=[os.environ["STRIDE_EVENT_KEY"]],
                               api_keys=[os.environ["STRIDE_API_KEY"]])
        fastapi_app.mount("/stride", server)
    """
    auth = Auth(dev=dev, event_keys=event_keys, api_keys=api_keys)
    hosts = allowed_hosts if allowed_hosts is not None else (LOCAL_HOSTS if dev else None)
    state = ServerState(app=app, auth=auth, templates=_templates(), allowed_hosts=hosts)
    ops = operations()
    document = openapi_document(ops, title=f"Stride API ({app.app_id})", version=API_VERSION,
                                secured=not dev)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [Route(op.path, endpoint(op, state), methods=[op.method])
                               for op in ops]
    routes += [Route("/openapi.json", openapi, methods=["GET"]),
               Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
               *dashboard.routes(state)]
    middleware = [Middleware(SecurityHeaders)]
    if hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)))
    server = Starlette(routes=routes, middleware=middleware,
                       exception_handlers={404: _http_error, 405: _http_error})
    server.state.stride = state
    return server


def _check_bind(host: str, dev: bool) -> None:
    if dev and host not in LOCAL_HOSTS:
        raise ConfigurationError(
            f"dev mode has no authentication and binds 127.0.0.1 only, not {host!r}; "
            "use `stride serve` with keys to listen on other addresses")


class _Uvicorn:
    """uvicorn without its own signal handling: the caller decides when to stop."""

    @staticmethod
    def server(config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


async def serve_http(app: Stride, *, stop: asyncio.Event, host: str = DEFAULT_HOST,
                     port: int = DEFAULT_PORT, dev: bool = False,
                     event_keys: Sequence[str] = (), api_keys: Sequence[str] = (),
                     log_level: str = "warning") -> None:
    """Serve HTTP on `host:port` until `stop` is set. The store and workers are the caller's
    (this is what `stride dev` runs beside its worker and terminal view)."""
    import uvicorn

    _check_bind(host, dev)
    asgi = create_server(app, dev=dev, event_keys=event_keys, api_keys=api_keys)
    server = _Uvicorn.server(uvicorn.Config(asgi, host=host, port=port, log_level=log_level,
                                            lifespan="off", proxy_headers=False))

    async def stop_later() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_later(), name="stride-http-stop")
    log.info("Stride %s on http://%s:%d/", "dev server" if dev else "server", host, port)
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise ConfigurationError(f"could not listen on {host}:{port} (is the port in use?)")


async def serve(app: Stride, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                dev: bool = False, event_keys: Sequence[str] = (), api_keys: Sequence[str] = (),
                worker: bool | None = None, worker_options: dict[str, Any] | None = None,
                stop: asyncio.Event | None = None, log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM (or `stop`); with `worker`, an in-process worker.

    Dev mode binds 127.0.0.1 only and runs a worker unless `worker=False`. Closes the app's
    store at the end.
    """
    _check_bind(host, dev)
    create_server(app, dev=dev, event_keys=event_keys, api_keys=api_keys)  # fail fast on keys
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    await app.store()
    run_worker = dev if worker is None else worker
    handle = app.worker(**(worker_options or {})) if run_worker else None
    if handle is not None:
        await handle.start()
    try:
        await serve_http(app, stop=stop, host=host, port=port, dev=dev, event_keys=event_keys,
                         api_keys=api_keys, log_level=log_level)
    finally:
        if handle is not None:
            await handle.stop()
        await app.aclose()


def run(app: Stride, **options: Any) -> None:
    """`serve` in a fresh event loop (for scripts and the CLI)."""
    asyncio.run(serve(app, **options))
