"""Which database a CLI command talks to, and opening it so that every failure is one line.

Order of choice: `--database-url`, else STRIDE_DATABASE_URL, else the APP's URL, else the
default SQLite file ./.stride/stride.db. Opening is the one place a broken URL, a missing
driver, an unreachable server, a locked or a corrupt file shows up, so it is also the one
place that makes sure each of these ends as a `StrideError` with a message, never as a
driver traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable
from typing import TypeVar

from stride.app import DATABASE_URL_ENV, Stride
from stride.errors import ConfigurationError, StoreUnavailable, StrideError
from stride.stores.base import Store, open_store_for_url, parse_database_url
from stride.stores.sqlite import default_sqlite_url, sqlite_path

T = TypeVar("T")
DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds an SQLite command waits for another process's lock before giving up."""
OPEN_TIMEOUT = 20.0
"""Seconds to wait for a database to accept us; past this it counts as unreachable."""
_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")


def resolve_database_url(explicit: str | None, app: Stride | None = None) -> str:
    """The URL a command uses: flag, environment, APP, default, in that order."""
    url = (explicit or os.environ.get(DATABASE_URL_ENV)
           or (app.database_url if app is not None else None) or default_sqlite_url())
    parse_database_url(url)
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, fit for error messages and logs."""
    return _PASSWORD.sub(r"\1***@", url)


def use_database(app: Stride, url: str) -> Stride:
    """Point `app` at `url` before it opens its store.

    The facade reads `database_url` only when it first opens its store, so setting it here
    is safe; a `Stride.with_database_url(...)` would say so more plainly (see the CLI notes).
    """
    app.database_url = url
    return app


async def open_store(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                     must_exist: bool = False) -> Store:
    """Open (and migrate) the store at `url` for a command that has no APP to ask.

    `must_exist` is for read-only commands: looking at runs must not quietly create an empty
    database because of a typo in the path.
    """
    scheme, _ = parse_database_url(url)
    options: dict[str, int] = {}
    if scheme == "sqlite":
        options["busy_timeout_ms"] = int(busy_timeout * 1000)
        if must_exist:
            _check_sqlite_file(url)
    store = _backend(url, options)
    await guarded(url, store.open())
    return store


async def open_app_store(app: Stride) -> Store:
    """The app's store, opened, with the same one-line errors as `open_store`."""
    return await guarded(app.database_url, app.store())


def _check_sqlite_file(url: str) -> None:
    path = sqlite_path(url)
    if not os.path.exists(path):
        raise StoreUnavailable(
            f"no Stride database at {path}: nothing has been dispatched with this URL yet; "
            f"pass --database-url or set {DATABASE_URL_ENV}")


def _backend(url: str, options: dict[str, int]) -> Store:
    try:
        return open_store_for_url(url, **options)
    except ImportError as exc:
        raise ConfigurationError(
            f"the backend for {redact(url)} is not available in this installation ({exc})"
        ) from exc


async def guarded(url: str, operation: Awaitable[T]) -> T:
    """Await `operation`; turn a driver error or a hang into a one-line `StoreUnavailable`.

    Stores are meant to wrap their driver errors themselves; this is the backstop that keeps
    a backend's slip from reaching the user as a traceback.
    """
    try:
        return await asyncio.wait_for(operation, OPEN_TIMEOUT)
    except StrideError:
        raise
    except TimeoutError as exc:
        raise StoreUnavailable(
            f"the database {redact(url)} did not answer within {OPEN_TIMEOUT:.0f} s") from exc
    except Exception as exc:  # a driver's own error class, e.g. psycopg.OperationalError
        raise StoreUnavailable(
            f"cannot open the database {redact(url)}: {type(exc).__name__}: {exc}") from exc

