-- Indexes for the dashboard and the HTTP API (version 3, SQLite).
-- The runs list filtered by job and status, newest first, with a cursor on id; also makes
-- the per-job, per-status counts of /metrics a scan of this index instead of the table.
CREATE INDEX IF NOT EXISTS runs_job_status ON runs (job_id, status, id);
