"""A stream of Porygon events for `stride dev examples.porygon.app:jobs --demo`.

`stride dev --demo` calls the `demo(jobs)` coroutine it finds in the APP's module (app.py
re-exports this one) and cancels it on exit. Every document in `documents/` is uploaded in
turn, including the broken ones (`empty`, `corrupt`), so a watcher sees runs complete, fail
and retry; between uploads come questions for contexts that already hold summaries,
messages and health checks. The stream is the same on every run: no randomness.

With PORYGON_DATABASE_URL set, each message is first stored the way a web request would:
as its sender (`set_actor`), so the `messages` table's policy accepts it, and
`process-message` later loads it as that same user.
"""

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

from examples.porygon.documents import CONTEXT_BY_FILE_ID, DEFAULT_CONTEXT_ID, list_file_ids
from examples.porygon.jobs_messaging import messaging_from_env
from stride import Stride, set_actor

INTERVALS = (0.5, 0.8, 1.0, 0.6, 0.9, 0.7)
"""Seconds between events: irregular enough to look like traffic, fixed so it is repeatable."""

QUESTIONS: dict[str, tuple[str, ...]] = {
    "ctx-engineering": ("What caused the indexing backlog and what are the follow-ups?",
                        "Which chunk size gives the best answer quality?"),
    "ctx-product": ("How do teams organise and share documents?",
                    "What are customers asking support about?"),
    "ctx-leadership": ("How did revenue and growth develop this quarter?",
                       "What changes in the pricing proposal?"),
    "ctx-people": ("What should a new engineer do in their first week?",),
}
CHANNELS = ("email", "slack", "sms")
USERS = ("user-ada", "user-grace", "user-linus")
SEND_REQUESTED = "messaging/send.requested"

Outgoing = tuple[str, dict[str, Any], dict[str, Any]]
"""(event name, data, user) ready for `jobs.dispatch`."""


async def demo(jobs: Stride) -> None:
    """Dispatch demo events every 0.5-1 s until cancelled."""
    messaging = messaging_from_env()
    try:
        for (name, data, user), pause in zip(events(), itertools.cycle(INTERVALS),
                                             strict=False):
            if messaging is not None and name == SEND_REQUESTED:
                with set_actor(user):  # as in the sender's web request
                    await messaging.save(owner_id=user["id"], **data)
            await jobs.dispatch(name, data, user=user)
            await asyncio.sleep(pause)
    finally:
        if messaging is not None:
            await messaging.aclose()


def events() -> Iterator[Outgoing]:
    """The endless demo stream: rounds of uploads, with other events woven in."""
    for round_number in itertools.count():
        uploaded: list[str] = []
        for index, file_id in enumerate(list_file_ids()):
            user = USERS[index % len(USERS)]
            context_id = CONTEXT_BY_FILE_ID.get(file_id, DEFAULT_CONTEXT_ID)
            uploaded.append(context_id)
            yield upload(file_id, context_id, user)
            if index % 2 == 1:
                yield extra_event(round_number * 100 + index, uploaded, user)


def upload(file_id: str, context_id: str, user: str) -> Outgoing:
    data = {"file_id": file_id, "context_id": context_id, "uploaded_by_id": user}
    return "context/file.uploaded", data, {"id": user}


def extra_event(number: int, contexts: list[str], user: str) -> Outgoing:
    """A health check, a question or a message, in turn."""
    match number % 3:
        case 1 if any(c != DEFAULT_CONTEXT_ID for c in contexts):
            # the inbox only ever holds the broken uploads: nothing there to ask about
            filed = [c for c in contexts if c != DEFAULT_CONTEXT_ID]
            context_id = filed[number % len(filed)]
            prompts = QUESTIONS[context_id]
            data = {"prompt": prompts[number % len(prompts)], "context_id": context_id,
                    "requested_by_id": user}
            return "ai/generation.requested", data, {"id": user}
        case 0 | 1:  # no filed context to ask about yet: check health instead
            return "system/health.check", {"source": "demo"}, {"id": "probe"}
        case _:
            channel = CHANNELS[number // 3 % len(CHANNELS)]
            data = {"message_id": f"demo-msg-{number}", "channel": channel, "recipient": user,
                    "body": f"Porygon demo notification #{number}: your uploads are processed."}
            return SEND_REQUESTED, data, {"id": user}
