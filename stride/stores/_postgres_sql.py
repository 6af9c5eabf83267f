"""Every SQL statement of the PostgreSQL store, with the schema name filled in once.

Names are always schema-qualified (never via search_path), because some statements run on
the application's own connection (transactional dispatch), whose search_path is the app's.
Writes that the group-commit writer merges take the whole batch as ONE parameter, a JSON
array of rows (`rows(...)`): one statement serves any batch size, its text never changes
(prepared once), and encoding is one orjson call instead of psycopg adapting a Python list
per column (which profiling showed as the store's largest client-side cost).
"""

from __future__ import annotations

_DUE = "status IN ('queued', 'sleeping', 'waiting')"
RUN_COLUMNS = (
    "id, app_id, job_id, event_id, status, attempt, created_at, started_at, ended_at, "
    "available_at, output, error, errors, lease_owner, reason"
)
STEP_COLUMNS = (
    "step_id, position, kind, status, output, error, attempts, errors, started_at, ended_at, "
    "wake_at"
)
_LEASE_CLEARED = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"


def rows(*columns: str) -> str:
    """A FROM source for a batch sent as a JSON array of arrays: column i is element i.

    `rows("id text", "at bigint")` reads `[["r1", 5], ["r2", 7]]` as two rows (id, at).
    """
    fields = ", ".join(f"(e->>{i})::{sql_type} AS {name}" for i, (name, sql_type)
                       in enumerate(column.split() for column in columns))
    return f"(SELECT {fields} FROM jsonb_array_elements(%s::jsonb) AS j(e))"


class Statements:
    """The SQL text for one schema. Attributes are plain strings, built at construction."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.schema = schema
        self.publish = _publish(s)
        self.checkpoint = _checkpoint(s)
        # a finished run of a concurrency-limited job frees a slot that workers elsewhere
        # may be waiting for: then (only then) the transaction also notifies
        self.finish = (
            f"WITH done AS (UPDATE {s}.runs r SET status = u.status, output = u.output, "
            "error = u.error, errors = coalesce(u.errors, r.errors), ended_at = %s, "
            f"{_LEASE_CLEARED} FROM "
            + rows("id text", "token text", "status text", "output text", "error text",
                   "errors text") +
            " AS u WHERE r.id = u.id AND r.lease_token = u.token AND r.status = 'running' "
            "RETURNING r.id, r.job_id), "
            "woken AS (SELECT pg_notify(%s, '') FROM done WHERE job_id = ANY(%s::text[]) "
            "LIMIT 1) "
            "SELECT id, (SELECT count(*) FROM woken) FROM done")
        self.reschedule = _reschedule(s)
        self.release = (
            f"UPDATE {s}.runs r SET status = 'queued', available_at = %s, rank = %s, "
            f"{_LEASE_CLEARED} FROM unnest(%s::text[], %s::text[]) AS u(id, token) "
            "WHERE r.id = u.id AND r.lease_token = u.token")
        self.release_claim = (
            f"UPDATE {s}.runs SET status = 'queued', available_at = %s, rank = %s, "
            f"{_LEASE_CLEARED} WHERE lease_token = ANY(%s::text[]) AND status = 'running'")
        self.notify = "SELECT pg_notify(%s, '')"
        self.cancel = (
            f"UPDATE {s}.runs SET status = 'cancelled', error = %s, ended_at = %s, "
            f"{_LEASE_CLEARED} WHERE id = ANY(%s::text[]) AND "
            "status NOT IN ('completed', 'failed', 'cancelled', 'skipped') RETURNING id")
        self.create_runs = (
            f"INSERT INTO {s}.runs (id, app_id, job_id, event_id, status, available_at, rank, "
            "created_at) SELECT r.id, r.app_id, r.job_id, r.event_id, 'queued', r.at, r.at, %s "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[]) "
            "AS r(id, app_id, job_id, event_id, at)")
        self.lock_jobs = (
            "SELECT pg_advisory_xact_lock(hashtext(%s::text), "
            "hashtext(%s::text || '/' || j.job_id)) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS j(job_id, n) ORDER BY j.n")
        self.claim_unlimited = _claim(s, limited=False)
        self.claim_limited = _claim(s, limited=True)
        self.heartbeat = (
            f"WITH held AS (SELECT id FROM {s}.runs WHERE lease_owner = %(worker)s AND "
            "status = 'running' FOR NO KEY UPDATE SKIP LOCKED), "
            f"extended AS (UPDATE {s}.runs r SET lease_expires_at = %(expires)s FROM held "
            "WHERE r.id = held.id RETURNING 1), "
            f"seen AS (INSERT INTO {s}.workers (id, app_id, info, started_at, heartbeat_at) "
            "VALUES (%(worker)s, %(app)s, %(info)s, %(now)s, %(now)s) ON CONFLICT (id) DO "
            "UPDATE SET heartbeat_at = excluded.heartbeat_at, info = excluded.info) "
            f"SELECT count(*) FROM {s}.runs WHERE lease_owner = %(worker)s AND "
            "status = 'running'")
        self.reclaim = (
            f"WITH expired AS (SELECT id FROM {s}.runs WHERE status = 'running' AND "
            "lease_expires_at < %(now)s FOR UPDATE SKIP LOCKED), "
            f"requeued AS (UPDATE {s}.runs r SET status = 'queued', {_LEASE_CLEARED}, "
            "available_at = %(now)s, rank = %(now)s, errors = (coalesce(r.errors::jsonb, "
            "'[]'::jsonb) || jsonb_build_array(jsonb_build_object('name', %(lost)s::text, "
            "'message', %(lost_message)s::text, 'steps_done', (SELECT count(*) FROM "
            f"{s}.steps st WHERE st.run_id = r.id AND st.status = 'completed'), "
            "'ended_at', %(now)s::bigint)))::text "
            "FROM expired WHERE r.id = expired.id RETURNING r.id), "
            "woken AS (SELECT pg_notify(%(channel)s, '') FROM requeued LIMIT 1) "
            "SELECT id, (SELECT count(*) FROM woken) FROM requeued")
        self.steps_of = (
            f"SELECT run_id, {STEP_COLUMNS} FROM {s}.steps WHERE run_id = ANY(%s::text[]) "
            "ORDER BY run_id, position")
        self.get_run = f"SELECT {RUN_COLUMNS} FROM {s}.runs WHERE id = %s"
        self.list_runs = f"SELECT {RUN_COLUMNS} FROM {s}.runs {{where}} ORDER BY id DESC LIMIT %s"
        self.get_event = f'SELECT id, name, data, "user", ts FROM {s}.events WHERE id = %s'
        self.prune_runs = (
            f"WITH doomed AS (SELECT id FROM {s}.runs WHERE ended_at < %(cutoff)s AND "
            "status IN ('completed', 'failed', 'cancelled', 'skipped') ORDER BY ended_at "
            "LIMIT %(batch)s FOR UPDATE SKIP LOCKED), "
            f"gone_links AS (DELETE FROM {s}.run_events WHERE run_id IN (SELECT id FROM doomed)), "
            f"gone_keys AS (DELETE FROM {s}.run_keys WHERE run_id IN (SELECT id FROM doomed)), "
            f"gone_steps AS (DELETE FROM {s}.steps WHERE run_id IN (SELECT id FROM doomed)), "
            f"gone_waits AS (DELETE FROM {s}.waits WHERE run_id IN (SELECT id FROM doomed)), "
            f"gone_hits AS (DELETE FROM {s}.wait_hits WHERE run_id IN (SELECT id FROM doomed)), "
            f"gone_deadlines AS (DELETE FROM {s}.deadlines "
            "WHERE run_id IN (SELECT id FROM doomed)) "
            f"DELETE FROM {s}.runs WHERE id IN (SELECT id FROM doomed)")
        self.prune_events = (
            f"DELETE FROM {s}.events WHERE id IN (SELECT e.id FROM {s}.events e WHERE "
            f"e.received_at < %(cutoff)s AND NOT EXISTS (SELECT 1 FROM {s}.runs r "
            f"WHERE r.event_id = e.id) AND NOT EXISTS (SELECT 1 FROM {s}.run_events b "
            "WHERE b.event_id = e.id) ORDER BY e.received_at LIMIT %(batch)s "
            "FOR UPDATE SKIP LOCKED)")


def _publish(s: str) -> str:
    # Events that already exist are skipped (ON CONFLICT DO NOTHING) and only the runs of
    # the events this statement inserted are created (with the concurrency keys of keyed
    # runs): dedupe and insert in one round trip.
    # It notifies the workers itself (at commit: NOTIFY is transactional), so it is one
    # statement also on the application's connection (transactional dispatch).
    events = rows("id text", "name text", "data text", "usr text", "ts bigint")
    runs = rows("id text", "app_id text", "job_id text", "event_id text", "at bigint",
                "rank bigint", "ckey text", "ckey2 text")
    keys = rows("id text", "ckey text", "clim int", "ckey2 text", "clim2 int")
    # The stored events then go to publish_waits (migration 0005), which stores the new
    # runs' cancel-on conditions and timeouts and completes the waits the events match,
    # after taking its locks in a statement of its own (no lost wake-up).
    return (
        f"WITH batch AS {events}, "
        f"fresh AS (INSERT INTO {s}.events (id, name, data, \"user\", ts, received_at) "
        "SELECT e.id, e.name, e.data, e.usr, e.ts, %s FROM batch AS e "
        "ON CONFLICT (id) DO NOTHING RETURNING id), "
        f"created AS (INSERT INTO {s}.runs (id, app_id, job_id, event_id, status, "
        "available_at, rank, created_at, ckey, ckey2) SELECT r.id, r.app_id, r.job_id, "
        f"r.event_id, 'queued', r.at, r.rank, %s, r.ckey, r.ckey2 FROM {runs} AS r "
        "WHERE r.event_id IN (SELECT id FROM fresh) RETURNING id), "
        f"keyed AS (INSERT INTO {s}.run_keys (run_id, ckey, clim, ckey2, clim2) "
        f"SELECT k.id, k.ckey, k.clim, k.ckey2, k.clim2 FROM {keys} AS k "
        "WHERE k.id IN (SELECT id FROM created)), "
        "woken AS (SELECT pg_notify(%s, '') FROM fresh LIMIT 1), "
        f"matched AS (SELECT {s}.publish_waits((SELECT jsonb_agg(jsonb_build_array("
        "b.id, b.name, b.data, b.usr, b.ts)) FROM batch b JOIN fresh f ON f.id = b.id), "
        "%s::jsonb, %s) AS checks) "
        "SELECT id, (SELECT count(*) FROM woken), (SELECT checks FROM matched) FROM fresh")


def _checkpoint(s: str) -> str:
    # FOR SHARE on the run makes the lease check hold until commit: a reclaim that moves the
    # lease waits for this transaction (or this one sees the new token and writes nothing).
    # A completed step is never overwritten; the worker learns it through a missing row.
    # Rewriting it with the very same outcome is accepted, though: that is the writer
    # retrying a transaction whose COMMIT landed just before the connection dropped.
    steps = rows("run_id text", "token text", "step_id text", "position int", "kind text",
                 "status text", "output text", "error text", "attempts int", "errors text",
                 "started_at bigint", "ended_at bigint", "wake_at bigint")
    return (
        f"INSERT INTO {s}.steps (run_id, step_id, position, kind, status, output, error, "
        "attempts, errors, started_at, ended_at, wake_at) "
        "SELECT u.run_id, u.step_id, u.position, u.kind, u.status, u.output, u.error, "
        f"u.attempts, u.errors, u.started_at, u.ended_at, u.wake_at FROM {steps} AS u, "
        f"(SELECT id, lease_token FROM {s}.runs WHERE id = ANY(%s::text[]) AND "
        "status = 'running' FOR SHARE) AS r "
        "WHERE r.id = u.run_id AND r.lease_token = u.token "
        "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, "
        "output = excluded.output, error = excluded.error, attempts = excluded.attempts, "
        "errors = excluded.errors, ended_at = excluded.ended_at, wake_at = excluded.wake_at "
        f"WHERE {s}.steps.status <> 'completed' OR (excluded.status = 'completed' AND "
        f"excluded.output IS NOT DISTINCT FROM {s}.steps.output AND "
        f"excluded.attempts = {s}.steps.attempts) RETURNING run_id, step_id")


def _reschedule(s: str) -> str:
    # A run may carry one step record (a fresh sleep's): it is written by the same statement,
    # only for the runs whose lease the UPDATE matched, so group commit cannot split the two
    # and a lost lease writes neither. A completed step is never overwritten (as checkpoint).
    batch = rows("id text", "token text", "status text", "at bigint", "attempt int",
                 "errors text", "step_id text", "position int", "kind text",
                 "step_status text", "output text", "error text", "attempts int",
                 "step_errors text", "started_at bigint", "ended_at bigint", "wake_at bigint")
    return (
        f"WITH u AS {batch}, "
        f"done AS (UPDATE {s}.runs r SET status = u.status, available_at = u.at, "
        f"rank = u.at, {_LEASE_CLEARED}, attempt = coalesce(u.attempt, r.attempt), "
        "errors = coalesce(u.errors, r.errors) FROM u "
        "WHERE r.id = u.id AND r.lease_token = u.token RETURNING r.id), "
        f"stepped AS (INSERT INTO {s}.steps (run_id, step_id, position, kind, status, output, "
        "error, attempts, errors, started_at, ended_at, wake_at) "
        "SELECT u.id, u.step_id, u.position, u.kind, u.step_status, u.output, u.error, "
        "u.attempts, u.step_errors, u.started_at, u.ended_at, u.wake_at "
        "FROM u JOIN done ON done.id = u.id WHERE u.step_id IS NOT NULL "
        "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, "
        "output = excluded.output, error = excluded.error, attempts = excluded.attempts, "
        "errors = excluded.errors, ended_at = excluded.ended_at, wake_at = excluded.wake_at "
        f"WHERE {s}.steps.status <> 'completed') "
        "SELECT id FROM done")


def _claim(s: str, *, limited: bool) -> str:
    # One statement: pick due runs in rank order (SKIP LOCKED, so concurrent claimers take
    # different runs), lease them, and return them with their events (and memo). Its commit
    # does not wait for the WAL flush (set_config ... local): a claim lost in a crash only
    # loses the lease, which every later write checks. Jobs with a
    # concurrency limit each get their own pick, capped by their free capacity, so a job at
    # its limit cannot crowd the others out of the batch (no starvation). The caller holds
    # the advisory locks of those jobs, so the running counts cannot change under it.
    # rank <= horizon: the index scan stops before runs that sleep or wait for later (their
    # rank is their wake-up time; a priority moves a due run's rank by at most the horizon)
    due = (f"{_DUE} AND rank <= %(horizon)s AND available_at <= %(now)s "
           "AND app_id = %(app)s")
    unlimited = (f"SELECT * FROM (SELECT id, rank, started_at FROM {s}.runs WHERE {due} "
                 "AND job_id = ANY(%(jobs)s::text[]) ORDER BY rank LIMIT %(limit)s "
                 "FOR UPDATE SKIP LOCKED) AS a")
    capped = (
        f"SELECT c.* FROM (SELECT l.job_id, l.cap - (SELECT count(*) FROM {s}.runs x "
        "WHERE x.status = 'running' AND x.app_id = %(app)s AND x.job_id = l.job_id) AS free "
        "FROM unnest(%(limited)s::text[], %(caps)s::int[]) AS l(job_id, cap)) AS f "
        f"CROSS JOIN LATERAL (SELECT id, rank, started_at FROM {s}.runs WHERE {due} "
        "AND job_id = f.job_id ORDER BY rank LIMIT greatest(least(f.free, %(limit)s), 0) "
        "FOR UPDATE SKIP LOCKED) AS c")
    candidates = f"{unlimited} UNION ALL {capped}" if limited else unlimited
    return (
        f"WITH candidates AS ({candidates}), "
        "picked AS (SELECT id, rank, started_at FROM candidates ORDER BY rank "
        "LIMIT %(limit)s), "
        f"leased AS (UPDATE {s}.runs r SET status = 'running', lease_owner = %(worker)s, "
        "lease_token = %(token)s, lease_expires_at = %(expires)s, "
        "started_at = coalesce(r.started_at, %(now)s) FROM picked WHERE r.id = picked.id "
        "RETURNING r.id, r.job_id, r.event_id, r.attempt, r.errors, r.created_at, "
        "picked.rank, picked.started_at IS NOT NULL AS resumed), "
        f"{_SLEPT.format(s=s)}"
        "SELECT l.id, l.job_id, l.attempt, l.errors, l.created_at, "
        f"CASE WHEN l.resumed THEN {_memo_json(s)} END, "
        f'e.id, e.name, e.data, e."user", e.ts FROM leased l JOIN {s}.events e '
        "ON e.id = l.event_id CROSS JOIN (SELECT set_config('synchronous_commit', 'off', "
        "true)) AS lease_only ORDER BY l.rank")


# The sleep steps of resuming runs whose wake-up time has passed are completed by the claim
# itself (same rule as the executor's `RunExecution.sleep_until`): the replay finds them
# done, instead of each resumed sleeper paying one more write (a checkpoint) before it goes
# on. The memo is read from the statement's snapshot, which does not show this update, so
# `_memo_json` reports those steps completed by the same test.
_SLEEP_OVER = "m.kind = 'sleep' AND m.status = 'sleeping' AND m.wake_at <= %(now)s"
_SLEPT = (
    "slept AS (UPDATE {s}.steps m SET status = 'completed', ended_at = %(now)s FROM leased l "
    f"WHERE l.resumed AND m.run_id = l.id AND {_SLEEP_OVER}) ")


def _memo_json(s: str) -> str:
    # A resumed run comes back with its steps (JSON text, one array per step in
    # STEP_COLUMNS order, by position), so a claim is one statement and one round trip.
    over = {"status": f"CASE WHEN {_SLEEP_OVER} THEN 'completed' ELSE m.status END",
            "ended_at": f"CASE WHEN {_SLEEP_OVER} THEN %(now)s ELSE m.ended_at END"}
    columns = ", ".join(over.get(column, f"m.{column}") for column in STEP_COLUMNS.split(", "))
    return (f"(SELECT json_agg(json_build_array({columns}) ORDER BY m.position)::text "
            f"FROM {s}.steps m WHERE m.run_id = l.id)")
