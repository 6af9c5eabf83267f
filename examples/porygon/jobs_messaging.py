"""`process-message`: render a message and deliver it exactly once to an outbox file.

Delivery is the step that talks to "the outside world" (a JSONL outbox standing in for a
mail or chat API). A step can run twice if a worker dies between delivering and
checkpointing, so delivery is keyed on `current_idempotency_key()`, which is the same for
every attempt of the step, and an outbox that already holds the key is not written again.

With PORYGON_DATABASE_URL set (see `messaging_db`), the message comes from the `messages`
table under row-level security instead of from the event: `load-message` reads it *as the
user who dispatched the event* (`ctx.as_actor()`), so another user's message is invisible
and the run fails rather than sending it. After delivery, `record-delivery` logs it in the
system-only `deliveries` table inside `with_rls_bypass("jobs:process-message", ...)`, which
leaves an audit record. On SQLite there is no row-level security to enforce, and the job
delivers what the event says.
"""

import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from examples.porygon.jobs_common import output_dir
from stride import Context, NonRetriableError, current_idempotency_key, with_rls_bypass

if TYPE_CHECKING:  # imported when configured: the SQLite demo needs no SQLAlchemy
    from examples.porygon.messaging_db import MessagingDatabase, StoredMessage

Channel = Literal["email", "slack", "sms"]
SMS_MAX_CHARS = 160
_OUTBOX_LOCK = threading.Lock()  # steps run in threads; lines must not interleave


class SendRequested(BaseModel):
    """Something asked Porygon to send a message (`messaging/send.requested`)."""

    message_id: str = Field(min_length=1, max_length=128)
    channel: Channel
    recipient: str = Field(min_length=1)
    body: str


class RenderedMessage(BaseModel):
    """The message as the channel will show it."""

    message_id: str
    channel: Channel
    recipient: str
    text: str


class Delivery(BaseModel):
    """What delivery did: `duplicate` means an earlier attempt had already sent it."""

    idempotency_key: str
    duplicate: bool


def outbox_path() -> Path:
    return output_dir() / "outbox.jsonl"


def render(message: SendRequested) -> RenderedMessage:
    """Format the body for its channel (SMS is cut to one text message)."""
    match message.channel:
        case "email":
            text = f"Hello {message.recipient},\n\n{message.body}\n\n-- Porygon"
        case "slack":
            text = f"<@{message.recipient}> {message.body}"
        case "sms":
            text = message.body[:SMS_MAX_CHARS]
    return RenderedMessage(message_id=message.message_id, channel=message.channel,
                           recipient=message.recipient, text=text)


def deliver(message: RenderedMessage) -> Delivery:
    """Append the message to the outbox unless this step's key is already there."""
    key = current_idempotency_key()
    path = outbox_path()
    with _OUTBOX_LOCK:
        if key in _delivered_keys(path):
            return Delivery(idempotency_key=key, duplicate=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"idempotency_key": key, "delivered_at": time.time(), **message.model_dump()}
        with path.open("a", encoding="utf-8") as outbox:
            outbox.write(json.dumps(line, ensure_ascii=False) + "\n")
    return Delivery(idempotency_key=key, duplicate=False)


def _delivered_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as outbox:
        return {json.loads(line)["idempotency_key"] for line in outbox if line.strip()}


async def process_message(ctx: Context[SendRequested]) -> dict[str, Any]:
    """Render, then deliver once."""
    rendered = await ctx.step.run("render", render, ctx.event.data)
    delivery = await ctx.step.run("deliver", deliver, rendered)
    return {"messageId": rendered.message_id, "channel": rendered.channel,
            "duplicate": delivery.duplicate}


Handler = Callable[[Context[SendRequested]], Awaitable[dict[str, Any]]]
BYPASS_TAG = "jobs:process-message"
DATABASE_URL_ENV = "PORYGON_DATABASE_URL"


def messaging_from_env() -> "MessagingDatabase | None":
    """The messaging database PORYGON_DATABASE_URL names, or None when it is unset."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if not url:
        return None
    from examples.porygon.messaging_db import MessagingDatabase

    return MessagingDatabase(url)


def message_handler(db: "MessagingDatabase | None") -> Handler:
    """`process_message` without a messaging database, else the same job reading `db`."""
    if db is None:
        return process_message
    from examples.porygon.messaging_db import StoredMessage  # step results are decoded by it

    async def process_stored_message(ctx: Context[SendRequested]) -> dict[str, Any]:
        """Load as the dispatching user, render, deliver once, record as system (audited)."""
        async def load_as_user() -> StoredMessage:
            async with ctx.as_actor():
                return await load_message(db, ctx.event.data.message_id, ctx.event.user)

        async def record(message: StoredMessage, delivery: Delivery) -> bool:
            async with ctx.as_actor():  # kept inside the bypass: the audit says for whom
                return await with_rls_bypass(BYPASS_TAG, lambda: db.record_delivery(
                    message, delivery.idempotency_key))

        stored = await ctx.step.run("load-message", load_as_user)
        rendered = await ctx.step.run("render", render, as_request(stored))
        delivery = await ctx.step.run("deliver", deliver, rendered)
        await ctx.step.run("record-delivery", record, stored, delivery)
        return {"messageId": rendered.message_id, "channel": rendered.channel,
                "duplicate": delivery.duplicate}

    return process_stored_message


async def load_message(db: "MessagingDatabase", message_id: str,
                       user: dict[str, Any] | None) -> "StoredMessage":
    """The message as the current context sees it; a message it cannot see fails the run."""
    message = await db.load(message_id)
    if message is None:
        raise NonRetriableError(
            f"message {message_id!r} is not visible to user {user!r}: it does not exist or "
            "belongs to another user")
    return message


def as_request(message: "StoredMessage") -> SendRequested:
    return SendRequested.model_validate(message.model_dump(exclude={"owner_id", "delivered"}))
