-- Stride schema, version 5 (SQLite): waits for events, cancel-on conditions, run timeouts.
--
-- A row of `waits` is a step waiting for an event (kind 'event': wait_for_event, invoke) or
-- a cancel_on condition of a live run (kind 'cancel'). `match_value` is the key of the
-- value the awaited event must have at `match_path` (see stride._waits.wait_key), '' for
-- any event of that name. A publish looks up the waits of the names it publishes with one
-- indexed query per (name, path); `wait_paths` lists the paths waited on per name.

CREATE TABLE waits (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('event', 'cancel')),
    event_name  TEXT NOT NULL,
    match_path  TEXT NOT NULL,
    match_value TEXT NOT NULL,
    if_expr     TEXT,
    started_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE INDEX waits_match ON waits (event_name, match_value, match_path);

CREATE TABLE wait_paths (
    event_name TEXT NOT NULL,
    match_path TEXT NOT NULL,
    PRIMARY KEY (event_name, match_path)
) WITHOUT ROWID;

-- events that matched a wait whose run was not waiting (it was running or already due), or
-- whose if_ filter only the executor can evaluate: the executor looks at them on resume
CREATE TABLE wait_hits (
    run_id   TEXT NOT NULL,
    step_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, event_id)
) WITHOUT ROWID;

-- the next start/finish timeout check of a run (timeouts=Timeouts(...)), by due time
CREATE TABLE deadlines (
    run_id    TEXT PRIMARY KEY,
    due_at    INTEGER NOT NULL,
    start_ms  INTEGER,
    finish_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX deadlines_due ON deadlines (due_at);
