"""Who may call the server: event keys for ingestion, API keys for everything else.

An API key comes as `Authorization: Bearer <key>`, or as the signed session cookie that the
login form issues for it. Keys are compared with `hmac.compare_digest`, every key every time,
so that timing tells nothing. A session cookie is `expires.tag.signature`: `tag` names the
key it was issued for (revoking the key ends its sessions), the signature is an HMAC made
with that key. In dev mode nothing is checked, and the server answers to local hosts only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from stride.errors import ConfigurationError

SESSION_COOKIE = "stride_session"
SESSION_SECONDS = 12 * 3600
MIN_KEY_LENGTH = 16
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAKE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _tag(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _matches(given: str, keys: Sequence[str]) -> bool:
    found = False
    for key in keys:  # no early exit: compare against every key
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def _check_keys(kind: str, keys: Sequence[str]) -> tuple[str, ...]:
    if not keys:
        raise ConfigurationError(
            f"the server needs at least one {kind} key outside dev mode; make one with "
            f"{_MAKE_KEY} and pass it (or run `stride dev` for local work)")
    for key in keys:
        if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"{kind} keys must be strings of at least {MIN_KEY_LENGTH} characters; "
                f"make one with {_MAKE_KEY}")
    return tuple(keys)


class Auth:
    """Checks keys and session cookies; `dev=True` lets every request in."""

    def __init__(self, *, dev: bool, event_keys: Sequence[str] = (),
                 api_keys: Sequence[str] = ()) -> None:
        self.dev = dev
        self.event_keys = tuple(event_keys) if dev else _check_keys("event", event_keys)
        self.api_keys = tuple(api_keys) if dev else _check_keys("API", api_keys)
        self._by_tag = {_tag(key): key for key in self.api_keys}

    # -- keys --------------------------------------------------------------------------

    def event_key_ok(self, key: str) -> bool:
        return self.dev or _matches(key, self.event_keys)

    def api_key_ok(self, key: str) -> bool:
        return _matches(key, self.api_keys)

    def allows(self, conn: HTTPConnection) -> bool:
        """Whether the request carries a valid API key (bearer or session); always in dev."""
        if self.dev:
            return True
        _, _, token = conn.headers.get("authorization", "").partition(" ")
        if has_bearer(conn):
            return self.api_key_ok(token.strip())
        return self.session_ok(conn.cookies.get(SESSION_COOKIE, ""))

    # -- sessions --------------------------------------------------------------------------

    def issue_session(self, key: str, *, now: float | None = None) -> str | None:
        """A session cookie value for a valid API key, or None."""
        if not self.api_key_ok(key):
            return None
        expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
        payload = f"{expires}.{_tag(key)}"
        return f"{payload}.{self._sign(key, payload)}"

    def session_ok(self, cookie: str, *, now: float | None = None) -> bool:
        expires, _, rest = cookie.partition(".")
        tag, _, signature = rest.partition(".")
        key = self._by_tag.get(tag)
        if key is None or not expires.isdigit():
            return False
        good = hmac.compare_digest(signature.encode(), self._sign(key, f"{expires}.{tag}").encode())
        return good and int(expires) > (now if now is not None else time.time())

    @staticmethod
    def _sign(key: str, payload: str) -> str:
        return hmac.new(key.encode(), b"stride-session\0" + payload.encode(),
                        hashlib.sha256).hexdigest()


def has_bearer(conn: HTTPConnection) -> bool:
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def same_origin(conn: HTTPConnection) -> bool:
    """False for a state-changing request sent by another site's page (CSRF).

    Browsers send `Origin` (or at least `Referer`) with cross-site POSTs; API clients that
    send neither are not browsers and are judged by their key alone.
    """
    if conn.scope.get("method", "GET") not in _UNSAFE:
        return True
    source = conn.headers.get("origin") or conn.headers.get("referer")
    if not source:
        return True
    return urlsplit(source).netloc.lower() == conn.headers.get("host", "").lower()


def host_allowed(conn: HTTPConnection, hosts: Sequence[str] | None) -> bool:
    """Dev mode answers to local host names only (a guard against DNS rebinding)."""
    if hosts is None:
        return True
    host = conn.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in hosts


def safe_next(target: str | None, base: str) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return base + "/"
    return target
