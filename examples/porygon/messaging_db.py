"""Porygon's own messaging data on PostgreSQL, under row-level security (optional).

Set PORYGON_DATABASE_URL (e.g. `postgresql://postgres@127.0.0.1:5432/app`) and the
`process-message` job reads and writes two tables through SQLAlchemy with
`stride.integrations.sqlalchemy.install_rls`, so Stride's security context becomes the
transaction-local settings the policies read:

| table        | who may see a row                                     | policy                 |
| ------------ | ----------------------------------------------------- | ---------------------- |
| `messages`   | its owner (`owner_id = app.user_id`), or a bypass      | docs/rls.md's template |
| `deliveries` | only system code inside `with_rls_bypass` (audited)   | bypass only            |

The URL's user only sets the database up: `setup()` (idempotent, run before first use)
creates the schema, the tables, the policies (FORCE ROW LEVEL SECURITY) and an ordinary
application role if missing, since superusers and BYPASSRLS roles are never subject to RLS.
Every query then runs as that role (`-c role=...` at connection start). Without the variable
the example keeps no messaging data: SQLite has no row-level security to enforce.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, MetaData, Table, Text, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from examples.porygon.jobs_messaging import DATABASE_URL_ENV
from stride.integrations.sqlalchemy import install_rls

DEFAULT_SCHEMA = "porygon"
DEFAULT_ROLE = "porygon_app"
SETUP_LOCK = "porygon-messaging-setup"
"""Advisory lock name: workers starting together must not create the same objects at once."""

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DRIVER = re.compile(r"^postgres(?:ql)?(?:\+psycopg)?://")

MESSAGES_POLICY = """\
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;

CREATE POLICY messages_by_user ON messages
    USING (
        current_setting('app.rls_bypass', true) = 'on'
        OR owner_id = nullif(current_setting('app.user_id', true), '')
    )
    WITH CHECK (
        current_setting('app.rls_bypass', true) = 'on'
        OR owner_id = nullif(current_setting('app.user_id', true), '')
    );
"""
"""docs/rls.md's policy template for `messages` (a test keeps the two identical)."""

DELIVERIES_POLICY = """\
ALTER TABLE deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE deliveries FORCE ROW LEVEL SECURITY;

CREATE POLICY deliveries_system_only ON deliveries
    USING (current_setting('app.rls_bypass', true) = 'on')
    WITH CHECK (current_setting('app.rls_bypass', true) = 'on');
"""

TABLES = """\
CREATE TABLE IF NOT EXISTS messages (
    message_id   text PRIMARY KEY,
    owner_id     text NOT NULL,
    channel      text NOT NULL CHECK (channel IN ('email', 'slack', 'sms')),
    recipient    text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE TABLE IF NOT EXISTS deliveries (
    idempotency_key text PRIMARY KEY,
    message_id      text NOT NULL,
    owner_id        text NOT NULL,
    channel         text NOT NULL,
    delivered_at    timestamptz NOT NULL DEFAULT now()
);
DROP POLICY IF EXISTS messages_by_user ON messages;
DROP POLICY IF EXISTS deliveries_system_only ON deliveries;
"""

metadata = MetaData()
messages = Table(
    "messages", metadata,
    Column("message_id", Text, primary_key=True), Column("owner_id", Text, nullable=False),
    Column("channel", Text, nullable=False), Column("recipient", Text, nullable=False),
    Column("body", Text, nullable=False), Column("created_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)))
deliveries = Table(
    "deliveries", metadata,
    Column("idempotency_key", Text, primary_key=True), Column("message_id", Text),
    Column("owner_id", Text), Column("channel", Text),
    Column("delivered_at", DateTime(timezone=True)))


class StoredMessage(BaseModel):
    """A row of `messages` as its owner sees it."""

    message_id: str
    owner_id: str
    channel: str
    recipient: str
    body: str
    delivered: bool


class MessagingDatabase:
    """The example's messaging tables on PostgreSQL, queried as `role` under RLS.

    Nothing connects until first use. `strict=None` follows STRIDE_RLS_STRICT (`stride dev`
    turns it on): then a query inside a job with neither an actor nor a bypass raises
    `MissingSecurityContext` instead of quietly seeing no rows.

    Example:
        db = MessagingDatabase("postgresql://postgres@127.0.0.1:5432/app")
        async with with_actor({"id": "user-ada"}):
            message = await db.load("m-1")       # None unless user-ada owns m-1
    """

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA, role: str = DEFAULT_ROLE,
                 strict: bool | None = None) -> None:
        if not _DRIVER.match(url):
            raise ValueError(f"{DATABASE_URL_ENV} must be a PostgreSQL URL such as "
                             f"postgresql://user@host:5432/db (SQLite has no row-level "
                             f"security to enforce), got {url!r}")
        for what, name in (("schema", schema), ("role", role)):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"messaging {what} must be a lower-case SQL identifier, "
                                 f"got {name!r}")
        self.url = _DRIVER.sub("postgresql://", url)
        self.schema = schema
        self.role = role
        self.strict = strict
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._setup_lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        """The application engine: every connection runs as `role`, the context applied."""
        if self._engine is None:
            url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
            options = f"-c role={self.role} -c search_path={self.schema}"
            self._engine = create_async_engine(url, connect_args={"options": options})
            install_rls(self._engine, strict=self.strict)
        return self._engine

    async def setup(self) -> None:
        """Create the role, schema, tables and policies where missing (once per instance)."""
        async with self._setup_lock:
            if self._ready:
                return
            async with (await psycopg.AsyncConnection.connect(self.url) as admin,
                        admin.transaction()):
                await _create_objects(admin, self.schema, self.role)
            self._ready = True

    async def save(self, *, message_id: str, owner_id: str, channel: str, recipient: str,
                   body: str) -> None:
        """Store a message under the caller's context (a request's `set_actor`): the policy
        accepts it only for the acting user. A message id already stored is left alone."""
        await self.setup()
        row = {"message_id": message_id, "owner_id": owner_id, "channel": channel,
               "recipient": recipient, "body": body}
        async with self.engine.begin() as conn:
            await conn.execute(insert(messages).values(row).on_conflict_do_nothing())

    async def load(self, message_id: str) -> StoredMessage | None:
        """The message, if the current context may see it (its owner, or a bypass)."""
        await self.setup()
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(messages).where(
                messages.c.message_id == message_id))).mappings().first()
        return None if row is None else _stored(row)

    async def count_visible(self) -> int:
        """How many messages the current context sees."""
        await self.setup()
        async with self.engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(messages))
        return int(count or 0)

    async def record_delivery(self, message: StoredMessage, idempotency_key: str) -> bool:
        """Log the delivery in the system table and mark the message delivered; needs a
        bypass (`deliveries` is system-only). False when this key was already recorded."""
        await self.setup()
        async with self.engine.begin() as conn:
            logged = (await conn.execute(
                insert(deliveries).values(
                    idempotency_key=idempotency_key, message_id=message.message_id,
                    owner_id=message.owner_id, channel=message.channel)
                .on_conflict_do_nothing().returning(deliveries.c.idempotency_key))).first()
            await conn.execute(update(messages).where(
                messages.c.message_id == message.message_id,
                messages.c.delivered_at.is_(None)).values(delivered_at=func.now()))
        return logged is not None

    async def aclose(self) -> None:
        """Close the engine's connections (a later use opens new ones)."""
        if self._engine is not None:
            await self._engine.dispose()


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(message_id=row["message_id"], owner_id=row["owner_id"],
                         channel=row["channel"], recipient=row["recipient"], body=row["body"],
                         delivered=row["delivered_at"] is not None)


async def _create_objects(admin: psycopg.AsyncConnection[Any], schema: str, role: str) -> None:
    """The set-up, in the caller's transaction (DDL in PostgreSQL is transactional)."""
    names = {"schema": sql.Identifier(schema), "role": sql.Identifier(role),
             "role_name": sql.Literal(role)}
    await admin.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SETUP_LOCK,))
    await admin.execute(sql.SQL(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role_name}) "
        "THEN CREATE ROLE {role} NOLOGIN; END IF; END$$").format(**names))
    cursor = await admin.execute(
        "SELECT rolsuper OR rolbypassrls, pg_has_role(current_user, rolname, 'MEMBER') "
        "FROM pg_roles WHERE rolname = %s", (role,))
    bypasses, member = await cursor.fetchone() or (True, False)
    if bypasses:
        raise RuntimeError(f"role {role!r} is a superuser or has BYPASSRLS: row-level "
                           "security would not apply to it; name an ordinary role")
    if not member:  # a CREATEROLE user who is not a superuser must be able to SET ROLE
        await admin.execute(sql.SQL("GRANT {role} TO CURRENT_USER").format(**names))
    await admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**names))
    await admin.execute(sql.SQL("SET LOCAL search_path TO {schema}").format(**names))
    for statement in (TABLES, MESSAGES_POLICY, DELIVERIES_POLICY):
        await admin.execute(statement)
    await admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {schema} TO {role}").format(**names))
    await admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON messages, deliveries TO {role}")
                        .format(**names))
