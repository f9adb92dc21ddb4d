"""`personalive-trt serve`: the HTTP/WebSocket API with FastAPI's test client and the EchoAnimator test double.

The echo double (personalive_trt/live/testing.py) has the animator's interface and stream timing but no
model, so these tests exercise uploads, the protocol, busy/disconnect handling and malformed input in
seconds. The real pipeline in a real browser is tests/test_browser.py.
"""
from __future__ import annotations

import io
import json
import threading
import time

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from personalive_trt.config import StreamConfig  # noqa: E402
from personalive_trt.media.framing import resize_square  # noqa: E402
from personalive_trt.live.testing import EchoAnimator  # noqa: E402
from personalive_trt.media.sample import sample_reference  # noqa: E402
from personalive_trt.web.app import ServeSettings, create_app  # noqa: E402

RES = 64


def make_app(animator=EchoAnimator, **overrides):
    settings = ServeSettings(**{"crop": False, "stats_interval": 0.1, **overrides})
    return create_app(lambda: animator(StreamConfig(resolution=RES)), settings)


@pytest.fixture
def client():
    with TestClient(make_app(max_upload_bytes=1_000_000, max_message_bytes=100_000)) as c:
        yield c


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(value: int, size=(80, 60)) -> bytes:
    """A uniform grey JPEG: its level identifies the frame in the echo output."""
    ok, data = cv2.imencode(".jpg", np.full((size[1], size[0], 3), value, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def upload_sample(client) -> str:
    response = client.post("/api/reference", files={"file": ("ref.png", sample_reference().read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def receive_until(ws, predicate, seconds: float = 10.0) -> list[dict | bytes]:
    """Messages up to and including the first one for which predicate(message) holds.

    A started session sends stats every 0.1 s, so receive() returns often enough for the deadline to apply.
    """
    deadline = time.monotonic() + seconds
    seen: list[dict | bytes] = []
    while time.monotonic() < deadline:
        raw = ws.receive()
        if raw["type"] == "websocket.close":
            raise AssertionError(f"socket closed ({raw.get('code')}); seen {seen[-5:]}")
        item = raw["bytes"] if raw.get("bytes") is not None else json.loads(raw["text"])
        seen.append(item)
        if predicate(item):
            return seen
    raise AssertionError(f"timed out; last messages {[m if isinstance(m, dict) else len(m) for m in seen[-5:]]}")


def is_type(kind):
    return lambda m: isinstance(m, dict) and m.get("type") == kind


def start(ws, reference: str, ready: bool = True) -> dict:
    """Start a session; returns its ``started`` message. With ``ready``, also waits for a ``stats`` message that
    says the portrait is fused (a driving frame sent before that is dropped as stale: tests that count frames
    would race the fusion)."""
    ws.send_text(json.dumps({"type": "start", "reference": reference, "fps": 30}))
    started = receive_until(ws, is_type("started"))[-1]
    if ready:
        receive_until(ws, lambda m: is_type("stats")(m) and m["ready"])
    return started


def stream_frames(ws, values, pause: float = 0.003) -> None:
    for value in values:
        ws.send_bytes(jpeg(value))
        time.sleep(pause)


def outputs(messages) -> list[tuple[dict, bytes]]:
    """(frame meta, jpeg) pairs in order."""
    pairs, meta = [], None
    for m in messages:
        if isinstance(m, dict) and m.get("type") == "frame":
            meta = m
        elif isinstance(m, bytes):
            pairs.append((meta, m))
    return pairs


# ------------------------------------------------------------------------------------------------ HTTP


def test_page_static_files_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="output"' in page.text and "/static/app.js" in page.text
    assert "WebSocket" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["sessions_active"] == 0 and health["max_sessions"] == 1
    assert "echo test double" in health["animator"] and health["resolution"] == RES
    assert health["host_memory_bytes"] > 10_000_000
    # the single process is the app's one replica, reported like each replica of the Ray app
    [replica] = health["replicas"]
    assert replica["sessions"] == 0 and replica["max_sessions"] == 1 and replica["pid"] > 0 and replica["node"]
    assert replica["host_memory_bytes"] > 10_000_000 and "device_memory_bytes" in replica


def test_upload_accepts_an_image_and_serves_the_framed_reference(client):
    key = upload_sample(client)
    image = client.get(f"/api/reference/{key}.jpg")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (RES, RES)
    assert client.get("/api/reference/nope.jpg").status_code == 404


def test_upload_over_the_size_limit_is_refused(client):
    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)  # ~1.5 MB as PNG
    body = png_bytes(Image.fromarray(noise))
    assert len(body) > 1_000_000
    response = client.post("/api/reference", files={"file": ("big.png", body, "image/png")})
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize("case", ["garbage", "text_as_png", "truncated_png", "empty"])
def test_upload_that_is_not_an_image_is_refused_with_415(client, case):
    """The README's promise: whatever the name or content type says, bytes that are not an image get 415."""
    good = png_bytes(Image.fromarray(np.zeros((32, 32, 3), np.uint8)))
    body = {"garbage": np.random.default_rng(1).bytes(5000), "text_as_png": b"<html>not an image</html>",
            "truncated_png": good[: len(good) // 2], "empty": b""}[case]
    response = client.post("/api/reference", files={"file": ("portrait.png", body, "image/png")})
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert "\n" not in error and ("not an image" in error or "empty" in error), error


def test_upload_without_a_file_field_is_one_line_400(client):
    response = client.post("/api/reference", data={"other": "x"})
    assert response.status_code == 400 and "'file'" in response.json()["error"], response.text


def test_upload_with_too_many_pixels_is_refused_before_decoding(client):
    body = png_bytes(Image.new("1", (9000, 5000)))  # 45 MP bilevel: a few KB on the wire
    response = client.post("/api/reference", files={"file": ("huge.png", body, "image/png")})
    assert response.status_code == 413 and "pixel" in response.json()["error"]


def test_upload_without_a_face_is_refused_when_framing():
    with TestClient(make_app(crop=True)) as client:
        body = png_bytes(Image.fromarray(np.full((200, 200, 3), 128, np.uint8)))
        response = client.post("/api/reference", files={"file": ("grey.png", body, "image/png")})
    assert response.status_code == 422 and "no face" in response.json()["error"]


# ------------------------------------------------------------------------------------------------ WebSocket


def test_stream_returns_each_animated_frame_tagged_with_its_driving_frame(client):
    key = upload_sample(client)
    reference_mean = resize_square(np.asarray(Image.open(sample_reference()).convert("RGB")), RES).mean()
    with client.websocket_connect("/api/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["resolution"] == RES
        assert hello["vae"] == "full"  # the HUD's decoder field
        start(ws, key)
        values = [(7 * i) % 250 for i in range(40)]
        stream_frames(ws, values, pause=0.01)
        seen: list = []
        deadline = time.monotonic() + 10
        while len(outputs(seen)) < 12 and time.monotonic() < deadline:
            seen += receive_until(ws, lambda m: isinstance(m, bytes), seconds=5)
        pairs = outputs(seen)
        assert len(pairs) >= 12
        indices = [meta["index"] for meta, _ in pairs]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        for meta, data in pairs:
            out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert out.shape == (RES, RES, 3)
            # the echo output is (3 * driving + reference) / 4: the tag names the frame it animates
            expected = (3 * values[meta["index"]] + reference_mean) / 4
            assert abs(out.mean() - expected) < 3.0, (meta, out.mean(), expected)
        stats = receive_until(ws, lambda m: is_type("stats")(m) and m["received"] == 40)[-1]
        assert stats["frames_out"] >= 12 and stats["malformed"] == 0
        assert stats["frames_in"] + stats["dropped_input"] <= 40
        ws.send_text(json.dumps({"type": "stop"}))
        receive_until(ws, is_type("stopped"))


def test_stats_say_ready_once_the_portrait_is_fused_and_a_frame_sent_during_the_fusion_is_a_counted_drop():
    """``started`` answers at once and the fusion runs after it (here held until the test has seen the server
    receive a frame): until it ends ``ready`` is false, and the newest frame sent meanwhile is dropped as stale
    and counted (it used to vanish uncounted, so a client that sent frames right after ``started`` under load
    lost some with nothing to show for it)."""
    gate = threading.Event()

    class HeldFuse(EchoAnimator):
        def fuse_reference(self, image):
            assert gate.wait(10), "the test never let the fusion end"
            super().fuse_reference(image)

    with TestClient(make_app(HeldFuse)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key, ready=False)
            ws.send_bytes(jpeg(100))
            during = receive_until(ws, lambda m: is_type("stats")(m) and m["received"] == 1)[-1]
            assert during["ready"] is False
            gate.set()
            after = receive_until(ws, lambda m: is_type("stats")(m) and m["ready"])[-1]
            assert after["dropped_input"] == 1 and after["frames_in"] == 0 and after["malformed"] == 0
            stream_frames(ws, [100] * 12, pause=0.05)  # frames sent once ready are animated
            final = receive_until(ws, lambda m: is_type("stats")(m) and m["frames_in"] >= 4)[-1]
            assert final["ready"] is True and final["frames_in"] + final["dropped_input"] <= 13


def test_mjpeg_endpoint_serves_the_latest_output(client):
    key = upload_sample(client)
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        started = start(ws, key)
        assert started["mjpeg"].startswith("/api/stream.mjpg?key=")
        stream_frames(ws, range(0, 200, 10), pause=0.01)
        receive_until(ws, lambda m: isinstance(m, bytes))
        response = client.get(started["mjpeg"] + "&max_frames=1&timeout=2")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=frame")
    body = response.content
    assert body.startswith(b"--frame\r\nContent-Type: image/jpeg\r\n")
    jpeg_start = body.index(b"\r\n\r\n") + 4
    assert cv2.imdecode(np.frombuffer(body[jpeg_start:-2], np.uint8), cv2.IMREAD_COLOR).shape == (RES, RES, 3)


def test_start_without_reference_and_bad_control_messages_are_answered_not_fatal(client):
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "start", "reference": "unknown"}))
        assert ws.receive_json()["code"] == "no_reference"
        ws.send_text("{not json")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"type": "dance"}))
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"type": "ping", "t": 5}))
        assert ws.receive_json() == {"type": "pong", "t": 5}
    assert client.get("/api/health").json()["counters"]["bad_messages"] == 2


def test_second_session_is_busy_until_the_first_disconnects(client):
    key = upload_sample(client)
    with client.websocket_connect("/api/ws") as second:
        second.receive_json()
        with client.websocket_connect("/api/ws") as first:
            first.receive_json()
            start(first, key)
            stream_frames(first, range(0, 100, 10))
            second.send_text(json.dumps({"type": "start", "reference": key}))
            busy = second.receive_json()
            assert busy["type"] == "error" and busy["code"] == "busy" and "busy" in busy["message"]
            assert client.get("/api/health").json()["sessions_active"] == 1
        # the first client vanished mid-stream: its session is freed
        deadline = time.monotonic() + 5
        while client.get("/api/health").json()["sessions_active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/api/health").json()["sessions_active"] == 0
        start(second, key)
        stream_frames(second, range(0, 200, 10))
        assert receive_until(second, lambda m: isinstance(m, bytes))
    assert client.get("/api/health").json()["counters"]["busy_refusals"] == 1


def test_max_sessions_is_configurable():
    with TestClient(make_app(max_sessions=2)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as a, client.websocket_connect("/api/ws") as b:
            a.receive_json(), b.receive_json()
            start(a, key)
            start(b, key)
            assert client.get("/api/health").json()["sessions_active"] == 2


def test_malformed_frames_are_counted_and_skipped(client):
    key = upload_sample(client)
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        start(ws, key)
        bad = [b"", b"\xff\xd8\xff garbage", np.random.default_rng(2).bytes(3000), jpeg(50, size=(8, 8))]
        for i in range(24):
            ws.send_bytes(bad[i % len(bad)] if i % 2 else jpeg(100))
            time.sleep(0.005)
        stream_frames(ws, range(0, 240, 10))
        assert receive_until(ws, lambda m: isinstance(m, bytes))  # the worker survived and animates on
        stats = receive_until(ws, lambda m: is_type("stats")(m) and m["malformed"] >= 1)[-1]
        assert stats["errors"] == 0 and stats["malformed"] <= 12


def test_a_connection_without_driving_frames_is_closed_after_the_idle_timeout():
    with TestClient(make_app(idle_timeout=0.5)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            hello = ws.receive_json()
            assert hello["replica"]["pid"] > 0
            start(ws, key)
            for _ in range(6):  # frames keep it open past the timeout
                stream_frames(ws, [40])
                time.sleep(0.15)
            assert client.get("/api/health").json()["sessions_active"] == 1
            t0 = time.monotonic()
            code, seen = expect_close(ws)
            waited = time.monotonic() - t0
        errors = [m for m in seen if m.get("type") == "error"]
        assert code == 4408 and [e["code"] for e in errors] == ["idle"] and "0.5 s" in errors[0]["message"]
        assert waited < 3.0
        wait_idle(client)
        assert client.get("/api/health").json()["counters"]["idle_closes"] == 1


def test_busy_closes_the_socket_when_asked():
    """What the Ray app sets: a socket that cannot start is closed (1013), so it holds none of Ray's slots."""
    with TestClient(make_app(close_when_busy=True)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as first, client.websocket_connect("/api/ws") as second:
            first.receive_json(), second.receive_json()
            start(first, key)
            second.send_text(json.dumps({"type": "start", "reference": key}))
            code, seen = expect_close(second)
            assert code == 1013 and [m["code"] for m in seen if m["type"] == "error"] == ["busy"]


def expect_close(ws, seconds: float = 10.0) -> tuple[int, list]:
    """Read until the server closes the socket; returns the close code and the JSON messages before it."""
    deadline = time.monotonic() + seconds
    seen: list = []
    while time.monotonic() < deadline:
        raw = ws.receive()
        if raw["type"] == "websocket.close":
            return raw["code"], seen
        if raw.get("text") is not None:
            seen.append(json.loads(raw["text"]))
    raise AssertionError(f"the socket stayed open; last messages {seen[-5:]}")


def wait_idle(client) -> None:
    deadline = time.monotonic() + 5
    while client.get("/api/health").json()["sessions_active"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("/api/health").json()["sessions_active"] == 0


@pytest.mark.parametrize("failure", ["exception", "non_finite"])
def test_animator_failure_sends_the_error_then_closes_1011_and_frees_the_animator(failure):
    from personalive_trt.runtime.reference_loop import NonFiniteError

    class Failing(EchoAnimator):
        fail = True

        def step(self, frames):
            if Failing.fail:
                raise RuntimeError("boom") if failure == "exception" else NonFiniteError("step 0: NaN/Inf")
            return super().step(frames)

    with TestClient(make_app(animator=Failing)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            stream_frames(ws, range(0, 120, 10))
            code, seen = expect_close(ws)
        errors = [m for m in seen if m.get("type") == "error"]
        assert code == 1011 and len(errors) == 1 and errors[0]["code"] == "animation_failed"
        assert ("RuntimeError: boom" if failure == "exception" else "NonFiniteError") in errors[0]["message"]
        wait_idle(client)
        [failed] = client.get("/api/health").json()["replicas"][0]["animator_failures"]
        assert failed.startswith("RuntimeError: boom" if failure == "exception" else "NonFiniteError")
        Failing.fail = False  # the worker thread survived: the next client animates (serve reuses animators)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            stream_frames(ws, range(0, 200, 10))
            assert receive_until(ws, lambda m: isinstance(m, bytes))
        assert client.get("/api/health").json()["replicas"][0]["animator_failures"] == []


def test_a_pool_that_does_not_reuse_failed_animators_leases_only_live_ones():
    """The Ray app's pool (``reuse_failed=False``): a failed animator is never leased again; Ray replaces the
    replica (its health check raises on ``failures``)."""
    from personalive_trt.web.pool import AnimatorPool
    from personalive_trt.web.session import Session

    settings = ServeSettings(max_sessions=2)
    for reuse_failed, leased in ((False, [1]), (True, [0, 1])):
        pool = AnimatorPool.create(lambda: EchoAnimator(StreamConfig(resolution=64)), settings, reuse_failed)
        try:
            pool.slots[0].worker.animator_failure = RuntimeError("boom")
            assert pool.failures == ["RuntimeError: boom"]
            sessions = [Session(i, loop=None, capacity=8) for i in range(2)]
            got = [pool.acquire(s) for s in sessions]
            assert [pool.slots.index(e) for e in got if e is not None] == leased
        finally:
            pool.close()


def test_malformed_frames_in_a_row_end_the_session_with_1007():
    with TestClient(make_app(max_malformed_in_a_row=5)) as client:
        key = upload_sample(client)
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            for _ in range(5):
                ws.send_bytes(b"\xff\xd8\xff not a jpeg")
                time.sleep(0.01)
            code, seen = expect_close(ws)
        errors = [m for m in seen if m.get("type") == "error"]
        assert code == 1007 and [e["code"] for e in errors] == ["malformed_frames"]
        assert "5 malformed driving frames in a row" in errors[0]["message"]
        wait_idle(client)


def test_a_sender_that_dies_closes_the_socket_with_1011_and_logs_an_error(client, monkeypatch, caplog):
    from personalive_trt.web.mjpeg import MjpegBroadcast

    def broken(self, jpeg):
        raise RuntimeError("publish broke")

    monkeypatch.setattr(MjpegBroadcast, "publish", broken)
    key = upload_sample(client)
    with caplog.at_level("ERROR", logger="personalive_trt.web"):
        with client.websocket_connect("/api/ws") as ws:
            ws.receive_json()
            start(ws, key)
            stream_frames(ws, range(0, 200, 10))
            code, _ = expect_close(ws)
        wait_idle(client)
    assert code == 1011
    failures = [r for r in caplog.records if r.levelname == "ERROR" and "outputs task failed" in r.getMessage()]
    assert failures and "publish broke" in str(failures[0].exc_info[1])


def test_oversize_message_closes_the_socket_with_1009(client):
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        ws.send_bytes(b"\0" * 100_001)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009
    assert client.get("/api/health").json()["counters"]["oversize_messages"] == 1


def test_swap_reference_mid_stream(client):
    key = upload_sample(client)
    other = client.post("/api/reference", files={"file": ("grey.png", png_bytes(Image.new("RGB", (90, 90), "white")),
                                                         "image/png")}).json()["id"]
    with client.websocket_connect("/api/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "swap", "reference": key}))
        assert ws.receive_json()["code"] == "not_started"
        start(ws, key)
        ws.send_text(json.dumps({"type": "swap", "reference": other}))
        receive_until(ws, is_type("swapped"))
        stream_frames(ws, [0] * 30)
        pairs = []
        while not pairs:
            pairs = outputs(receive_until(ws, lambda m: isinstance(m, bytes)))
        out = cv2.imdecode(np.frombuffer(pairs[0][1], np.uint8), cv2.IMREAD_COLOR)
        assert abs(out.mean() - 255 / 4) < 3  # (3 * 0 + white) / 4: the new reference is in use


def test_open_connections_are_capped():
    with TestClient(make_app(max_connections=1)) as client:
        with client.websocket_connect("/api/ws") as first:
            assert first.receive_json()["type"] == "hello"
            with client.websocket_connect("/api/ws") as second:
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
            assert closed.value.code == 1013
        with client.websocket_connect("/api/ws") as third:  # the first one's slot is free again
            assert third.receive_json()["type"] == "hello"
        assert client.get("/api/health").json()["counters"]["refused_connections"] == 1


def test_streamed_upload_without_length_is_cut_off_at_the_limit(client):
    def body():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MB, more than the 1 MB limit, with no Content-Length
        yield b"\r\n--x--\r\n"

    response = client.post("/api/reference", content=body(),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize("args, expected", [
    (["--replicas", "2"], "need --ray"),
    (["--ray", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"], "exclude each other"),
    (["--ray", "--min-replicas", "1"], "needs both --min-replicas and --max-replicas"),
    (["--ray", "--cpus-per-replica", "0"], "expected GPUs >= 0 and CPUs > 0"),
    (["--idle-timeout", "-1"], "--idle-timeout -1.0: expected >= 0"),
])
def test_serve_refuses_bad_cluster_options_in_one_line(args, expected):
    from typer.testing import CliRunner

    from personalive_trt.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output


def test_the_single_process_server_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, personalive_trt.cli, personalive_trt.web.app, personalive_trt.web.cluster; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
