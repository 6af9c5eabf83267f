"""Small Stride apps that the acceptance tests run in real `stride worker` processes.

Each module exposes `jobs` (what `stride worker tests.acceptance.apps.<module>:jobs` loads,
with STRIDE_DATABASE_URL naming the database) and `make_app(database_url)`, which the test
process uses to dispatch events and read runs on the same database.
"""
