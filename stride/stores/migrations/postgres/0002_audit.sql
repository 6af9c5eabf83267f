-- Stride schema, version 2 (PostgreSQL): the audit trail of RLS bypasses (stride.security).
-- One row per `with_rls_bypass` block. Times are epoch milliseconds; `actor` is JSON text.
-- Applied with search_path set to the store's schema, so names are unqualified.

CREATE TABLE audit (
    id         text PRIMARY KEY,
    tag        text NOT NULL,
    app_id     text,
    job_id     text,
    run_id     text,
    step_id    text,
    attempt    integer,
    actor      text,
    started_at bigint NOT NULL,
    ended_at   bigint NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'error')),
    error      text
);
-- `stride run ID` lists a run's bypasses; `stride audit --tag T` one tag's, newest first
CREATE INDEX audit_run ON audit (run_id, id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_tag ON audit (tag, id);
