-- Stride schema, version 2 (SQLite): the audit trail of RLS bypasses (stride.security).
-- One row per `with_rls_bypass` block. Times are epoch milliseconds; `actor` is JSON text.

CREATE TABLE audit (
    id         TEXT PRIMARY KEY,
    tag        TEXT NOT NULL,
    app_id     TEXT,
    job_id     TEXT,
    run_id     TEXT,
    step_id    TEXT,
    attempt    INTEGER,
    actor      TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('ok', 'error')),
    error      TEXT
);
-- `stride run ID` lists a run's bypasses; `stride audit --tag T` one tag's, newest first
CREATE INDEX audit_run ON audit (run_id, id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_tag ON audit (tag, id);
