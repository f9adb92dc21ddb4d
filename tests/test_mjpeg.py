"""Each session's own MJPEG stream (personalive_trt/web/mjpeg.py): no URL yields another session's frames, a
session's viewers stop when it ends, viewers per session are bounded, and the rest of the server answers while
every viewer slot is taken."""
from __future__ import annotations

import json
import time

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from websockets.sync.client import connect

from live_server import MjpegViewer, serving
from personalive_trt.web.mjpeg import MjpegBroadcast, SessionFeeds, ViewerRefused
from test_serve import is_type, jpeg, make_app, png_bytes, receive_until, start, stream_frames, upload_sample


def upload_level(client, value: int) -> str:
    """A uniform reference of grey ``value``: the echo output's level tells whose session a frame is from."""
    body = png_bytes(Image.fromarray(np.full((90, 90, 3), value, np.uint8)))
    response = client.post("/api/reference", files={"file": ("level.png", body, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def part_levels(body: bytes) -> list[float]:
    """The mean grey level of each JPEG in an MJPEG body."""
    levels = []
    for part in body.split(b"--frame\r\n")[1:]:
        data = part[part.index(b"\r\n\r\n") + 4:].rstrip(b"\r\n")
        levels.append(float(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).mean()))
    return levels


def test_a_session_s_key_yields_its_frames_only_and_no_key_yields_any():
    with TestClient(make_app(max_sessions=2)) as client:
        black, white = upload_level(client, 0), upload_level(client, 255)
        with client.websocket_connect("/api/ws") as a, client.websocket_connect("/api/ws") as b:
            a.receive_json(), b.receive_json()
            started_a, started_b = start(a, black), start(b, white)
            key_a = started_a["mjpeg"].split("key=")[1]
            key_b = started_b["mjpeg"].split("key=")[1]
            assert key_a != key_b and len(key_a) >= 22  # 128 random bits, URL-safe
            for ws in (a, b):
                stream_frames(ws, [100] * 24, pause=0.01)
                receive_until(ws, lambda m: isinstance(m, bytes))
            # the echo output is (3 * 100 + reference) / 4: 75 for the black reference, ~139 for the white one
            got_a = part_levels(client.get(f"{started_a['mjpeg']}&max_frames=2&timeout=2").content)
            got_b = part_levels(client.get(f"{started_b['mjpeg']}&max_frames=2&timeout=2").content)
            assert got_a and all(abs(v - 75) < 4 for v in got_a), got_a
            assert got_b and all(abs(v - 139) < 4 for v in got_b), got_b
            for url in ("/api/stream.mjpg", "/api/stream.mjpg?key=", f"/api/stream.mjpg?key={key_a[:-1]}",
                        f"/api/stream.mjpg?key={key_a}x", "/api/stream.mjpg?key=../../etc"):
                response = client.get(url + "&max_frames=1&timeout=1" if "?" in url else url)
                assert response.status_code == 404, url
                assert response.json() == {"error": "no live session has this key (it ended, or never was)"}
            # a session's key ends with it; the other session's key lives on
            a.send_text(json.dumps({"type": "stop"}))
            receive_until(a, is_type("stopped"))
            assert client.get(f"{started_a['mjpeg']}&max_frames=1&timeout=1").status_code == 404
            assert client.get(f"{started_b['mjpeg']}&max_frames=1&timeout=2").status_code == 200
            # a new start is a new session: a new key
            again = start(a, black)
            assert again["mjpeg"] != started_a["mjpeg"]
        assert client.get(f"{started_b['mjpeg']}&max_frames=1&timeout=1").status_code == 404  # socket closed


def test_health_never_lists_a_key():
    with TestClient(make_app()) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            started = start(ws, key)
            assert started["mjpeg"].split("key=")[1] not in client.get("/api/health").text


def test_feeds_admit_max_viewers_and_expire_viewers_that_stopped_polling(monkeypatch):
    import asyncio

    from personalive_trt.web import mjpeg

    async def scenario():
        feeds = SessionFeeds(max_viewers=2)
        key = feeds.open()
        with pytest.raises(ViewerRefused) as unknown:
            feeds.watch("nope")
        assert unknown.value.status == 404
        first, second = feeds.watch(key), feeds.watch(key)
        with pytest.raises(ViewerRefused) as full:
            feeds.watch(key)
        assert full.value.status == 429 and "2 MJPEG viewer(s)" in str(full.value)
        feeds.unwatch(key, first)
        third = feeds.watch(key)  # a slot given back is taken again
        assert feeds.watched() == [key]
        clock = [time.monotonic()]
        monkeypatch.setattr(mjpeg.time, "monotonic", lambda: clock[0])
        clock[0] += mjpeg.VIEWER_TTL + 1  # the viewers' server died: their leases run out
        feeds.watch(key)
        assert await feeds.next_frame(key, second, -1, 0.01) == mjpeg.ENDED  # an expired lease ends its stream
        feed = feeds.feeds[key]
        feeds.end(key)
        assert feed.ended and await feed.next_frame(-1, 0.01) == mjpeg.ENDED
        assert await feeds.next_frame(key, third, -1, 0.01) == mjpeg.ENDED and feeds.watched() == []

    asyncio.run(scenario())


def test_a_broadcast_wakes_its_waiting_viewer_with_the_newest_frame_or_its_end():
    import asyncio

    async def scenario():
        feed = MjpegBroadcast()
        waiter = asyncio.create_task(feed.next_frame(-1, 5))
        await asyncio.sleep(0.01)
        feed.publish(b"one")
        assert await waiter == (1, b"one")
        assert await feed.next_frame(1, 0.01) is None  # nothing newer
        waiter = asyncio.create_task(feed.next_frame(1, 5))
        await asyncio.sleep(0.01)
        feed.end()
        assert await waiter == "ended"

    asyncio.run(scenario())


def test_viewers_are_bounded_the_server_answers_while_they_are_full_and_they_stop_with_the_session():
    with serving(make_app(max_viewers=3)) as base:
        key = httpx.post(f"{base}/api/reference", timeout=30, files={"file": ("r.png", png_bytes(
            Image.fromarray(np.full((90, 90, 3), 60, np.uint8))), "image/png")}).json()["id"]
        # an unbounded queue: this client reads few of the stats messages, and a full queue would hide the close
        with connect(base.replace("http://", "ws://") + "/api/ws", open_timeout=10, max_queue=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            ws.send(json.dumps({"type": "start", "reference": key}))
            started = next(m for m in (json.loads(ws.recv(timeout=10)) for _ in range(20)) if m["type"] == "started")
            url = base + started["mjpeg"]
            viewers = [MjpegViewer(url) for _ in range(3)]
            for viewer in viewers:
                viewer.start()
                assert viewer.opened.wait(10) and viewer.status == 200
            assert httpx.get(url, timeout=10).status_code == 429  # the 4th viewer of this session
            # every viewer slot taken: the page, uploads and health still answer at once
            for _ in range(3):
                t0 = time.monotonic()
                assert httpx.get(base + "/", timeout=10).status_code == 200
                assert httpx.get(base + "/api/health", timeout=10).json()["sessions_active"] == 1
                assert httpx.post(f"{base}/api/reference", timeout=10, files={"file": ("r.png", png_bytes(
                    Image.fromarray(np.full((90, 90, 3), 60, np.uint8))), "image/png")}).status_code == 200
                assert time.monotonic() - t0 < 2.0
            for i in range(40):  # the viewers get the session's frames
                ws.send(jpeg(10 * (i % 20)))
                time.sleep(0.01)
            deadline = time.monotonic() + 10
            while min(v.parts for v in viewers) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert min(v.parts for v in viewers) > 0
            viewers[0].stop = True  # one viewer leaves (at its next part): its slot is given back
            deadline = time.monotonic() + 10
            while not viewers[0].ended.is_set():
                assert time.monotonic() < deadline, "the viewer told to leave never read another part"
                ws.send(jpeg(50))
                time.sleep(0.02)
            deadline = time.monotonic() + 5
            while httpx.get(url + "&max_frames=1&timeout=0.2", timeout=10).status_code == 429:
                assert time.monotonic() < deadline, "a departed viewer's slot never came back"
                time.sleep(0.05)
            ws.send(json.dumps({"type": "stop"}))  # the session ends: its viewers' responses end
            for viewer in viewers[1:]:
                assert viewer.ended.wait(10), "a viewer kept streaming after its session ended"
            assert httpx.get(url, timeout=10).status_code == 404
