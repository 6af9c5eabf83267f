-- Stride schema, version 1 (PostgreSQL).
-- Applied with search_path set to the store's schema (default "stride"), so names are
-- unqualified here. Times are epoch milliseconds (bigint), as in the SQLite schema. JSON
-- payloads are stored as the text the engine encoded: the database never looks inside them,
-- so text costs less than jsonb (no parse on write, no re-render on read).

CREATE TABLE events (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        text NOT NULL,
    "user"      text,
    ts          bigint NOT NULL,
    received_at bigint NOT NULL
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_name ON events (name, received_at);

CREATE TABLE runs (
    id               text PRIMARY KEY,
    app_id           text NOT NULL,
    job_id           text NOT NULL,
    event_id         text NOT NULL,
    status           text NOT NULL,
    available_at     bigint NOT NULL,
    rank             bigint NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_token      text,
    lease_expires_at bigint,
    created_at       bigint NOT NULL,
    started_at       bigint,
    ended_at         bigint,
    output           text,
    error            text,
    errors           text
);
-- claims scan due runs in rank order: across the unlimited jobs of an app, and per job for
-- jobs with a concurrency limit. Only runs that can still be claimed are indexed.
CREATE INDEX runs_due ON runs (app_id, rank)
    WHERE status IN ('queued', 'sleeping', 'waiting');
CREATE INDEX runs_due_job ON runs (app_id, job_id, rank)
    WHERE status IN ('queued', 'sleeping', 'waiting');
-- leased runs are few (at most the workers' total concurrency): one small partial index
-- serves concurrency counts, heartbeats and lease expiry
CREATE INDEX runs_running ON runs (app_id, job_id) WHERE status = 'running';
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_job ON runs (job_id, id);
CREATE INDEX runs_status ON runs (status, id);
-- pruning deletes finished runs by age
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE steps (
    run_id     text NOT NULL,
    step_id    text NOT NULL,
    position   integer NOT NULL,
    kind       text NOT NULL,
    status     text NOT NULL,
    output     text,
    error      text,
    attempts   integer NOT NULL,
    errors     text,
    started_at bigint,
    ended_at   bigint,
    wake_at    bigint,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE workers (
    id           text PRIMARY KEY,
    app_id       text NOT NULL,
    info         text NOT NULL,
    started_at   bigint NOT NULL,
    heartbeat_at bigint NOT NULL
);
