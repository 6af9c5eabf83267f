"""Keys, session cookies, cross-site refusal and dev-mode limits."""

from __future__ import annotations

import httpx
import pytest

from stride.errors import ConfigurationError
from stride.server import create_server, serve
from stride.server.api import operations
from stride.server.auth import SESSION_COOKIE, Auth
from tests.server.conftest import API_KEY, BASE_URL, EVENT_KEY, World

API_OPS = [op for op in operations() if op.auth == "api"]


def _path(op_path: str) -> str:
    return op_path.replace("{id}", "some-id")


@pytest.mark.parametrize("op", API_OPS, ids=lambda op: f"{op.method} {op.path}")
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key-wrong-key", "Basic abc",
                                           f"Bearer {API_KEY}x", "Bearer "])
async def test_every_api_route_refuses_missing_or_wrong_keys_without_detail(
        anonymous: httpx.AsyncClient, op: object, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await anonymous.request(op.method, _path(op.path), headers=headers,  # type: ignore[attr-defined]
                                       json={} if op.method == "POST" else None)  # type: ignore[attr-defined]
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/", "/runs/x", "/events", "/jobs", "/health", "/send"])
async def test_dashboard_pages_answer_401_with_the_login_form(anonymous: httpx.AsyncClient,
                                                                path: str) -> None:
    response = await anonymous.get(path)
    assert response.status_code == 401
    assert 'name="key"' in response.text
    assert "runs" not in response.text.lower().split("<main")[1].split("log in")[0]


async def test_logging_in_sets_a_signed_httponly_lax_cookie_that_opens_the_dashboard(
        anonymous: httpx.AsyncClient) -> None:
    wrong = await anonymous.post("/login", data={"key": "nope", "next": "/jobs"})
    assert wrong.status_code == 401
    assert "That key was not accepted." in wrong.text
    assert SESSION_COOKIE not in wrong.cookies

    response = await anonymous.post("/login", data={"key": API_KEY, "next": "/jobs"})
    assert (response.status_code, response.headers["location"]) == (303, "/jobs")
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert API_KEY not in cookie
    assert (await anonymous.get("/jobs")).status_code == 200
    assert (await anonymous.get("/api/v1/jobs")).status_code == 200

    await anonymous.post("/logout")
    assert (await anonymous.get("/jobs")).status_code == 401


async def test_login_never_redirects_to_another_site(anonymous: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = await anonymous.post("/login", data={"key": API_KEY, "next": target})
        assert response.headers["location"] == "/"


def test_a_tampered_or_expired_session_is_refused() -> None:
    auth = Auth(dev=False, event_keys=[EVENT_KEY], api_keys=[API_KEY])
    cookie = auth.issue_session(API_KEY, now=1000.0)
    assert cookie is not None and auth.session_ok(cookie, now=1001.0)
    expires, tag, signature = cookie.split(".")
    assert not auth.session_ok(f"{int(expires) + 999}.{tag}.{signature}", now=1001.0)
    assert not auth.session_ok(f"{expires}.{tag}.{signature[:-1]}0", now=1001.0)
    assert not auth.session_ok(cookie, now=float(expires) + 1)
    assert not auth.session_ok("", now=1001.0)
    other = Auth(dev=False, event_keys=[EVENT_KEY], api_keys=["another-key-another-key"])
    assert not other.session_ok(cookie, now=1001.0), "revoking a key ends its sessions"


async def test_a_cross_site_form_post_with_the_cookie_is_refused(
        anonymous: httpx.AsyncClient, world: World) -> None:
    await anonymous.post("/login", data={"key": API_KEY})
    run_id = world.parked_runs[0]
    evil = await anonymous.post(f"/runs/{run_id}/cancel",
                                headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    api = await anonymous.post(f"/api/v1/runs/{run_id}/cancel",
                               headers={"Origin": "https://evil.example"})
    assert api.status_code == 403
    assert (await world.app.get_run(run_id)).status == "queued"
    same = await anonymous.post(f"/runs/{run_id}/cancel", headers={"Origin": BASE_URL})
    assert same.status_code == 303
    assert (await world.app.get_run(run_id)).status == "cancelled"


def test_the_server_refuses_to_start_without_keys_unless_dev(world: World) -> None:
    with pytest.raises(ConfigurationError, match="at least one event key"):
        create_server(world.app, api_keys=[API_KEY])
    with pytest.raises(ConfigurationError, match="at least one API key"):
        create_server(world.app, event_keys=[EVENT_KEY])
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        create_server(world.app, event_keys=["short"], api_keys=[API_KEY])
    create_server(world.app, dev=True)


async def test_dev_mode_binds_localhost_only(world: World) -> None:
    with pytest.raises(ConfigurationError, match=r"binds 127\.0\.0\.1 only"):
        await serve(world.app, host="0.0.0.0", dev=True)


async def test_dev_mode_answers_local_host_names_only(world: World) -> None:
    server = create_server(world.app, dev=True)
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as other:
        assert (await other.get("/api/v1/jobs")).status_code == 400
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8288") as local:
        assert (await local.get("/api/v1/jobs")).status_code == 200


async def test_serve_http_answers_until_stopped(world: World) -> None:
    import asyncio

    from stride.server import serve_http
    from tests.server.live import free_port

    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_http(world.app, stop=stop, port=port, dev=True))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(100):
            try:
                response = await http.get("/api/v1/jobs")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        assert response.status_code == 200
    stop.set()
    await asyncio.wait_for(task, 10)
