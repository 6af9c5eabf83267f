"""`process-message`: render a message and deliver it exactly once to an outbox file.

Delivery is the step that talks to "the outside world" (a JSONL outbox standing in for a
mail or chat API). A step can run twice if a worker dies between delivering and
checkpointing, so delivery is keyed on `current_idempotency_key()`, which is the same for
every attempt of the step, and an outbox that already holds the key is not written again.
"""

import json
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from examples.porygon.jobs_common import output_dir
from stride import Context, current_idempotency_key

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
