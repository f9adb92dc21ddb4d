"""Access control (personalive_trt/web/auth.py), tried as a hostile client: no token, a wrong one, the right one
in a header the server does not read, a cookie that is not the server's; the token file and environment; the
refusal to expose the server without a token."""
from __future__ import annotations

import hmac
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from live_server import serving
from personalive_trt.web import auth
from personalive_trt.web.auth import (COOKIE, TOKEN_ENV, AccessControl, ExposureError, TokenGate, check_exposure,
                                        is_loopback, load_token)
from test_serve import make_app, receive_until, start, stream_frames, upload_sample

TOKEN = "s3cret-token-0123456789abcdef"
PROTECTED = ["/", "/static/app.js", "/static/style.css", "/api/sample-reference", "/api/reference/abc.jpg",
             "/api/stream.mjpg?key=abc", "/api/stream.mjpg"]


@pytest.fixture
def client():
    with TestClient(make_app(token=TOKEN), follow_redirects=False) as c:
        yield c


def refused_like_every_other(response) -> None:
    """A refusal reveals nothing: the same status, body and headers whatever was wrong."""
    assert response.status_code == 401 and response.json() == {"error": "unauthorized"}
    assert "set-cookie" not in response.headers and response.headers["cache-control"] == "no-store"


# ------------------------------------------------------------------------------------------ the token itself


def test_the_token_comes_from_the_environment_or_a_file_and_is_checked(tmp_path):
    assert load_token(environ={}) is None
    assert load_token(environ={TOKEN_ENV: TOKEN}) == TOKEN
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(path, environ={}) == TOKEN
    cases = [
        (dict(token_file=path, environ={TOKEN_ENV: TOKEN}), "give one"),
        (dict(token_file=tmp_path / "missing", environ={}), "cannot read it"),
        (dict(environ={TOKEN_ENV: "short"}), "at least 16 characters"),
        (dict(environ={TOKEN_ENV: "has a space inside it!"}), "without spaces"),
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases.append((dict(token_file=empty, environ={}), "at least 16 characters"))
    for kwargs, expected in cases:
        with pytest.raises(ValueError) as refused:
            load_token(**kwargs)
        assert expected in str(refused.value) and "\n" not in str(refused.value), kwargs


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("", False), ("192.168.1.10", False), ("myhost.example", False)])
def test_only_loopback_binds_need_no_token(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(host, token=None, no_auth=False)
        return
    with pytest.raises(ExposureError) as refused:
        check_exposure(host, token=None, no_auth=False)
    message = str(refused.value)
    assert "\n" not in message and TOKEN_ENV in message and "--token-file" in message and "--no-auth" in message
    check_exposure(host, token=TOKEN, no_auth=False)  # a token, or the user saying they mean it, passes
    check_exposure(host, token=None, no_auth=True)


# ------------------------------------------------------------------------------------------ a hostile client


@pytest.mark.parametrize("path", PROTECTED)
def test_without_the_token_every_route_but_health_is_401_and_the_same(client, path):
    bodies = set()
    for headers, params in [({}, {}),  # none
                            ({}, {"token": "wrong-token-0123456789abcdef"}),  # a wrong one
                            ({}, {"token": TOKEN[:-1]}),  # all but its last character
                            ({"authorization": f"Bearer {TOKEN}"}, {}),  # the right one where it is not read
                            ({"x-token": TOKEN}, {}),
                            ({"cookie": f"token={TOKEN}"}, {}),  # a cookie under another name
                            ({"cookie": f"{COOKIE}={TOKEN}"}, {}),  # the token is not the cookie's value
                            ({"cookie": f"{COOKIE}=\"bad; {COOKIE}"}, {})]:  # a cookie header that does not parse
        response = client.get(path, headers=headers, params=params)
        refused_like_every_other(response)
        bodies.add(response.content)
    assert len(bodies) == 1
    refused_like_every_other(client.post("/api/reference", files={"file": ("r.png", b"x", "image/png")}))


def test_the_cookie_is_not_the_token(client):
    cookie = AccessControl(TOKEN).cookie_value
    assert cookie != TOKEN and TOKEN not in cookie
    refused_like_every_other(client.get("/", params={"token": cookie}))  # it cannot be replayed as ?token=


def test_a_websocket_without_the_token_is_refused_at_the_handshake(client):
    for url in ("/api/ws", "/api/ws?token=nope-nope-nope-nope-nope"):
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect(url) as ws:
                ws.receive_json()
        assert refused.value.code == 1008  # a close before accept: a real server answers the handshake 403
    assert client.get("/api/health", params={"token": TOKEN}).json()["counters"]["connections"] == 0


def test_opening_the_page_with_the_token_sets_an_httponly_cookie_and_drops_the_token_from_the_address(client):
    response = client.get("/", params={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={AccessControl(TOKEN).cookie_value};") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    page = client.get("/")  # the client keeps the cookie, as a browser does
    assert page.status_code == 200 and 'id="output"' in page.text
    assert client.get("/static/app.js").status_code == 200
    key = upload_sample(client)  # uploads with the cookie
    with client.websocket_connect("/api/ws") as ws:  # and the WebSocket with it
        assert ws.receive_json()["type"] == "hello"
        started = start(ws, key)
        stream_frames(ws, range(0, 200, 10), pause=0.01)
        receive_until(ws, lambda m: isinstance(m, bytes))
        client.cookies.clear()  # an OBS-style client: no cookie, the token in the query
        stream = client.get(f"{started['mjpeg']}&max_frames=1&timeout=2&token={TOKEN}")
        assert stream.status_code == 200 and stream.content.startswith(b"--frame\r\n")
        refused_like_every_other(client.get(f"{started['mjpeg']}&max_frames=1&timeout=2"))


def test_health_tells_a_caller_without_the_token_counts_only(client):
    public = client.get("/api/health")
    assert public.status_code == 200
    assert public.json() == {"status": "ok", "sessions_active": 0, "max_sessions": 1, "replicas": 1}
    full = client.get("/api/health", params={"token": TOKEN}).json()
    assert full["replicas"][0]["pid"] > 0 and "counters" in full and "echo test double" in full["animator"]


def test_every_candidate_is_compared_in_constant_time(client, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    refused_like_every_other(client.get("/", params={"token": "wrong-token-0123456789abcdef"},
                                        headers={"cookie": f"{COOKIE}=forged"}))
    assert (b"wrong-token-0123456789abcdef", TOKEN.encode()) in calls
    assert (b"forged", AccessControl(TOKEN).cookie_value.encode()) in calls
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


def test_the_token_is_removed_from_the_query_string_before_the_app_and_the_access_log_see_it():
    import asyncio

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    gate = TokenGate(app, AccessControl(TOKEN))
    scope = {"type": "http", "method": "GET", "path": "/api/stream.mjpg", "headers": [],
             "query_string": f"key=abc&token={TOKEN}&max_frames=2".encode()}
    asyncio.run(gate(scope, None, None))
    assert seen["query_string"] == b"key=abc&max_frames=2" and scope["query_string"] == b"key=abc&max_frames=2"


def test_without_a_token_nothing_is_asked():
    with TestClient(make_app()) as client:
        assert client.get("/").status_code == 200
        assert "replicas" in client.get("/api/health").json() and client.get("/api/health").json()["replicas"][0]


def test_a_real_server_answers_a_handshake_without_the_token_with_403():
    with serving(make_app(token=TOKEN)) as base:
        ws_url = base.replace("http://", "ws://") + "/api/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, open_timeout=10)
        assert refused.value.response.status_code == 403
        with connect(f"{ws_url}?token={TOKEN}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        refused_like_every_other(httpx.get(base + "/", timeout=10))


def test_settings_never_show_the_token():
    from personalive_trt.web.settings import ServeSettings

    assert TOKEN not in repr(ServeSettings(token=TOKEN))  # the record may be logged
