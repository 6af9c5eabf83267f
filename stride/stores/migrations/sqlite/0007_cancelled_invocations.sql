-- Stride schema, version 7 (SQLite): tell the parent when an invoked run is cancelled.
--
-- A child run (`step.invoke`) publishes `stride/invoke.finished` with its finish, in the
-- same transaction. A cancelled child does not finish through the executor (an API call, a
-- timeout, a cancel-on event or a singleton replaced it), so workers look for cancelled
-- children whose parent has not been told, and publish that event for them. This index
-- holds cancelled invoked runs only: nothing else pays for it.
CREATE INDEX runs_cancelled_invocations ON runs (ended_at)
    WHERE status = 'cancelled' AND event_id LIKE 'invoke:%';
