-- Stride schema, version 8 (SQLite): leased runs found by their concurrency keys.
--
-- A keyed claim counts the leased runs of the keys it meets. Through runs_lease_owner and
-- run_keys it read every leased run of the database, so its cost grew with every slot of
-- every worker (1.9 ms at 200 leased runs, 7.5 ms at 5,000: bench/keyed_claim_scale.py).
-- The runs carry their keys (as run_keys does), and these indexes hold leased runs only,
-- by key: one probe per key the claim meets. A run enters and leaves them with its status.
ALTER TABLE runs ADD COLUMN ckey TEXT;
ALTER TABLE runs ADD COLUMN ckey2 TEXT;
UPDATE runs SET ckey = (SELECT k.ckey FROM run_keys k WHERE k.run_id = runs.id),
                ckey2 = (SELECT k.ckey2 FROM run_keys k WHERE k.run_id = runs.id)
WHERE id IN (SELECT run_id FROM run_keys)
  AND status NOT IN ('completed', 'failed', 'cancelled', 'skipped');
CREATE INDEX runs_leased_ckey ON runs (ckey) WHERE status = 'running' AND ckey IS NOT NULL;
CREATE INDEX runs_leased_ckey2 ON runs (ckey2) WHERE status = 'running' AND ckey2 IS NOT NULL;
