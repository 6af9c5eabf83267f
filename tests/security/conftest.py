"""A PostgreSQL table under row-level security, per test, and an ordinary role to query it.

Superusers bypass RLS, so queries run as `stride_rls_app` (LOGIN, no BYPASSRLS). The table's
policy is the template documented in docs/rls.md, read from that file, so docs and code
cannot drift apart. Rows: u1 owns two documents, u2 one.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from stride import _audit
from tests.conftest import POSTGRES_URL

APP_ROLE = "stride_rls_app"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "rls.md"
ROWS = [("u1", "o1", "alpha"), ("u1", "o1", "beta"), ("u2", "o2", "gamma")]


@dataclass(frozen=True, slots=True)
class RlsDatabase:
    schema: str
    table: str
    url: str
    """libpq URL of the ordinary role."""

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def count_sql(self) -> str:
        return f"SELECT count(*) FROM {self.table}"

    @property
    def owners_sql(self) -> str:
        return f"SELECT DISTINCT owner_id FROM {self.table} ORDER BY owner_id"


@pytest.fixture(autouse=True)
def _no_app_left_by_earlier_tests() -> Iterator[None]:
    """Audit records with no recorder go to a registered app (or the last one registered),
    else they are kept. The registry is per process and an xdist worker runs many tests: an
    app an earlier test left alive would take records a test expects to find kept."""
    def forget() -> None:
        with _audit._registry._lock:
            _audit._registry._apps.clear()
            _audit._registry._default = None
    forget()
    yield
    forget()


def policy_template() -> str:
    text = DOCS.read_text()
    match = re.search(r"```sql\n-- stride:policy-template\n(.*?)```", text, re.S)
    assert match, "docs/rls.md lost its policy template"
    return match.group(1)


def _ensure_role(admin: psycopg.Connection[tuple[object, ...]]) -> None:
    # another test process may create it at the same moment
    with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
        admin.execute(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                      f"'{APP_ROLE}') THEN CREATE ROLE {APP_ROLE} LOGIN; END IF; END$$")


@pytest.fixture
def rls_db() -> Iterator[RlsDatabase]:
    schema = f"stride_rls_{uuid.uuid4().hex[:12]}"
    table = f"{schema}.documents"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        _ensure_role(admin)
        admin.execute(f"CREATE SCHEMA {schema}")
        admin.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, owner_id text NOT NULL, "
                      "org_id text NOT NULL, title text NOT NULL)")
        with admin.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (owner_id, org_id, title) VALUES (%s, %s, %s)",
                            ROWS)
        admin.execute(re.sub(r"\bdocuments\b", table, policy_template()))  # type: ignore[arg-type]
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {APP_ROLE}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {APP_ROLE}")
    base = POSTGRES_URL.split("?", 1)[0]
    url = re.sub(r"//[^@/]*@", f"//{APP_ROLE}@", base, count=1)
    try:
        yield RlsDatabase(schema, table, url)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
