"""The web dashboard: server-rendered pages (Jinja2, autoescaped) and their form actions.

Every page works without JavaScript; `static/app.js` adds live updates of the runs list,
local times and bulk selection. Forms post to this server only (checked by Origin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from stride.errors import InvalidEventError, RunNotFound, StoreError
from stride.server import charts, views
from stride.server.api import event_items
from stride.server.auth import SESSION_COOKIE, SESSION_SECONDS, safe_next, same_origin
from stride.server.jobstats import job_charts
from stride.server.models import MAX_BULK, EventQuery, RunFilterBody, RunQuery
from stride.server.queries import event_page, health_report, load_run, matching_runs, run_page
from stride.server.routing import NotFound
from stride.server.state import ServerState

Page = Callable[[Request, ServerState], Awaitable[Response]]
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1),
           "7d": timedelta(days=7)}
NOTICES = {"cancelled": "Run cancelled.", "not-cancelled": "The run had already finished.",
           "replayed": "Replay started: this is the new run.", "bulk": "Bulk action done.",
           "sent": "Event sent."}
RUN_FILTERS = ("status", "job", "event_id", "q", "window")


MAX_FORM_BYTES = 1024 * 1024


class Form:
    """An urlencoded form (the only kind these pages send); no multipart dependency."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, [default])[0]

    def getlist(self, name: str) -> list[str]:
        return self.fields.get(name, [])


async def read_form(request: Request) -> Form:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    text = bytes(body[:MAX_FORM_BYTES]).decode("utf-8", errors="replace")
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=MAX_BULK + 100))


def base_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, state: ServerState, template: str, status: int = 200,
           **context: Any) -> Response:
    common = {"base": base_path(request), "dev": state.dev, "app_id": state.app.app_id,
              "secured": not state.dev,
              "notice": NOTICES.get(request.query_params.get("done", ""))}
    return state.templates.TemplateResponse(request, template, {**common, **context},
                                            status_code=status)


def redirect(request: Request, path: str, **params: str) -> RedirectResponse:
    query = f"?{urlencode(params)}" if params else ""
    return RedirectResponse(base_path(request) + path + query, status_code=303)


def guarded(state: ServerState, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """Auth (else the login form, 401), same-origin forms, and errors as pages."""

    async def endpoint(request: Request) -> Response:
        if not state.auth.allows(request):
            return render(request, state, "login.html", 401, next=request.url.path)
        if not same_origin(request):
            return render(request, state, "error.html", 403,
                          message="This form was sent from another site and was refused.")
        try:
            return await page(request, state)
        except (NotFound, RunNotFound) as exc:
            return render(request, state, "error.html", 404, message=str(exc))
        except StoreError as exc:
            return render(request, state, "error.html", 503,
                          message=f"The store did not answer: {str(exc).splitlines()[0]}")

    return endpoint


# -- runs ------------------------------------------------------------------------------------------


def run_query(request: Request) -> RunQuery:
    params = dict(request.query_params)
    window = WINDOWS.get(params.pop("window", ""))
    if window is not None:
        params["since"] = str((views.now_ms() - int(window.total_seconds() * 1000)) // 1000)
    return RunQuery.model_validate({k: v for k, v in params.items() if v != ""})


async def runs_page(request: Request, state: ServerState) -> Response:
    filters = {name: request.query_params.get(name, "") for name in RUN_FILTERS}
    try:
        query = run_query(request)
    except ValidationError as exc:
        return render(request, state, "runs.html", 400, page=None, filters=filters,
                      error=exc.errors()[0]["msg"], jobs=sorted(state.app.jobs))
    page = await run_page(await state.app.store(), query)
    template = "_run_rows.html" if request.query_params.get("fragment") == "rows" else "runs.html"
    chosen = {k: v for k, v in filters.items() if v}
    live = urlencode({k: v for k, v in chosen.items() if k != "window"})
    return render(request, state, template, page=page, filters=filters, error=None,
                  jobs=sorted(state.app.jobs), live=live and "?" + live,
                  current=urlencode(chosen),
                  older=urlencode({**chosen, "cursor": page.next_cursor or ""}),
                  first_page=query.cursor is None)


async def run_detail_page(request: Request, state: ServerState) -> Response:
    run = await load_run(await state.app.store(), str(request.path_params["id"]))
    return render(request, state, "run.html", run=run,
                  timeline=charts.timeline(run, views.now_ms()))


async def cancel_action(request: Request, state: ServerState) -> Response:
    run_id = str(request.path_params["id"])
    done = await state.app.cancel(run_id, reason="cancelled from the dashboard", by="dashboard")
    return redirect(request, f"/runs/{run_id}", done="cancelled" if done else "not-cancelled")


async def replay_action(request: Request, state: ServerState) -> Response:
    new_id = await state.app.replay(str(request.path_params["id"]))
    return redirect(request, f"/runs/{new_id}", done="replayed")


async def bulk_action(request: Request, state: ServerState) -> Response:
    form = await read_form(request)
    ids = form.getlist("ids")[:MAX_BULK]
    body = RunFilterBody(ids=ids or [], reason="cancelled from the dashboard")
    rows = await matching_runs(await state.app.store(), body)
    if form.get("action") == "replay":
        for row in rows:
            await state.app.replay(row.id)
    else:
        for row in rows:
            await state.app.cancel(row.id, reason=body.reason, by="dashboard")
    back = {name: form.get(name) for name in RUN_FILTERS if form.get(name)}
    return redirect(request, "/", **back, done="bulk")


# -- events, jobs, health, send ------------------------------------------------------------------


async def events_page(request: Request, state: ServerState) -> Response:
    try:
        query = EventQuery.model_validate(
            {k: v for k, v in request.query_params.items() if v != ""})
    except ValidationError as exc:
        raise NotFound(exc.errors()[0]["msg"]) from None
    page = await event_page(state.app, await state.app.store(), query)
    return render(request, state, "events.html", page=page, name=query.name or "")


async def event_detail_page(request: Request, state: ServerState) -> Response:
    store = await state.app.store()
    event = await store.get_event(str(request.path_params["id"]))
    if event is None:
        raise NotFound(f"no event with id {request.path_params['id']!r}")
    item = views.event_with_runs(state.app, event, await store.runs_for_events([event.id]))
    return render(request, state, "event.html", event=item)


async def jobs_page(request: Request, state: ServerState) -> Response:
    store = await state.app.store()
    jobs = sorted(state.app.jobs.values(), key=lambda job: job.id)
    described = [views.job_out(job.describe()) for job in jobs]
    return render(request, state, "jobs.html", jobs=described,
                  charts=await job_charts(store, [job.id for job in described]))


async def health_page(request: Request, state: ServerState) -> Response:
    report = await health_report(state.app.store, state.app.database_url.partition(":")[0])
    return render(request, state, "health.html", 503 if report.status == "unavailable" else 200,
                  report=report)


def _example_event(state: ServerState) -> str:
    names = [trigger["event"] for job in sorted(state.app.jobs.values(), key=lambda job: job.id)
             for trigger in job.describe()["triggers"] if trigger.get("event")]
    event: dict[str, Any] = {"name": names[0] if names else "demo/hello", "data": {}}
    return orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()


async def send_page(request: Request, state: ServerState) -> Response:
    if not state.dev:
        raise NotFound("sending test events is for dev mode (stride dev)")
    if request.method == "GET":
        return render(request, state, "send.html", text=_example_event(state), error=None)
    text = (await read_form(request)).get("event")
    try:
        ids = await state.app.dispatch_many(event_items(_parse(text)))
    except InvalidEventError as exc:
        return render(request, state, "send.html", 400, text=text, error=str(exc))
    return redirect(request, f"/events/{ids[0]}", done="sent") if ids else redirect(request, "/")


def _parse(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"the text is not valid JSON: {exc}") from None


# -- login ---------------------------------------------------------------------------------


async def login(request: Request, state: ServerState) -> Response:
    if request.method == "GET":
        return render(request, state, "login.html", next=request.query_params.get("next", ""))
    form = await read_form(request)
    target = safe_next(form.get("next"), base_path(request))
    cookie = state.auth.issue_session(form.get("key"))
    if cookie is None or not same_origin(request):
        return render(request, state, "login.html", 401, next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https",
                        path=base_path(request) or "/")
    return response


async def logout(request: Request, state: ServerState) -> Response:
    response = redirect(request, "/login")
    response.delete_cookie(SESSION_COOKIE, path=base_path(request) or "/")
    return response


def _open(state: ServerState, page: Page) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await page(request, state)

    return endpoint


def routes(state: ServerState) -> list[Route]:
    def page(path: str, handler: Page, methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, guarded(state, handler), methods=list(methods))

    return [
        page("/", runs_page),
        page("/runs/bulk", bulk_action, ("POST",)),
        page("/runs/{id}", run_detail_page),
        page("/runs/{id}/cancel", cancel_action, ("POST",)),
        page("/runs/{id}/replay", replay_action, ("POST",)),
        page("/events", events_page),
        page("/events/{id}", event_detail_page),
        page("/jobs", jobs_page),
        page("/health", health_page),
        page("/send", send_page, ("GET", "POST")),
        Route("/login", _open(state, login), methods=["GET", "POST"]),
        Route("/logout", _open(state, logout), methods=["POST"]),
    ]
