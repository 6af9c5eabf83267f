"""Database and web-framework integrations of the security context (`stride.security`).

Database integrations (`sqlalchemy`, `psycopg`) turn the current context into
transaction-local PostgreSQL settings (`set_config(name, value, true)`) that the app's
row-level security policies read; web integrations (`starlette`, `django`) set the actor of
each request. This module holds what the database integrations share: which settings to
write, their values for a context, and the strict-mode check.

The one SQL statement here is not Stride's storage but the app's own session set-up, so it
lives with the integrations rather than in `stride.stores`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stride.errors import ConfigurationError
from stride.security import MissingSecurityContext, SecurityContext, current_security_context

DEFAULT_USER_SETTING = "app.user_id"
DEFAULT_BYPASS_SETTING = "app.rls_bypass"
DEFAULT_TAG_SETTING = "app.rls_tag"
DEFAULT_USER_KEY = "id"
STRICT_ENV = "STRIDE_RLS_STRICT"
BYPASS_ON = "on"
BYPASS_OFF = "off"
# Custom PostgreSQL settings need a dotted name ("prefix.name"), which set_config checks.
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$")
# One constant statement for any number of settings (prepared-statement friendly), with the
# placeholders of psycopg ("%s") and of drivers that number them (asyncpg: "$1").
SET_CONFIG_SQL = ("SELECT set_config(n, v, true) "
                  "FROM unnest(%s::text[], %s::text[]) AS s(n, v)")
SET_CONFIG_SQL_NUMBERED = ("SELECT set_config(n, v, true) "
                           "FROM unnest($1::text[], $2::text[]) AS s(n, v)")


@dataclass(frozen=True, slots=True)
class RlsSettings:
    """Which PostgreSQL settings carry the security context, and which actor field is the user.

    `user_id` gets `actor[user_key]` (empty when there is no actor), `bypass` gets "on" inside
    `with_rls_bypass` and "off" otherwise, `tag` the bypass tag. `extra` maps more actor
    fields to settings, e.g. `{"org_id": "app.org_id"}` for tenant policies.

    Example:
        install_rls(engine, settings=RlsSettings(extra={"org_id": "app.org_id"}))
    """

    user_id: str = DEFAULT_USER_SETTING
    bypass: str = DEFAULT_BYPASS_SETTING
    tag: str = DEFAULT_TAG_SETTING
    user_key: str = DEFAULT_USER_KEY
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [self.user_id, self.bypass, self.tag, *self.extra.values()]
        for name in names:
            if not isinstance(name, str) or not _SETTING_NAME.match(name):
                raise ConfigurationError(
                    f"RLS setting name {name!r} is not a custom PostgreSQL setting; use a "
                    "dotted name such as 'app.user_id'")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"RLS setting names must differ, got {names}")
        if not self.user_key:
            raise ConfigurationError("RlsSettings.user_key must name the actor's id field")

    def values(self, ctx: SecurityContext) -> list[tuple[str, str]]:
        """The (setting, value) pairs that put `ctx` in force for one transaction."""
        actor = ctx.actor or {}
        pairs = [(self.user_id, _text(actor.get(self.user_key))),
                 (self.bypass, BYPASS_ON if ctx.bypass else BYPASS_OFF),
                 (self.tag, ctx.tag or "")]
        pairs.extend((setting, _text(actor.get(key))) for key, setting in self.extra.items())
        return pairs


DEFAULT_SETTINGS = RlsSettings()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def set_config_params(settings: RlsSettings, ctx: SecurityContext
                      ) -> tuple[list[str], list[str]]:
    """The parameters of `SET_CONFIG_SQL` that put `ctx` in force: names, then values."""
    pairs = settings.values(ctx)
    return [name for name, _ in pairs], [value for _, value in pairs]


def strict_default() -> bool:
    """Strict mode when `install_rls(strict=None)`: the STRIDE_RLS_STRICT environment variable
    ("1"/"true"/"on" or "0"/"false"/"off"), off when unset. `stride dev` turns it on."""
    raw = os.environ.get(STRICT_ENV, "").strip().lower()
    if raw in ("", "0", "false", "off", "no"):
        return False
    if raw in ("1", "true", "on", "yes"):
        return True
    raise ConfigurationError(f"{STRICT_ENV}={raw!r} is not a boolean; use 1 or 0")


def check_strict(strict: bool | None, ctx: SecurityContext | None = None) -> SecurityContext:
    """Raise `MissingSecurityContext` for database access inside a job with no actor and no
    bypass when strict mode is on; return the current context otherwise."""
    ctx = ctx or current_security_context()
    if ctx.kind == "none" and ctx.run_id is not None and (
            strict if strict is not None else strict_default()):
        raise MissingSecurityContext(
            f"database access in {ctx.where()} has no security context: under row-level "
            "security it would see no rows. Run it as the dispatching user with "
            "`with ctx.as_actor():` (or `with with_actor(ctx.event.user):`), or as system "
            "with `with with_rls_bypass('why'):` (audited)")
    return ctx
