-- Stride schema, version 5 (PostgreSQL): waits for events, cancel-on conditions, timeouts.
-- Applied with search_path set to the store's schema, so names are unqualified; the
-- functions keep that search_path (SET search_path FROM CURRENT), because publishes also
-- run on the application's own connection (transactional dispatch).
--
-- A row of `waits` is a step waiting for an event (kind 'event': wait_for_event, invoke) or
-- a cancel_on condition of a live run (kind 'cancel'). `match_value` is the key of the value
-- the awaited event must have at `match_path` (stride._waits.wait_key), '' for any event of
-- that name. A publish finds the waits of its events with one indexed lookup per
-- (event, path waited on for its name); `wait_paths` lists those paths.

CREATE TABLE waits (
    run_id      text NOT NULL,
    step_id     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('event', 'cancel')),
    event_name  text NOT NULL,
    match_path  text NOT NULL,
    match_value text NOT NULL,
    if_expr     text,
    started_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX waits_match ON waits (event_name, match_value, match_path);

CREATE TABLE wait_paths (
    event_name text NOT NULL,
    match_path text NOT NULL,
    PRIMARY KEY (event_name, match_path)
);

-- events that matched a wait whose run was not waiting (running, or already due), or whose
-- if_ filter only the executor can evaluate: the executor looks at them when it resumes
CREATE TABLE wait_hits (
    run_id   text NOT NULL,
    step_id  text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (run_id, step_id, event_id)
);

-- the next start/finish timeout check of a run (timeouts=Timeouts(...)), by due time
CREATE TABLE deadlines (
    run_id    text PRIMARY KEY,
    due_at    bigint NOT NULL,
    start_ms  bigint,
    finish_ms bigint
);
CREATE INDEX deadlines_due ON deadlines (due_at);

-- The match key of an event (JSON text of its data and user) at a path such as
-- 'data.user_id': 's:' strings, 'n:' numbers, 'b:' booleans, NULL for anything else;
-- '' for no path. The same keys as stride._waits.wait_key. No table is named, so the
-- function works whatever the caller's search_path.
CREATE FUNCTION event_key(data text, usr text, path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN path = '' THEN '' ELSE (
        SELECT CASE jsonb_typeof(v) WHEN 'string' THEN 's:' || (v #>> '{}')
                                    WHEN 'number' THEN 'n:' || (v #>> '{}')
                                    WHEN 'boolean' THEN 'b:' || (v #>> '{}') END
        FROM (SELECT (CASE WHEN split_part(path, '.', 1) = 'data' THEN data ELSE usr END)::jsonb
                     #> string_to_array(substr(path, 6), '.') AS v) AS x) END
$$;

-- The part of a publish about waits, called from the publish statement with the events it
-- stored (`fresh`: [[id, name, data, user, ts], ...]) and the new runs' extras
-- ([[cancel conditions], [deadlines]]). Returns the cancel-on conditions with an if_ filter
-- that matched (JSON [[run_id, if_expr, event_id, event_name], ...]) for the caller to
-- evaluate, or NULL.
--
-- No lost wake-up: a wait registration takes an exclusive advisory lock per event name
-- (stores/_postgres_waits.py), this takes the same locks shared, in name order. The lock is
-- its own statement, so the lookup after it runs on a snapshot taken once the lock is held
-- (plpgsql takes a new snapshot per statement under READ COMMITTED): it sees every
-- registration that committed before, and a registration that comes later sees the events.
CREATE FUNCTION publish_waits(fresh jsonb, extras jsonb, now_ms bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $fn$
DECLARE
    checks text;
BEGIN
    IF jsonb_array_length(extras->0) > 0 THEN
        INSERT INTO waits (run_id, step_id, kind, event_name, match_path, match_value, if_expr,
                           started_at, expires_at)
        SELECT c->>0, c->>1, 'cancel', c->>2, c->>3, c->>4, c->>5, now_ms, 253402300799000
        FROM jsonb_array_elements(extras->0) AS c
        WHERE c->>6 IN (SELECT e->>0 FROM jsonb_array_elements(fresh) AS e)
        ON CONFLICT DO NOTHING;
        INSERT INTO wait_paths (event_name, match_path)
        SELECT DISTINCT c->>2, c->>3 FROM jsonb_array_elements(extras->0) AS c
        ON CONFLICT DO NOTHING;
    END IF;
    IF jsonb_array_length(extras->1) > 0 THEN
        INSERT INTO deadlines (run_id, due_at, start_ms, finish_ms)
        SELECT d->>0, (d->>1)::bigint, (d->>2)::bigint, (d->>3)::bigint
        FROM jsonb_array_elements(extras->1) AS d
        WHERE d->>4 IN (SELECT e->>0 FROM jsonb_array_elements(fresh) AS e)
        ON CONFLICT DO NOTHING;
    END IF;

    PERFORM pg_advisory_xact_lock_shared(hashtext(current_schema() || '/wait/' || n.name))
    FROM (SELECT DISTINCT e->>1 AS name FROM jsonb_array_elements(fresh) AS e ORDER BY 1) AS n;

    WITH ev AS (
        SELECT e->>0 AS id, e->>1 AS name, e->>2 AS data, e->>3 AS usr, (e->>4)::bigint AS ts,
               x.n AS ord
        FROM jsonb_array_elements(fresh) WITH ORDINALITY AS x(e, n)
    ), keyed AS (
        SELECT ev.*, p.match_path, event_key(ev.data, ev.usr, p.match_path) AS match_value
        FROM ev JOIN wait_paths p ON p.event_name = ev.name
    ), hits AS (
        SELECT DISTINCT ON (w.run_id, w.step_id) w.run_id, w.step_id, w.kind, w.if_expr,
               w.expires_at, r.status, k.id AS event_id, k.name, k.data, k.usr, k.ts, k.ord
        FROM keyed k
        JOIN waits w ON w.event_name = k.name AND w.match_value = k.match_value
                    AND w.match_path = k.match_path
        LEFT JOIN runs r ON r.id = w.run_id
        ORDER BY w.run_id, w.step_id, k.ord
    ), cancels AS (
        SELECT DISTINCT ON (run_id) run_id, event_id, name FROM hits
        WHERE kind = 'cancel' AND if_expr IS NULL
          AND status NOT IN ('completed', 'failed', 'cancelled', 'skipped')
        ORDER BY run_id, ord
    ), cancelled AS (
        UPDATE runs r SET status = 'cancelled', ended_at = now_ms, lease_owner = NULL,
               lease_token = NULL, lease_expires_at = NULL,
               error = json_build_object(
                   'name', 'Cancelled',
                   'message', 'cancelled by event ''' || c.name || ''' (' || c.event_id || ')',
                   'by', 'event ' || c.event_id, 'event', c.name, 'at', now_ms)::text
        FROM cancels c
        WHERE r.id = c.run_id AND r.status NOT IN ('completed', 'failed', 'cancelled', 'skipped')
        RETURNING r.id
    ), live AS (
        SELECT h.* FROM hits h
        WHERE h.kind = 'event' AND h.expires_at >= now_ms
          AND h.status NOT IN ('completed', 'failed', 'cancelled', 'skipped')
          AND h.run_id NOT IN (SELECT run_id FROM cancels)
    ), woken AS (
        UPDATE runs r SET status = 'queued', available_at = now_ms, rank = now_ms
        FROM (SELECT DISTINCT run_id FROM live WHERE status = 'waiting') AS l
        WHERE r.id = l.run_id AND r.status = 'waiting'
        RETURNING r.id
    ), done AS (
        UPDATE steps s SET status = 'completed', ended_at = now_ms,
               output = json_build_object('id', l.event_id, 'name', l.name,
                                          'data', l.data::json, 'user', l.usr::json,
                                          'ts', l.ts)::text
        FROM live l
        WHERE l.if_expr IS NULL AND l.run_id IN (SELECT id FROM woken)
          AND s.run_id = l.run_id AND s.step_id = l.step_id AND s.status = 'waiting'
        RETURNING s.run_id, s.step_id
    ), recorded AS (
        INSERT INTO wait_hits (run_id, step_id, event_id)
        SELECT l.run_id, l.step_id, l.event_id FROM live l
        WHERE NOT (l.if_expr IS NULL AND l.run_id IN (SELECT id FROM woken))
        ON CONFLICT DO NOTHING
    ), ended AS (
        SELECT id AS run_id FROM cancelled
        UNION SELECT run_id FROM hits
        WHERE status IS NULL OR status IN ('completed', 'failed', 'cancelled', 'skipped')
    ), gone AS (
        DELETE FROM waits w
        WHERE (w.run_id, w.step_id) IN (SELECT run_id, step_id FROM done)
           OR w.run_id IN (SELECT run_id FROM ended)
    ), gone_hits AS (
        DELETE FROM wait_hits w
        WHERE (w.run_id, w.step_id) IN (SELECT run_id, step_id FROM done)
           OR w.run_id IN (SELECT run_id FROM ended)
    )
    SELECT json_agg(json_build_array(run_id, if_expr, event_id, name))::text INTO checks
    FROM hits
    WHERE kind = 'cancel' AND if_expr IS NOT NULL
      AND status NOT IN ('completed', 'failed', 'cancelled', 'skipped');
    RETURN checks;
END
$fn$;
