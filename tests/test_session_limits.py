"""No client can starve another (personalive_trt/web/session.py): a flood of control messages, a socket kept
alive with bytes but never started, a swap storm that would queue fusions for the next user, a driving frame
whose header declares gigabytes. Each is tried as a hostile client against the echo double, which fuses a
reference in ``fuse_seconds`` (the cost a start or swap puts on the animator)."""
from __future__ import annotations

import functools
import json
import threading
import time

import cv2
import pytest
from fastapi.testclient import TestClient

from personalive_trt.config import StreamConfig
from personalive_trt.live.testing import EchoAnimator, png_bomb
from personalive_trt.web.app import ServeSettings, create_app
from test_serve import RES, expect_close, is_type, jpeg, make_app, receive_until, start, upload_sample

FUSE_S = 0.2


def fusing_app(**overrides):
    """The echo app whose reference fusion takes FUSE_S (one animator)."""
    settings = ServeSettings(**{"crop": False, "stats_interval": 0.1, **overrides})
    return create_app(functools.partial(EchoAnimator, StreamConfig(resolution=RES), 0.0, fuse_seconds=FUSE_S),
                      settings)


def fusions(client) -> int:
    return sum(w["fusions"] for w in client.get("/api/health").json()["workers"])


def first_frame_after_start(client, key: str) -> float:
    """Seconds from a new client's ``start`` to its first animated frame (frames sent all along)."""
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        t0 = time.monotonic()
        ws.send_text(json.dumps({"type": "start", "reference": key}))
        receive_until(ws, is_type("started"), seconds=30)
        deadline = time.monotonic() + 30
        value = 0
        while time.monotonic() < deadline:
            ws.send_bytes(jpeg(value % 250))
            value += 10
            raw = ws.receive()
            if raw.get("bytes") is not None:
                return time.monotonic() - t0
        raise AssertionError("no frame within 30 s")


@pytest.mark.parametrize("limit", [0.0, 10.0])
def test_a_client_that_sends_400_swaps_and_leaves_costs_at_most_2_fusions(limit):
    """Without a rate limit the worker's one control slot merges the swaps; with the default limit the socket is
    closed (1008) long before 400. Either way the animator is free for the next client at once."""
    with TestClient(fusing_app(control_rate=limit)) as client:
        key = upload_sample(client)
        before = fusions(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            deadline = time.monotonic() + 5  # the start's own fusion first: a busy machine may not have run it
            while fusions(client) == before and time.monotonic() < deadline:  # yet, and leaving drops it
                time.sleep(0.01)
            swap = json.dumps({"type": "swap", "reference": key})
            sent = 0
            try:
                for _ in range(400):
                    ws.send_text(swap)
                    sent += 1
            except Exception:  # the server closed the socket under us (rate limited)
                pass
            if limit:
                code, _ = expect_close(ws)
                assert code == 1008
        # the client has left: what it queued is dropped, and the fusion under way (if any) ends
        deadline = time.monotonic() + 5
        while client.get("/api/health").json()["sessions_active"] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(2 * FUSE_S)
        run = fusions(client) - before
        assert sent == 400 or limit
        assert 1 <= run <= 2, f"{run} fusions for one start and {sent} swaps"
        waited = first_frame_after_start(client, key)
        assert waited < 5.0, f"the next client's first frame took {waited:.1f} s"
        assert fusions(client) - before == run + 1  # the next client's own start
        if limit:
            assert client.get("/api/health").json()["counters"]["rate_limited"] == 1


def test_control_messages_over_the_rate_close_the_socket_with_1008_and_others_are_untouched():
    with TestClient(make_app(control_rate=5.0)) as client:
        with client.websocket_connect("/api/ws") as calm, client.websocket_connect("/api/ws") as flood:
            calm.receive_json(), flood.receive_json()
            for i in range(30):  # the burst is 2 s of the rate: 10 pings pass, the 11th closes
                flood.send_text(json.dumps({"type": "ping", "t": i}))
            code, seen = expect_close(flood)
            assert code == 1008 and len([m for m in seen if m["type"] == "pong"]) == 10
            for i in range(3):  # a client within the rate goes on
                calm.send_text(json.dumps({"type": "ping", "t": i}))
                assert calm.receive_json() == {"type": "pong", "t": i}
        assert client.get("/api/health").json()["counters"]["rate_limited"] == 1


def test_bytes_before_start_do_not_keep_a_socket_alive_past_the_idle_timeout():
    with TestClient(make_app(idle_timeout=0.5)) as client:
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            stop = threading.Event()
            closed_after = []

            def trickle():  # one byte every 0.1 s: activity to the old idle clock, not a driving frame
                t0 = time.monotonic()
                while not stop.is_set():
                    try:
                        ws.send_bytes(b"\0")
                    except Exception:
                        break
                    time.sleep(0.1)
                closed_after.append(time.monotonic() - t0)

            sender = threading.Thread(target=trickle, daemon=True)
            sender.start()
            t0 = time.monotonic()
            code, seen = expect_close(ws)
            waited = time.monotonic() - t0
            stop.set()
            sender.join(5)
        assert code == 4408 and [m["code"] for m in seen if m["type"] == "error"] == ["idle"]
        assert waited < 2.5, f"closed after {waited:.1f} s with an idle timeout of 0.5 s"
        deadline = time.monotonic() + 5
        while client.get("/api/health").json()["counters"]["idle_closes"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        health = client.get("/api/health").json()
        assert health["counters"]["idle_closes"] == 1 and health["sessions_active"] == 0
        assert health["counters"]["connections"] == 0  # its connection slot is free


def test_a_started_session_that_stops_sending_frames_is_closed_too():
    with TestClient(make_app(idle_timeout=0.5)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            ws.send_bytes(jpeg(40))
            ws.send_text(json.dumps({"type": "ping", "t": 1}))  # control is not activity either
            code, _ = expect_close(ws)
        assert code == 4408


def test_a_20000_square_png_in_a_session_is_a_malformed_frame_never_decoded(monkeypatch):
    calls = []
    real_imdecode = cv2.imdecode

    def counting(buffer, flags):
        calls.append(len(buffer))
        return real_imdecode(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", counting)  # the worker thread decodes: a module attribute reaches it
    bomb = png_bomb()
    with TestClient(make_app(max_message_bytes=2 * 2**20)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            ws.send_bytes(bomb)
            stats = receive_until(ws, lambda m: is_type("stats")(m) and m["malformed"] >= 1)[-1]
            assert stats["errors"] == 0
            for value in range(0, 240, 10):  # the session goes on
                ws.send_bytes(jpeg(value))
                time.sleep(0.005)
            assert receive_until(ws, lambda m: isinstance(m, bytes))
    assert len(bomb) not in calls and calls  # the good frames were decoded, the bomb never
