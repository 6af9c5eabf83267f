"""Porygon's background jobs: the Stride example app.

    stride dev examples.porygon.app:jobs --demo     # watch runs, steps and retries live

Four jobs, each triggered by a typed event:

| event                       | job                    | what it shows                          |
| --------------------------- | ---------------------- | -------------------------------------- |
| `system/health.check`       | `health-check`         | a plain `def` handler, step timing     |
| `context/file.uploaded`     | `process-context-file` | retries, flaky storage, broken uploads |
| `ai/generation.requested`   | `generate-ai-response` | steps reading other jobs' results      |
| `messaging/send.requested`  | `process-message`      | idempotent delivery to the outside     |

`jobs` uses STRIDE_DATABASE_URL (else ./.stride/stride.db); `create_app(database_url=...)`
builds another instance, e.g. for tests. Results go to STRIDE_EXAMPLE_OUTPUT (else
./.stride/summaries).

PORYGON_DATABASE_URL (a PostgreSQL URL) gives `process-message` a messaging database under
row-level security (`messaging_db`); `create_app(messaging=MessagingDatabase(...))` picks
another one. Without it the job needs no database: SQLite has no row-level security to enforce.

    PORYGON_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        stride dev examples.porygon.app:jobs --demo
"""

from typing import TYPE_CHECKING

from examples.porygon.demo import demo
from examples.porygon.jobs_ai import GenerationRequested, generate_ai_response
from examples.porygon.jobs_files import FileUploaded, process_context_file
from examples.porygon.jobs_messaging import SendRequested, message_handler, messaging_from_env
from examples.porygon.jobs_system import HealthCheck, health_check
from stride import JobConfig, Stride

if TYPE_CHECKING:
    from examples.porygon.messaging_db import MessagingDatabase

__all__ = [
    "FileUploaded",
    "GenerationRequested",
    "HealthCheck",
    "SendRequested",
    "create_app",
    "demo",
    "jobs",
]


def create_app(database_url: str | None = None, *,
               messaging: "MessagingDatabase | None" = None) -> Stride:
    """A Porygon app with every event type and job registered, on `database_url`.

    `messaging` defaults to PORYGON_DATABASE_URL's database (none when it is unset).
    """
    messaging = messaging or messaging_from_env()
    app = Stride(app_id="porygon", database_url=database_url)
    app.define_job(JobConfig(id="health-check", name="Health check", retries=1),
                   app.event("system/health.check", HealthCheck), health_check)
    app.define_job(JobConfig(id="process-context-file", name="Process context file",
                             retries=3, concurrency=5),
                   app.event("context/file.uploaded", FileUploaded), process_context_file)
    app.define_job(JobConfig(id="generate-ai-response", name="Generate AI response", retries=3),
                   app.event("ai/generation.requested", GenerationRequested),
                   generate_ai_response)
    app.define_job(JobConfig(id="process-message", name="Process message", retries=3),
                   app.event("messaging/send.requested", SendRequested),
                   message_handler(messaging))
    return app


jobs = create_app()
