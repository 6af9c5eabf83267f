-- Stride schema, version 6 (SQLite): flow control (issue 5).
--
-- Keys are evaluated at dispatch and stored on the run, so the store enforces every limit
-- with indexed SQL, across all processes:
-- reason       why flow control delayed, skipped, merged or cancelled the run
-- ckey, clim   a concurrency key the run holds while leased, and that key's limit
-- ckey2, clim2 a second one (a job may have two limits)
-- parked_on    the full key a claim parked the run on; a parked run's rank is moved past
--              2**52 (stride._flow_decide.PARK), out of the range claims scan
ALTER TABLE runs ADD COLUMN reason TEXT;
ALTER TABLE runs ADD COLUMN ckey TEXT;
ALTER TABLE runs ADD COLUMN clim INTEGER;
ALTER TABLE runs ADD COLUMN ckey2 TEXT;
ALTER TABLE runs ADD COLUMN clim2 INTEGER;
ALTER TABLE runs ADD COLUMN parked_on TEXT;

-- leased runs per key (few: at most the workers' total concurrency)
CREATE INDEX runs_running_ckey ON runs (ckey) WHERE status = 'running' AND ckey IS NOT NULL;
CREATE INDEX runs_running_ckey2 ON runs (ckey2) WHERE status = 'running' AND ckey2 IS NOT NULL;
-- the queued runs of one key, in rank order: parked at once when the key is found full
CREATE INDEX runs_due_ckey ON runs (ckey, rank)
    WHERE status IN ('queued', 'sleeping', 'waiting') AND ckey IS NOT NULL;
CREATE INDEX runs_due_ckey2 ON runs (ckey2, rank)
    WHERE status IN ('queued', 'sleeping', 'waiting') AND ckey2 IS NOT NULL;
-- the parked runs of one key, oldest first: released one per slot that frees up
CREATE INDEX runs_parked ON runs (parked_on, rank)
    WHERE parked_on IS NOT NULL AND status IN ('queued', 'sleeping', 'waiting');

-- Keys a run let go of (it left 'running', or finished without having run): the next claim
-- releases that many parked runs of the key. Written by a trigger, so every path that
-- changes a run's status (finish, reschedule, release, reclaim, cancel) is covered.
CREATE TABLE flow_freed (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    ckey TEXT NOT NULL,
    lim  INTEGER NOT NULL
);
CREATE TRIGGER runs_flow_freed AFTER UPDATE OF status ON runs
WHEN old.ckey IS NOT NULL AND old.status <> new.status
    AND (old.status = 'running' OR new.status IN ('completed', 'failed', 'cancelled', 'skipped'))
BEGIN
    INSERT INTO flow_freed (ckey, lim) VALUES (old.ckey, old.clim);
    INSERT INTO flow_freed (ckey, lim) SELECT old.ckey2, old.clim2 WHERE old.ckey2 IS NOT NULL;
END;

-- One row per limiter and key: throttle and rate limit (at: GCRA tat in epoch us),
-- idempotency (at: when the key may run again), singleton (run_id: the live run),
-- debounce and batch (run_id: the pending run, at: when the burst began, n: events so far).
CREATE TABLE flow_state (
    app_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    key    TEXT NOT NULL,
    at     INTEGER,
    n      INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    PRIMARY KEY (app_id, job_id, kind, key)
) WITHOUT ROWID;

-- The events of a batched run, in arrival order (runs.event_id is the first).
CREATE TABLE run_events (
    run_id   TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
) WITHOUT ROWID;
CREATE INDEX run_events_event ON run_events (event_id);
