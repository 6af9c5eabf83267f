"""Stride: event-driven, durable background jobs for Python.

Dispatch a named event; every job triggered by it runs in the background as a sequence of
checkpointed steps that survive retries and crashes.
"""

from stride._audit import AuditRecord
from stride._current import current_idempotency_key
from stride.app import JobDecorator, Stride, WorkerHandle
from stride.context import Context, SyncContext
from stride.errors import (
    ConfigurationError,
    DuplicateJobError,
    InvalidEventError,
    LeaseLost,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    RunNotFound,
    SerializationError,
    StepError,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StrideError,
    WaitTimeout,
)
from stride.events import Event, EventType, OutgoingEvent
from stride.flow import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from stride.jobs import (
    Backoff,
    CronTrigger,
    EventTrigger,
    Job,
    JobConfig,
    Timeouts,
    cron,
    on_event,
)
from stride.runs import Run, StepInfo
from stride.security import (
    MissingSecurityContext,
    SecurityContext,
    current_actor,
    current_security_context,
    set_actor,
    with_actor,
    with_rls_bypass,
)
from stride.step import Step, SyncStep

__version__ = "0.1.0"

__all__ = [
    "AuditRecord",
    "Backoff",
    "Batch",
    "Concurrency",
    "ConfigurationError",
    "Context",
    "CronTrigger",
    "Debounce",
    "DuplicateJobError",
    "Event",
    "EventTrigger",
    "EventType",
    "InvalidEventError",
    "Job",
    "JobConfig",
    "JobDecorator",
    "LeaseLost",
    "MissingSecurityContext",
    "NonDeterminismError",
    "NonRetriableError",
    "OutgoingEvent",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Run",
    "RunNotFound",
    "SecurityContext",
    "SerializationError",
    "Singleton",
    "Step",
    "StepError",
    "StepInfo",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "Stride",
    "StrideError",
    "SyncContext",
    "SyncStep",
    "Throttle",
    "Timeouts",
    "WaitTimeout",
    "WorkerHandle",
    "cron",
    "current_actor",
    "current_idempotency_key",
    "current_security_context",
    "on_event",
    "set_actor",
    "with_actor",
    "with_rls_bypass",
]
