"""Stride's HTTP server: event ingestion, the JSON API, the dashboard and /metrics.

Example:
    from stride.server import create_server
    server = create_server(jobs, event_keys=["..."], api_keys=["..."])   # an ASGI app
"""

from stride.server.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    create_server,
    run,
    serve,
    serve_http,
)
from stride.server.tracing import RunTracer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "RunTracer", "create_server", "run", "serve",
           "serve_http"]
