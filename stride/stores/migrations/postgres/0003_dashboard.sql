-- Stride schema, version 3 (PostgreSQL): indexes for the dashboard and the HTTP API.
-- Applied with search_path set to the store's schema, so names are unqualified.
-- The runs list filtered by job and status, newest first, with a cursor on id; also the
-- per-job, per-status counts of /metrics as an index-only scan.
CREATE INDEX runs_job_status ON runs (job_id, status, id);
