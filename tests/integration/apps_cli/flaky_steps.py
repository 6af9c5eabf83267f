"""A three-step job whose middle step fails twice and then succeeds.

`stride run ID` must show its steps with attempts 1, 3 and 1, and both failures. The
failures depend on the attempt number only, so the test is deterministic; the backoff is a
fixed 50 ms so the retries do not slow the test down.
"""

from typing import Any

from stride import Backoff, Context, Stride

jobs = Stride(app_id="cli-test", backoff=Backoff(initial=0.05, factor=1.0, jitter=0.0))

FAILURES_BEFORE_SUCCESS = 2


class FlakyError(RuntimeError):
    """What the middle step raises on its first attempts."""


def flaky(failed_before: int) -> str:
    if failed_before < FAILURES_BEFORE_SUCCESS:
        raise FlakyError(f"attempt {failed_before + 1} fails on purpose")
    return "third time lucky"


def shout(text: str) -> str:
    return text.upper()


@jobs.define_job(id="three-steps", trigger="test/three-steps", retries=3)
async def three_steps(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
    first = await ctx.step.run("first", shout, str(ctx.event.data.get("word", "hello")))
    second = await ctx.step.run("flaky", flaky, ctx.attempt)
    third = await ctx.step.run("last", shout, second)
    return {"first": first, "second": second, "third": third}
