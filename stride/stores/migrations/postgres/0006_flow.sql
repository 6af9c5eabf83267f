-- Stride schema, version 6 (PostgreSQL): flow control (issue 5). Same design as the SQLite
-- migration of the same number; applied with search_path set to the store's schema.
--
-- reason       why flow control delayed, skipped, merged or cancelled the run
-- ckey, clim   a concurrency key the run holds while leased, and that key's limit
-- ckey2, clim2 a second one (a job may have two limits)
-- parked_on    the full key a claim parked the run on; a parked run's rank is moved past
--              2**52 (stride._flow_decide.PARK), out of the range claims scan
ALTER TABLE runs ADD COLUMN reason text, ADD COLUMN ckey text, ADD COLUMN clim integer,
    ADD COLUMN ckey2 text, ADD COLUMN clim2 integer, ADD COLUMN parked_on text;

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
-- releases that many parked runs of the key, holding the key's advisory lock. A trigger
-- writes them, so every path that changes a run's status is covered; it only appends (no
-- lock, no unique index), so finishing transactions never wait on each other or on claims.
CREATE TABLE flow_freed (
    id   bigserial PRIMARY KEY,
    ckey text NOT NULL,
    lim  integer NOT NULL
);
CREATE FUNCTION runs_flow_freed() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO flow_freed (ckey, lim) VALUES (OLD.ckey, OLD.clim);
    IF OLD.ckey2 IS NOT NULL THEN
        INSERT INTO flow_freed (ckey, lim) VALUES (OLD.ckey2, OLD.clim2);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER runs_flow_freed AFTER UPDATE OF status ON runs FOR EACH ROW
    WHEN (OLD.ckey IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND (OLD.status = 'running'
               OR NEW.status IN ('completed', 'failed', 'cancelled', 'skipped')))
    EXECUTE FUNCTION runs_flow_freed();

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
