-- Stride schema, version 6 (PostgreSQL): flow control (issue 5). Same design as the SQLite
-- migration of the same number; applied with search_path set to the store's schema.
--
-- Nothing here touches the statements every run goes through (claims of plain jobs,
-- checkpoints, finishes): `runs` only gains `reason`, no index and no trigger; what
-- concurrency keys need lives in `run_keys`, one row per live keyed run.

-- why flow control delayed, skipped, merged or cancelled the run
ALTER TABLE runs ADD COLUMN reason text;

-- The concurrency keys of a run of a keyed job (at most two, with their limits). A claim
-- counts the runs holding a key by joining the leased runs (few: at most the workers' total
-- concurrency, by the runs' own partial index) to this table, so nothing here changes when
-- a run is leased or finishes; rows of finished runs are deleted in batches.
-- parked_on   the full key a claim parked the run on; the run's rank is moved past 2**52
--             (stride._flow_decide.PARK), out of the range claims scan, until released
-- parked_rank its rank before, so parked runs come back oldest first
CREATE TABLE run_keys (
    run_id      text PRIMARY KEY,
    ckey        text NOT NULL,
    clim        integer NOT NULL,
    ckey2       text,
    clim2       integer,
    parked_on   text,
    parked_rank bigint
);
-- the parked runs of a key, oldest first (a key's other runs are found by scanning the due
-- runs when it has a backlog: an index on the keys would cost every run an entry on a
-- random page, in and out)
CREATE INDEX run_keys_parked ON run_keys (parked_on, parked_rank) WHERE parked_on IS NOT NULL;

-- One row per limiter and key: throttle and rate limit (at: GCRA tat in epoch us),
-- idempotency (at: when the key may run again), singleton (run_id: the live run),
-- debounce and batch (run_id: the pending run, at: when the burst began, n: events so far).
CREATE TABLE flow_state (
    app_id text NOT NULL,
    job_id text NOT NULL,
    kind   text NOT NULL,
    key    text NOT NULL,
    at     bigint,
    n      integer NOT NULL DEFAULT 0,
    run_id text,
    PRIMARY KEY (app_id, job_id, kind, key)
);

-- The events of a batched run, in arrival order (runs.event_id is the first).
CREATE TABLE run_events (
    run_id   text NOT NULL,
    position integer NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX run_events_event ON run_events (event_id);
