-- A lost wake-up in `settle_waits` (0007): it looked for missed events received up to
-- `now_ms`, the caller's clock read before `suspend_waits`. A publish that stamped its event
-- a millisecond later, but looked waits up before the registration committed, fell between
-- the two and its run slept until the timeout. Once `settle_waits` holds the lock exclusively
-- every event that could have missed the registration is committed and visible, so the only
-- bound needed is the wait's own expiry. `now_ms` still dates the wake-up.

CREATE OR REPLACE FUNCTION settle_waits(run text, step_ids text[], fresh text[], now_ms bigint)
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
                 AND e.received_at <= f.expires_at
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
