-- Stride schema, version 11 (PostgreSQL): the keyed claim is one call of `claim_keyed`.
--
-- Until now the keyed claim took two round trips: its candidates and their keys' advisory
-- locks, with the leased runs per key read after the locks (a second statement, so its
-- snapshot follows them); the decision in the worker (stride._flow_decide.admit); then the
-- writes. Under load a keyed claim of 100 runs cost 10-12 ms against 5-6 ms for a plain one,
-- on the worker's critical path, and the worker spent a third more CPU per run
-- (bench/keyed_concurrency.py: 0.66-0.76 of the unlimited drain).
--
-- Here the same claim runs in the server, in one call, and decides in one query:
-- 1. candidates: the oldest parked runs of the next keys with parked runs (round robin from
--    `cursor`, up to each key's limit: they waited longest) and the due runs in rank order,
--    locked SKIP LOCKED (concurrent claimers take different runs, and a claim never waits
--    on a row a publish or a finish holds); and their keys' transaction advisory locks,
--    tried, never waited for: a candidate whose key another claimer is deciding on is left
--    for the next claim, so claims of different workers run side by side, never deadlock;
-- 2. the decision, in a query whose snapshot follows those locks (the leased runs of a
--    locked key cannot change under it: only claims lease runs, and a finish, release or
--    reclaim only lowers the count): a candidate is taken if it is among the first
--    (limit - leased) candidates of its key in rank order, and among the first `want` so
--    taken; runs met before that point and held back are parked, and a key met full
--    BACKLOG times has its other due runs parked at once. Claims of jobs with a job-wide
--    limit, and candidates with two keys, are decided one after the other instead
--    (admit_in_order): a run held back by one key takes no slot of the other.
-- The rules are stride._flow_decide's (written again here; the conformance suite runs the
-- same tests on both stores). The commit does not wait for the WAL flush, as the plain
-- claim's: a claim lost in a crash loses its leases, parks and releases together.
--
-- Returns the leased runs as the plain claim does (with their events, and memo if resumed;
-- due sleep steps of resumed runs are completed, as the plain claim does), then one row
-- with a NULL id whose last column is where the next claim's round robin goes on.

-- A keyed claim counts the leased runs of the keys it meets: the runs carry their keys (as
-- run_keys does) so that partial indexes of leased runs by key find them, one probe per key,
-- however many runs other keys hold (through runs_running and run_keys, every leased run
-- of the schema was read: 5 ms at 200 leased runs, 14 ms at 5,000; bench/keyed_claim_scale.py).
-- A run enters and leaves these indexes with its status: no write of its own.
ALTER TABLE runs ADD COLUMN ckey text, ADD COLUMN ckey2 text;
UPDATE runs r SET ckey = k.ckey, ckey2 = k.ckey2 FROM run_keys k
WHERE k.run_id = r.id AND r.status NOT IN ('completed', 'failed', 'cancelled', 'skipped');
CREATE INDEX runs_leased_ckey ON runs (ckey) WHERE status = 'running' AND ckey IS NOT NULL;
CREATE INDEX runs_leased_ckey2 ON runs (ckey2) WHERE status = 'running' AND ckey2 IS NOT NULL;

CREATE OR REPLACE FUNCTION flow_park_reason(key text, lim integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
    -- stride._flow_decide.park_reason: the key as Python's repr() quotes it
    SELECT 'concurrency: waited for key '
        || CASE WHEN strpos(key, '''') > 0 AND strpos(key, '"') = 0
                THEN '"' || replace(key, '\', '\\') || '"'
                ELSE '''' || replace(replace(key, '\', '\\'), '''', '\''') || '''' END
        || ' (limit ' || lim || ')'
$fn$;

CREATE OR REPLACE FUNCTION collect_run_keys(p_since bigint, p_app text) RETURNS void
LANGUAGE sql VOLATILE SET search_path FROM CURRENT
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET jit = off AS $fn$
    -- the run_keys rows of the app's runs that finished since p_since (ms), which a
    -- process deletes every 2 s apart from its claims; the runs found by their end time
    -- alone (OFFSET 0 keeps the other conditions out: without statistics the planner
    -- walked runs_status, every finished run ever, or scanned runs in full)
    DELETE FROM run_keys k USING (SELECT id, app_id, status FROM runs
                                  WHERE ended_at >= p_since OFFSET 0) AS f
    WHERE k.run_id = f.id AND f.app_id = p_app
      AND f.status IN ('completed', 'failed', 'cancelled', 'skipped')
$fn$;

CREATE OR REPLACE FUNCTION admit_in_order(
    ids text[], jobs text[], started bigint[], ranks bigint[], keys text[], lims integer[],
    keys2 text[], lims2 integer[], locked text[], want integer, p_limited text[],
    INOUT job_free integer[], INOUT held_keys text[], INOUT held_counts integer[],
    OUT taken text[], OUT resumed text[], OUT parked_ids text[], OUT parked_keys text[],
    OUT parked_limits integer[], OUT parked_ranks bigint[], OUT held_job boolean)
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    i integer;
    blocked_key text;
    blocked_limit integer;
BEGIN
    -- stride._flow_decide.admit, one candidate after the other (in the given order), over
    -- the candidates whose keys are all `locked`. `held_keys`/`held_counts` (leased runs
    -- per key) and `job_free` (free slots per job of `p_limited`) come back counting the
    -- runs taken.
    taken := '{}'; resumed := '{}'; held_job := false;
    parked_ids := '{}'; parked_keys := '{}'; parked_limits := '{}'; parked_ranks := '{}';
    FOR n IN 1 .. cardinality(ids) LOOP
        EXIT WHEN cardinality(taken) >= want;
        CONTINUE WHEN (keys[n] IS NOT NULL AND keys[n] <> ALL(locked))
                   OR (keys2[n] IS NOT NULL AND keys2[n] <> ALL(locked));
        blocked_key := NULL;
        IF keys[n] IS NOT NULL THEN
            IF coalesce(held_counts[array_position(held_keys, keys[n])], 0) >= lims[n] THEN
                blocked_key := keys[n];
                blocked_limit := lims[n];
            ELSIF keys2[n] IS NOT NULL AND coalesce(
                    held_counts[array_position(held_keys, keys2[n])], 0) >= lims2[n] THEN
                blocked_key := keys2[n];
                blocked_limit := lims2[n];
            END IF;
        END IF;
        IF blocked_key IS NOT NULL THEN
            parked_ids := parked_ids || ids[n];
            parked_keys := parked_keys || blocked_key;
            parked_limits := parked_limits || blocked_limit;
            parked_ranks := parked_ranks || ranks[n];
            CONTINUE;
        END IF;
        i := array_position(p_limited, jobs[n]);
        IF i IS NOT NULL THEN
            IF job_free[i] <= 0 THEN
                held_job := true;
                CONTINUE;
            END IF;
            job_free[i] := job_free[i] - 1;
        END IF;
        FOREACH blocked_key IN ARRAY ARRAY[keys[n], keys2[n]] LOOP
            CONTINUE WHEN blocked_key IS NULL;
            i := array_position(held_keys, blocked_key);
            IF i IS NULL THEN
                held_keys := held_keys || blocked_key;
                held_counts := held_counts || 1;
            ELSE
                held_counts[i] := held_counts[i] + 1;
            END IF;
        END LOOP;
        taken := taken || ids[n];
        IF started[n] IS NOT NULL THEN
            resumed := resumed || ids[n];
        END IF;
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION claim_keyed(
    p_app text, p_jobs text[], p_limited text[], p_caps integer[], p_now bigint,
    p_limit integer, p_worker text, p_token text, p_lease_ms bigint, p_cursor text)
RETURNS TABLE (o_id text, o_job_id text, o_attempt integer, o_errors text,
               o_created_at bigint, o_memo text, o_event_id text, o_event_name text,
               o_event_data text, o_event_user text, o_event_ts bigint, o_cursor text)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- a fresh schema under load has no statistics: keep every query on its indexes (generic
-- plans, made once per connection; no JIT, which the disabled scans would trigger)
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET jit = off SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    park constant bigint := 4503599627370496;  -- stride._flow_decide.PARK (1 << 52)
    horizon constant bigint := p_now + 600000;  -- stride.flow.MAX_PRIORITY_SECONDS
    scan_keys constant integer := 32;
    bulk_scan constant integer := 1000;
    backlog_at constant integer := 3;  -- stride._flow_decide.BACKLOG
    lock_space constant integer := hashtext(current_schema() || '/flow');
    job_free integer[];  -- free slots per job of p_limited
    held_keys text[];  -- leased runs per key (loop path)
    held_counts integer[];
    next_cursor text := '';
    scanned text[];
    locked text[];
    c_ids text[]; c_jobs text[]; c_started bigint[]; c_ranks bigint[]; c_keys text[];
    c_lims integer[]; c_keys2 text[]; c_lims2 integer[]; heads text[];
    taken text[] := '{}';
    pass_taken text[];
    pass_resumed text[];
    stay text[];
    parked_ids text[];
    parked_keys text[];
    parked_limits integer[];
    parked_ranks bigint[];
    backlog_keys text[];
    backlog_limits integer[];
    eligible text[];
    held_job boolean;
    two_keys boolean;
    want integer;
    fetch_n integer;
    due_n integer;
    leased_at bigint;
    locked_set jsonb;  -- the keys this pass locked, as an object (key: true)
    held_map jsonb;  -- leased runs per locked key
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    -- the plain claim's job locks, in the same (name) order: job-wide limits hold for both
    PERFORM pg_advisory_xact_lock(hashtext(current_schema()), hashtext(p_app || '/' || j.job_id))
    FROM unnest(p_limited) WITH ORDINALITY AS j(job_id, n) ORDER BY j.n;
    SELECT coalesce(array_agg(l.cap - (SELECT count(*) FROM runs x WHERE x.status = 'running'
                                       AND x.app_id = p_app AND x.job_id = l.job_id)
                              ORDER BY l.n), '{}')
    INTO job_free FROM unnest(p_limited, p_caps) WITH ORDINALITY AS l(job_id, cap, n);

    FOR pass IN 1 .. 4 LOOP
        want := p_limit - cardinality(taken);
        EXIT WHEN want <= 0;
        SELECT coalesce(array_agg(j), '{}') INTO eligible FROM unnest(p_jobs) AS j
        WHERE coalesce(job_free[array_position(p_limited, j)], 1) > 0;
        EXIT WHEN cardinality(eligible) = 0;
        fetch_n := least(want * 2 + 8, 512);  -- some candidates' keys are full

        -- 1. the candidates, locked, and their keys' locks (heads: first pass only)
        WITH RECURSIVE scan(key) AS (
            (SELECT parked_on FROM run_keys WHERE pass = 1 AND parked_on > p_cursor
             ORDER BY parked_on LIMIT 1)
            UNION ALL
            SELECT (SELECT parked_on FROM run_keys WHERE parked_on > scan.key
                    ORDER BY parked_on LIMIT 1) FROM scan WHERE scan.key IS NOT NULL),
        scanned AS (SELECT key FROM scan WHERE key IS NOT NULL LIMIT scan_keys),
        freed AS (SELECT q.key, coalesce((SELECT CASE WHEN ckey = q.key THEN clim ELSE clim2 END
                                          FROM run_keys WHERE parked_on = q.key LIMIT 1), 1) AS lim
                  FROM scanned q),
        cand_heads AS (
            SELECT x.*, true AS head FROM freed f CROSS JOIN LATERAL (
                SELECT r.id, r.job_id, r.started_at, k.parked_rank AS rank, k.ckey, k.clim,
                       k.ckey2, k.clim2
                FROM (SELECT * FROM run_keys WHERE parked_on = f.key ORDER BY parked_rank
                      OFFSET 0) AS k
                CROSS JOIN LATERAL (SELECT id, job_id, started_at, status, app_id, available_at
                                    FROM runs WHERE id = k.run_id OFFSET 0
                                    FOR UPDATE SKIP LOCKED) AS r
                WHERE r.status IN ('queued', 'sleeping', 'waiting') AND r.app_id = p_app
                  AND r.job_id = ANY(eligible) AND r.available_at <= p_now
                ORDER BY k.parked_rank LIMIT f.lim) AS x),
        cand_due AS (
            SELECT r.id, r.job_id, r.started_at, r.rank, k.ckey, k.clim, k.ckey2, k.clim2,
                   false AS head
            FROM runs r LEFT JOIN run_keys k ON k.run_id = r.id
            WHERE r.status IN ('queued', 'sleeping', 'waiting') AND r.rank <= horizon
              AND r.available_at <= p_now AND r.app_id = p_app AND r.job_id = ANY(eligible)
            ORDER BY r.rank LIMIT fetch_n FOR UPDATE OF r SKIP LOCKED),
        cand AS (SELECT * FROM cand_heads UNION ALL SELECT * FROM cand_due),
        lockable AS (SELECT DISTINCT x.key COLLATE "C" AS key FROM (SELECT ckey FROM cand UNION ALL
                                                 SELECT ckey2 FROM cand UNION ALL
                                                 SELECT key FROM freed) AS x(key)
                     WHERE x.key IS NOT NULL),
        locked_now AS (SELECT key FROM lockable
                       WHERE pg_try_advisory_xact_lock(lock_space, hashtext(key)))
        SELECT (SELECT coalesce(array_agg(key ORDER BY key), '{}') FROM scanned),
               (SELECT coalesce(array_agg(key), '{}') FROM locked_now),
               (SELECT coalesce(jsonb_object_agg(key, true), '{}') FROM locked_now),
               coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.job_id), '{}'),
               coalesce(array_agg(c.started_at), '{}'), coalesce(array_agg(c.rank), '{}'),
               coalesce(array_agg(c.ckey), '{}'), coalesce(array_agg(c.clim), '{}'),
               coalesce(array_agg(c.ckey2), '{}'), coalesce(array_agg(c.clim2), '{}'),
               coalesce(array_agg(c.id) FILTER (WHERE c.head), '{}'),
               count(*) FILTER (WHERE NOT c.head), coalesce(bool_or(c.ckey2 IS NOT NULL), false)
        INTO scanned, locked, locked_set, c_ids, c_jobs, c_started, c_ranks, c_keys, c_lims, c_keys2,
             c_lims2, heads, due_n, two_keys
        FROM cand c;
        IF pass = 1 AND cardinality(scanned) >= scan_keys THEN
            next_cursor := scanned[scan_keys];
        END IF;

        -- 2. the decision, on counts read after those locks
        held_job := false;
        -- the leased runs of the locked keys: an index probe per key (runs_leased_ckey,
        -- runs_leased_ckey2), however many runs other keys hold; as a jsonb object, as
        -- `locked_set`: a candidate's key is a binary search in each
        SELECT coalesce(jsonb_object_agg(h.key, h.n), '{}') INTO held_map
        FROM (SELECT u.key, sum(u.n)::integer AS n FROM (
                  SELECT r.ckey AS key, count(*) AS n FROM runs r
                  WHERE r.status = 'running' AND r.ckey IS NOT NULL AND r.ckey = ANY(locked)
                  GROUP BY r.ckey
                  UNION ALL
                  SELECT r.ckey2, count(*) FROM runs r
                  WHERE r.status = 'running' AND r.ckey2 IS NOT NULL AND r.ckey2 = ANY(locked)
                  GROUP BY r.ckey2) AS u
              GROUP BY u.key) AS h;
        IF cardinality(p_limited) = 0 AND NOT two_keys THEN
            -- a candidate is ok if it is among the first (limit - leased) of its key in rank
            -- order; taken if also among the first `want` ok ones. The aggregates read the
            -- rows of one query in one order, so the parked arrays stay aligned.
            WITH cand AS (
                SELECT * FROM unnest(c_ids, c_ranks, c_started, c_keys, c_lims)
                AS c(id, rank, started_at, key, lim)
                WHERE c.key IS NULL OR locked_set ? c.key),
            counted AS (
                SELECT c.*, row_number() OVER (PARTITION BY c.key COLLATE "C"
                                               ORDER BY c.rank, c.id) AS nth
                FROM cand c),
            decided AS (
                SELECT n.id, n.key, n.lim, n.rank, n.started_at, n.id = ANY(heads) AS head,
                       (n.key IS NULL OR n.nth <= n.lim - coalesce((held_map ->> n.key)::integer,
                                                                   0)) AS ok
                FROM counted n),
            ordered AS (
                SELECT d.*, sum(d.ok::integer) OVER (ORDER BY d.rank, d.id
                                                     ROWS UNBOUNDED PRECEDING) AS n_ok
                FROM decided d)
            SELECT coalesce(array_agg(o.id) FILTER (WHERE o.ok AND o.n_ok <= want), '{}'),
                   coalesce(array_agg(o.id) FILTER (WHERE o.ok AND o.n_ok <= want
                                                    AND o.started_at IS NOT NULL), '{}'),
                   coalesce(array_agg(o.id) FILTER (WHERE NOT o.ok AND o.head), '{}'),
                   coalesce(array_agg(o.id) FILTER (WHERE NOT o.ok AND NOT o.head
                                                    AND o.n_ok < want), '{}'),
                   coalesce(array_agg(o.key) FILTER (WHERE NOT o.ok AND NOT o.head
                                                     AND o.n_ok < want), '{}'),
                   coalesce(array_agg(o.lim) FILTER (WHERE NOT o.ok AND NOT o.head
                                                     AND o.n_ok < want), '{}'),
                   coalesce(array_agg(o.rank) FILTER (WHERE NOT o.ok AND NOT o.head
                                                      AND o.n_ok < want), '{}')
            INTO pass_taken, pass_resumed, stay, parked_ids, parked_keys, parked_limits,
                 parked_ranks
            FROM ordered o;
        ELSE
            SELECT coalesce(array_agg(h.key), '{}'), coalesce(array_agg(h.value::integer), '{}')
            INTO held_keys, held_counts FROM jsonb_each_text(held_map) AS h;
            SELECT a.taken, a.resumed, a.parked_ids, a.parked_keys, a.parked_limits,
                   a.parked_ranks, a.held_job, a.job_free
            INTO pass_taken, pass_resumed, parked_ids, parked_keys, parked_limits,
                 parked_ranks, held_job, job_free
            FROM admit_in_order(c_ids, c_jobs, c_started, c_ranks, c_keys, c_lims, c_keys2,
                                c_lims2, locked, want, p_limited, job_free, held_keys,
                                held_counts) AS a;
            stay := ARRAY(SELECT h FROM unnest(heads) AS h WHERE h = ANY(parked_ids));
        END IF;

        -- 3. the writes: lease the runs taken and return them with their events (and
        -- memo if resumed; a parked head leaves its key's queue); the heads neither
        -- taken nor held back go back to the due runs (by rank)
        IF cardinality(pass_taken) > 0 THEN
            -- the due sleep steps of resumed runs are completed, as the plain claim does
            IF cardinality(pass_resumed) > 0 THEN
                UPDATE steps SET status = 'completed', ended_at = p_now
                WHERE run_id = ANY(pass_resumed) AND kind = 'sleep' AND status = 'sleeping'
                  AND wake_at <= p_now;
            END IF;
            -- the lease begins now, after the decision: a run of a key starts after the
            -- finish that freed its slot was stamped (the server's clock, never before
            -- the caller's)
            leased_at := greatest(p_now, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
            RETURN QUERY
            WITH leased AS (
                UPDATE runs SET status = 'running', lease_owner = p_worker,
                       lease_token = p_token, lease_expires_at = leased_at + p_lease_ms,
                       started_at = coalesce(started_at, leased_at),
                       rank = CASE WHEN rank >= park THEN rank - park ELSE rank END
                WHERE id = ANY(pass_taken)
                RETURNING id, job_id, event_id, attempt, errors, created_at, rank)
            SELECT l.id, l.job_id, l.attempt, l.errors, l.created_at,
                   CASE WHEN l.id = ANY(pass_resumed) THEN (
                       SELECT json_agg(json_build_array(m.step_id, m.position, m.kind,
                                                        m.status, m.output, m.error,
                                                        m.attempts, m.errors, m.started_at,
                                                        m.ended_at, m.wake_at)
                                       ORDER BY m.position)::text
                       FROM steps m WHERE m.run_id = l.id) END,
                   e.id, e.name, e.data, e."user", e.ts, NULL::text
            FROM leased l JOIN events e ON e.id = l.event_id ORDER BY l.rank;
            taken := taken || pass_taken;
        END IF;
        IF cardinality(heads) > 0 THEN
            WITH back AS (SELECT h AS id FROM unnest(heads) AS h
                          WHERE h <> ALL(stay) AND h <> ALL(pass_taken)),
            unranked AS (UPDATE runs r SET rank = r.rank - park FROM back
                         WHERE r.id = back.id AND r.rank >= park RETURNING 1)
            UPDATE run_keys k SET parked_on = NULL, parked_rank = NULL
            FROM unnest(heads) AS h(id) WHERE k.run_id = h.id AND h.id <> ALL(stay);
        END IF;

        -- park (stride._flow_decide.to_park): every run held back by a full key if they
        -- kept this pass from taking what it wanted; else only those of keys with a
        -- backlog (met BACKLOG times), whose other due runs are parked at once too
        SELECT coalesce(array_agg(f.key), '{}'), coalesce(array_agg(f.lim), '{}')
        INTO backlog_keys, backlog_limits
        FROM (SELECT p.key, max(p.lim) AS lim
              FROM unnest(parked_keys, parked_limits) AS p(key, lim)
              GROUP BY p.key HAVING count(*) >= backlog_at) AS f;
        IF cardinality(parked_ids) > 0 THEN
            WITH p AS (SELECT * FROM unnest(parked_ids, parked_keys, parked_limits,
                                            parked_ranks) AS p(id, key, lim, rank)
                       WHERE cardinality(pass_taken) < want OR p.key = ANY(backlog_keys)),
            moved AS (UPDATE runs r SET rank = r.rank + park,
                             reason = flow_park_reason(p.key, p.lim)
                      FROM p WHERE r.id = p.id AND r.rank < park RETURNING 1)
            UPDATE run_keys k SET parked_on = p.key, parked_rank = p.rank FROM p
            WHERE k.run_id = p.id AND k.parked_on IS DISTINCT FROM p.key;
        END IF;
        IF cardinality(backlog_keys) > 0 THEN
            WITH m AS (
                SELECT d.id, d.rank,
                       CASE WHEN k.ckey = ANY(backlog_keys) THEN k.ckey ELSE k.ckey2 END AS key
                FROM (SELECT id, rank FROM runs
                      WHERE status IN ('queued', 'sleeping', 'waiting') AND rank <= horizon
                        AND available_at <= p_now AND app_id = p_app
                      ORDER BY rank LIMIT bulk_scan) AS d
                JOIN run_keys k ON k.run_id = d.id
                WHERE (k.ckey = ANY(backlog_keys) OR k.ckey2 = ANY(backlog_keys))
                  AND k.parked_on IS NULL OFFSET 0),
            b AS (SELECT m.id, m.rank, m.key FROM m CROSS JOIN LATERAL (
                      SELECT id FROM runs WHERE id = m.id AND rank < park
                        AND status IN ('queued', 'sleeping', 'waiting') OFFSET 0
                      FOR UPDATE SKIP LOCKED) AS r),
            moved AS (UPDATE runs r SET rank = r.rank + park, reason = flow_park_reason(
                             b.key, backlog_limits[array_position(backlog_keys, b.key)])
                      FROM b WHERE r.id = b.id RETURNING 1)
            UPDATE run_keys k SET parked_on = b.key, parked_rank = b.rank FROM b
            WHERE k.run_id = b.id;
        END IF;
        EXIT WHEN due_n < fetch_n OR NOT (cardinality(parked_ids) > 0 OR held_job);
    END LOOP;

    o_id := NULL; o_job_id := NULL; o_attempt := NULL; o_errors := NULL;
    o_created_at := NULL; o_memo := NULL; o_event_id := NULL; o_event_name := NULL;
    o_event_data := NULL; o_event_user := NULL; o_event_ts := NULL;
    o_cursor := next_cursor;
    RETURN NEXT;
END
$fn$;
