-- Stride schema, version 1 (SQLite). Times are epoch milliseconds; JSON is stored as TEXT.

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL,
    user        TEXT,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_name ON events (name, received_at);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    status           TEXT NOT NULL,
    available_at     INTEGER NOT NULL,
    rank             INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    ended_at         INTEGER,
    output           TEXT,
    error            TEXT,
    errors           TEXT
);
-- the claim scans due runs in rank order; only runs that can still be claimed are indexed
CREATE INDEX runs_due ON runs (rank) WHERE status IN ('queued', 'sleeping', 'waiting');
-- concurrency counts and lease expiry look only at leased runs
CREATE INDEX runs_leased ON runs (job_id, lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE status = 'running';
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_job ON runs (job_id, id);
CREATE INDEX runs_status ON runs (status, id);

CREATE TABLE steps (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    position   INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL,
    output     TEXT,
    error      TEXT,
    attempts   INTEGER NOT NULL,
    errors     TEXT,
    started_at INTEGER,
    ended_at   INTEGER,
    wake_at    INTEGER,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL,
    info         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
