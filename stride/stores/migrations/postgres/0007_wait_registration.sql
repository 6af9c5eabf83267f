-- Stride schema, version 7 (PostgreSQL): registering waits in two short transactions.
-- Applied with search_path set to the store's schema; the functions keep it.
--
-- A registration used to hold the exclusive advisory lock of its event name for its whole
-- transaction, commit (a WAL flush) included, so registrations and publishes of one busy
-- name queued behind each other. Now `suspend_waits` registers without any lock and
-- commits; then `settle_waits`, its own transaction, takes the lock and looks for the events
-- that may have been missed: those received since a new wait's step started, and those
-- recorded while the run was running. A publish holds the lock shared from before it looks
-- waits up until it commits, so once `settle_waits` holds it, every publish that could have
-- missed the registration has committed and its events are visible; every later publish
-- sees the registration. The lock is held for a few index lookups, and a commit that writes
-- nothing unless such an event was found.

-- Register `pending` waits ([[step_id, position, kind, attempts, started_at, expires_at, event_name,
-- match_path, match_value, if_expr], ...]) and give the run back as 'waiting'. NULL if the
-- lease is not `token` any more; else the step ids registered for the first time (JSON).
CREATE FUNCTION suspend_waits(run text, token text, pending jsonb, due bigint)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $fn$
DECLARE
    fresh text;
BEGIN
    PERFORM 1 FROM runs WHERE id = run AND lease_token = token AND status = 'running'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(json_agg(x->>0), '[]')::text INTO fresh
    FROM jsonb_array_elements(pending) AS x
    WHERE NOT EXISTS (SELECT 1 FROM waits w WHERE w.run_id = run AND w.step_id = x->>0);
    INSERT INTO steps (run_id, step_id, position, kind, status, attempts, started_at, wake_at)
    SELECT run, x->>0, (x->>1)::int, x->>2, 'waiting', (x->>3)::int, (x->>4)::bigint,
           (x->>5)::bigint
    FROM jsonb_array_elements(pending) AS x
    ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'waiting', wake_at = excluded.wake_at
    WHERE steps.status <> 'completed';
    INSERT INTO waits (run_id, step_id, kind, event_name, match_path, match_value, if_expr,
                       started_at, expires_at)
    SELECT run, x->>0, 'event', x->>6, x->>7, x->>8, x->>9, (x->>4)::bigint, (x->>5)::bigint
    FROM jsonb_array_elements(pending) AS x
    ON CONFLICT (run_id, step_id) DO NOTHING;
    INSERT INTO wait_paths (event_name, match_path)
    SELECT DISTINCT x->>6, x->>7 FROM jsonb_array_elements(pending) AS x
    ON CONFLICT DO NOTHING;
    UPDATE runs SET status = 'waiting', available_at = due, rank = due, lease_owner = NULL,
                    lease_token = NULL, lease_expires_at = NULL
    WHERE id = run;
    RETURN fresh;
END
$fn$;

-- After `suspend_waits` committed: the events its waits (`step_ids`) may have missed count
-- as if they came now. A wait without if_ completes with the first; one with if_ keeps them
-- (wait_hits) for the executor; either way the run is due at once. Returns whether it woke
-- the run. `fresh`: the waits registered for the first time, whose events since their step
-- started are looked for (the others' were recorded by the publishes, as wait_hits).
CREATE FUNCTION settle_waits(run text, step_ids text[], fresh text[], now_ms bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $fn$
DECLARE
    open_wait record;
    hit record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '/wait/' || n.name))
    FROM (SELECT DISTINCT event_name AS name FROM waits
          WHERE run_id = run AND step_id = ANY(step_ids) ORDER BY 1) AS n;

    INSERT INTO wait_hits (run_id, step_id, event_id)
    SELECT f.run_id, f.step_id, e.id FROM waits f
    JOIN events e ON e.name = f.event_name AND e.received_at >= f.started_at
                 AND e.received_at <= least(now_ms, f.expires_at)
    WHERE f.run_id = run AND f.step_id = ANY(fresh)
      AND event_key(e.data, e."user", f.match_path) = f.match_value
    ON CONFLICT DO NOTHING;

    -- usually nothing was missed: then this transaction writes nothing and its commit
    -- waits for no WAL flush, so the lock is held for a few index lookups only
    IF NOT EXISTS (SELECT 1 FROM wait_hits WHERE run_id = run AND step_id = ANY(step_ids)) THEN
        RETURN false;
    END IF;
    UPDATE runs SET status = 'queued', available_at = now_ms, rank = now_ms
    WHERE id = run AND status = 'waiting';
    IF NOT FOUND THEN  -- woken (or finished) meanwhile: the executor sees the hits on resume
        RETURN false;
    END IF;
    PERFORM pg_notify(current_schema(), '');
    FOR open_wait IN SELECT * FROM waits WHERE run_id = run AND step_id = ANY(step_ids)
                     ORDER BY step_id LOOP
        SELECT e.id, e.name, e.data, e."user" AS usr, e.ts INTO hit
        FROM wait_hits h JOIN events e ON e.id = h.event_id
        WHERE h.run_id = run AND h.step_id = open_wait.step_id
          AND e.received_at <= open_wait.expires_at
        ORDER BY e.received_at, e.id LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        IF open_wait.if_expr IS NULL THEN
            UPDATE steps SET status = 'completed', ended_at = now_ms,
                   output = json_build_object('id', hit.id, 'name', hit.name,
                                              'data', hit.data::json, 'user', hit.usr::json,
                                              'ts', hit.ts)::text
            WHERE run_id = run AND step_id = open_wait.step_id AND status = 'waiting';
            DELETE FROM waits WHERE run_id = run AND step_id = open_wait.step_id;
            DELETE FROM wait_hits WHERE run_id = run AND step_id = open_wait.step_id;
        END IF;
    END LOOP;
    RETURN true;
END
$fn$;

-- The publish side, as in 0005, but nothing in it can be planned as a scan of all waits:
-- keys are computed once per event and path, then each is one lookup in waits_match (seen
-- before: 330 ms a publish with 2,000 waits), and the clean-up deletes join on the keys.
CREATE OR REPLACE FUNCTION publish_waits(fresh jsonb, extras jsonb, now_ms bigint) RETURNS text
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
    ), keyed AS MATERIALIZED (  -- each event's key at each path waited on for its name
        SELECT ev.*, p.match_path, event_key(ev.data, ev.usr, p.match_path) AS match_value
        FROM ev JOIN wait_paths p ON p.event_name = ev.name
    ), hits AS (  -- one index lookup per key (OFFSET 0: never a scan of all waits)
        SELECT DISTINCT ON (w.run_id, w.step_id) w.run_id, w.step_id, w.kind, w.if_expr,
               w.expires_at, w.status, k.id AS event_id, k.name, k.data, k.usr, k.ts, k.ord
        FROM keyed k
        CROSS JOIN LATERAL (
            SELECT x.run_id, x.step_id, x.kind, x.if_expr, x.expires_at, r.status
            FROM waits x LEFT JOIN runs r ON r.id = x.run_id
            WHERE x.event_name = k.name AND x.match_value = k.match_value
              AND x.match_path = k.match_path
            OFFSET 0) AS w
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
    ), gone_done AS (  -- joins, not OR-ed IN lists (those were planned as a scan of waits)
        DELETE FROM waits w USING done d WHERE w.run_id = d.run_id AND w.step_id = d.step_id
    ), gone_ended AS (  -- `done` and `ended` are disjoint: no row is deleted twice
        DELETE FROM waits w USING ended e WHERE w.run_id = e.run_id
    ), gone_done_hits AS (
        DELETE FROM wait_hits w USING done d
        WHERE w.run_id = d.run_id AND w.step_id = d.step_id
    ), gone_ended_hits AS (
        DELETE FROM wait_hits w USING ended e WHERE w.run_id = e.run_id
    )
    SELECT json_agg(json_build_array(run_id, if_expr, event_id, name))::text INTO checks
    FROM hits
    WHERE kind = 'cancel' AND if_expr IS NOT NULL
      AND status NOT IN ('completed', 'failed', 'cancelled', 'skipped');
    RETURN checks;
END
$fn$;
