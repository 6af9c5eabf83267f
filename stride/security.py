"""The security context of running code: whose data it may see, for database row-level security.

Web requests run as a user; background jobs run with no session at all, so a query under
PostgreSQL row-level security silently returns nothing. Stride carries who is acting in a
context variable, which database integrations (`stride.integrations.sqlalchemy`,
`stride.integrations.psycopg`) turn into transaction-local settings that the app's policies read:

- `set_actor(user)` (web requests, set by the middleware): the user who acts; `dispatch()`
  records them on the event as `event.user`.
- `with_actor(ctx.event.user)` (inside a job): run database work as the dispatching user,
  under their policies. The safe default: prefer it to a bypass.
- `with_rls_bypass(tag)`: system-level access to every row, for work that truly spans users.
  Every bypass is recorded for audit (tag, job, run, step, time, outcome).

The innermost scope wins, and leaving a scope restores the outer one. Context variables
follow asyncio tasks and are copied into threads started with `asyncio.to_thread` or
`contextvars.copy_context()`, so concurrent tasks and threads never see each other's context.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from stride._current import current_run, current_step
from stride.errors import ConfigurationError, StrideError

__all__ = [
    "ActorScope",
    "MissingSecurityContext",
    "RlsBypass",
    "SecurityContext",
    "current_actor",
    "current_security_context",
    "scope_marker",
    "set_actor",
    "with_actor",
    "with_rls_bypass",
]

P = ParamSpec("P")
T = TypeVar("T")
Kind = Literal["system", "user", "none"]
MAX_TAG_LENGTH = 200


class MissingSecurityContext(StrideError):
    """Database work inside a job ran with neither an actor nor an RLS bypass.

    Under row-level security such a query would silently see no rows. Run it as the user who
    dispatched the event (`with ctx.as_actor():` / `with with_actor(ctx.event.user):`), or,
    for work that must see every user's rows, inside `with with_rls_bypass("tag"):`.
    Raised in strict mode only (`install_rls(engine, strict=True)`, `stride dev`).
    """


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """Who the current code acts as, and where it runs (job, run and step, inside a job).

    `kind` is "system" inside `with_rls_bypass` (then `tag` names the bypass), "user" when an
    actor is set, and "none" otherwise. `actor` is kept inside a bypass: it says on whose
    behalf the system-level work runs.

    Example:
        with with_rls_bypass("jobs:reindex"):
            assert current_security_context().kind == "system"
    """

    kind: Kind
    tag: str | None = None
    actor: Mapping[str, Any] | None = None
    app_id: str | None = None
    job_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    attempt: int | None = None

    @property
    def bypass(self) -> bool:
        """True inside `with_rls_bypass`: policies should let every row through."""
        return self.kind == "system"

    def where(self) -> str:
        """The job, run and step this runs in, for messages ("outside a job" otherwise)."""
        if self.run_id is None:
            return "outside a job"
        step = f"step {self.step_id!r}" if self.step_id else "outside any step"
        return f"job {self.job_id!r}, run {self.run_id}, {step}"

    def __str__(self) -> str:
        who = f"system, tag={self.tag}" if self.kind == "system" else self.kind
        if self.kind == "user" and self.actor is not None:
            who = f"user {dict(self.actor)!r}"
        return f"{who} ({self.where()})"


@dataclass(slots=True, eq=False)
class _State:
    """One entered scope. Immutable in use; `token` is filled right after it is set."""

    actor: Mapping[str, Any] | None
    tag: str | None
    owner: object
    started_at: int = 0
    audit_id: str = ""
    token: Token[_State | None] | None = field(default=None, repr=False)


_state: ContextVar[_State | None] = ContextVar("stride_security", default=None)


def current_security_context() -> SecurityContext:
    """The security context of the calling code (task or thread).

    Example:
        ctx = current_security_context()
        if ctx.kind == "none": ...
    """
    return _context_of(_state.get())


def current_actor() -> dict[str, Any] | None:
    """The actor set by `set_actor`/`with_actor` (kept inside a bypass), or None.

    `Stride.dispatch` uses it when called without `user=`, so events dispatched while
    handling a request carry the requesting user.
    """
    state = _state.get()
    return dict(state.actor) if state is not None and state.actor is not None else None


def scope_marker() -> object | None:
    """An object that changes whenever the security context may have changed (the innermost
    scope entered), or None outside every scope. Integrations compare it per statement to
    know whether the settings applied to the open transaction are still the right ones."""
    return _state.get()


def _context_of(state: _State | None) -> SecurityContext:
    run = current_run.get()
    step = current_step.get()
    where: dict[str, Any] = {}
    if run is not None:
        where = {"app_id": run.app_id, "job_id": run.job_id, "run_id": run.run_id}
    if step is not None:
        where.update(step_id=step.step_id, attempt=step.attempt)
    if state is None:
        return SecurityContext("none", **where)
    if state.tag is not None:
        return SecurityContext("system", state.tag, state.actor, **where)
    kind: Kind = "user" if state.actor is not None else "none"
    return SecurityContext(kind, None, state.actor, **where)


def _frozen_actor(actor: Mapping[str, Any] | None, what: str) -> Mapping[str, Any] | None:
    if actor is None:
        return None
    if not isinstance(actor, Mapping):
        raise ConfigurationError(
            f"{what} takes the actor as a dict such as {{'id': 'user-1'}}, got {actor!r}")
    return dict(actor)


class _Scope:
    """Enter sets the context variable, exit resets it. One object may be entered by many
    tasks or threads at once (a decorator, a module-level scope): each entry keeps its own
    token in the state it set, never on this shared object."""

    def _new_state(self, outer: _State | None) -> _State:
        raise NotImplementedError

    def _enter(self) -> _State:
        state = self._new_state(_state.get())
        state.token = _state.set(state)
        return state

    def _leave(self) -> _State:
        state = _state.get()
        if state is None or state.owner is not self or state.token is None:
            raise StrideError(
                "security scopes must be left in the reverse order they were entered, in "
                "the task or thread that entered them; use them as `with` blocks")
        _state.reset(state.token)
        return state

    def __enter__(self) -> SecurityContext:
        return _context_of(self._enter())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._leave()

    async def __aenter__(self) -> SecurityContext:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class ActorScope(_Scope):
    """Returned by `with_actor`: a `with`/`async with` block that acts as one user."""

    def __init__(self, actor: Mapping[str, Any]) -> None:
        self.actor = actor

    def _new_state(self, outer: _State | None) -> _State:
        return _State(self.actor, None, self)


def with_actor(actor: Mapping[str, Any] | None) -> ActorScope:
    """Act as `actor` for the block: integrated database sessions run under their policies.

    Inside a job, pass the user who dispatched the event: raises `MissingSecurityContext` if
    the event has none (it was dispatched without `user=` and outside a request with an actor).

    Example:
        async with with_actor(ctx.event.user):
            rows = await session.scalars(select(Document))
    """
    frozen = _frozen_actor(actor, "with_actor")
    if frozen is None:
        where = current_security_context().where()
        raise MissingSecurityContext(
            f"with_actor(None) ({where}): there is no user to act as; the event was "
            "dispatched without user= and outside a request that set an actor. Dispatch with "
            "user=..., or use with_rls_bypass('tag') for work that must see every user's rows")
    return ActorScope(frozen)


class set_actor(_Scope):  # lower case: called like a function, and also a `with` block
    """Record who is acting in the current request; `dispatch()` puts them on the event.

    Takes effect at the call: as a `with` block it ends with the block; as a bare call it lasts
    until the current task (or thread context) ends. In threaded servers a thread serves
    many requests, so prefer the block there (the Django and Starlette middlewares do).
    `None` means anonymous.

    Example:
        with set_actor({"id": request.user.id, "org_id": request.user.org_id}):
            await jobs.dispatch("context/file.uploaded", {"file_id": file_id})
    """

    def __init__(self, actor: Mapping[str, Any] | None) -> None:
        self.actor = _frozen_actor(actor, "set_actor")
        self._state = self._enter()

    def _new_state(self, outer: _State | None) -> _State:
        return _State(self.actor, None, self)

    def __enter__(self) -> SecurityContext:
        return _context_of(self._state)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        current = _state.get()
        if current is not self._state or self._state.token is None:
            raise StrideError("set_actor blocks must be left in the order they were entered")
        _state.reset(self._state.token)


class RlsBypass(_Scope):
    """Returned by `with_rls_bypass(tag)`: a `with`/`async with` block, or a decorator.

    Every entry is recorded for audit when it ends (tag, app, job, run, step, start and end
    times, and the outcome: "ok", or "error" with the exception's name).
    """

    def __init__(self, tag: str) -> None:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_LENGTH:
            raise ConfigurationError(
                f"with_rls_bypass needs a tag that says why (1-{MAX_TAG_LENGTH} characters, "
                f"e.g. 'jobs:process-message'), got {tag!r}")
        self.tag = tag

    def _new_state(self, outer: _State | None) -> _State:
        from stride import _audit

        return _State(outer.actor if outer else None, self.tag, self, _audit.now_ms(),
                      _audit.new_record_id())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from stride import _audit

        state = self._leave()
        _audit.record(_audit.bypass_record(state, _context_of(state), exc))

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        from stride import _audit

        state = self._leave()
        await _audit.record_async(_audit.bypass_record(state, _context_of(state), exc))

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a function (sync or async) so every call runs under this bypass."""
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with self:
                return fn(*args, **kwargs)

        return run


@overload
def with_rls_bypass(tag: str) -> RlsBypass: ...


@overload
def with_rls_bypass(tag: str, fn: Callable[[], Awaitable[T]]) -> Coroutine[Any, Any, T]: ...


@overload
def with_rls_bypass(tag: str, fn: Callable[[], T]) -> Coroutine[Any, Any, T]: ...


def with_rls_bypass(tag: str, fn: Callable[[], Any] | None = None) -> Any:
    """Run with system-level access to every row (RLS bypass), recorded for audit under `tag`.

    Use it for work that must span users (maintenance, cross-tenant reports); for work done
    on behalf of one user prefer `with_actor(ctx.event.user)`. Three forms:

    Example:
        with with_rls_bypass("jobs:reindex"):          # or `async with`
            ...

        @with_rls_bypass("jobs:nightly-report")         # sync or async function
        async def build_report() -> None: ...

        result = await with_rls_bypass("jobs:process-message", process)   # fn() or await fn()
    """
    scope = RlsBypass(tag)
    if fn is None:
        return scope
    if not callable(fn):
        raise ConfigurationError(f"with_rls_bypass({tag!r}, fn): fn must be callable, got {fn!r}")
    return _call_under(scope, fn)


async def _call_under(scope: RlsBypass, fn: Callable[[], Any]) -> Any:
    async with scope:
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        return result
