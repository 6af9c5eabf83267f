-- Tell the parent when an invoked run is cancelled: see the SQLite migration 0007 of the
-- same name. The index holds cancelled invoked runs only: nothing else pays for it.
CREATE INDEX runs_cancelled_invocations ON runs (ended_at)
    WHERE status = 'cancelled' AND event_id LIKE 'invoke:%';
