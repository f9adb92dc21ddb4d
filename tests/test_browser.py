"""End to end in a real browser: headless Chromium with a fake camera playing the sample clip, the real
(synthetic-weights) pipeline on CPU behind `serve`'s app, over a real loopback socket.

Needs Debian's `chromium` (/usr/bin/chromium; `.ci/run` installs it) and the `playwright` Python package,
which drives that binary (never `playwright install`). Skips cleanly without them. The canvas is 256 (not
512) to keep the CPU pipeline near 4 s a step; the screenshot is kept as a test artifact in
$PERSONALIVE_ARTIFACTS (default: outputs/test-artifacts, git-ignored).

The same page also runs once against the Ray Serve app (``serve --ray``) on a local Ray cluster, with the
EchoAnimator test double on its one replica (the pipeline itself is covered above; this checks the page
through Ray's proxy: the front's page and upload, the replica's WebSocket, the HUD).
"""
from __future__ import annotations

import functools
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path(os.environ.get("PERSONALIVE_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("PERSONALIVE_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
RES = 256

pytestmark = pytest.mark.browser


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """A YUV4MPEG2 (4:2:0) file: what Chromium's fake camera (--use-file-for-fake-video-capture) plays."""
    import cv2

    h, w = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory) -> Path:
    from personalive_trt.media.framing import resize_square
    from personalive_trt.media import VideoReader
    from personalive_trt.media.sample import sample_driving

    with VideoReader(sample_driving()) as reader:
        frames = [resize_square(frame, 320) for frame in reader]
    path = tmp_path_factory.mktemp("camera") / "sample.y4m"
    write_y4m(path, frames, fps=25)
    return path


@pytest.fixture(scope="module")
def server():
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    from personalive_trt.runtime.animator import open_animator
    from personalive_trt.config import StreamConfig
    from personalive_trt.web.app import ServeSettings, create_app

    app = create_app(lambda: open_animator("synthetic", config=StreamConfig(resolution=RES)), ServeSettings())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=2 * 1024 * 1024)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(120)  # shutdown waits for the running step (seconds on a CPU)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def ray_server():
    ray = pytest.importorskip("ray")
    from ray import serve

    from personalive_trt.config import StreamConfig
    from personalive_trt.live.testing import EchoAnimator
    from personalive_trt.web import ray_app
    from personalive_trt.web.cluster import ClusterOptions
    from personalive_trt.web.settings import ServeSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        ray_app.deploy(functools.partial(EchoAnimator, StreamConfig(resolution=RES), 0.05), ServeSettings(),
                       ClusterOptions(replicas=1, cpus_per_replica=0.25), RES)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def test_page_animates_the_fake_camera_and_updates_the_hud(server, fake_camera):
    check_page(server, fake_camera, "browser_e2e.png")


def test_page_animates_through_the_ray_app(ray_server, fake_camera):
    check_page(ray_server, fake_camera, "browser_e2e_ray.png")


@contextmanager
def browser_page(server: str, fake_camera: Path):
    """Headless Chromium on ``server``'s page with the fake camera, the sample reference uploaded: (page,
    console lines)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from personalive_trt.media.sample import sample_reference

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={fake_camera}", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            page.goto(server)
            page.wait_for_function("document.querySelectorAll('#camera-select option').length > 0", timeout=30_000)
            page.set_input_files("#reference-input", str(sample_reference()))
            page.wait_for_selector("#reference-preview:not([hidden])", timeout=60_000)
            yield page, console
        finally:
            browser.close()


def test_page_says_busy_when_every_ray_slot_is_taken(ray_server, fake_camera):
    """The one slot (1 replica x 1 session) held by another client: Start on the page is refused (``busy``, then
    close 1013) and the page says so."""
    import json

    import httpx
    from websockets.sync.client import connect

    from personalive_trt.media.sample import sample_reference

    upload = httpx.post(f"{ray_server}/api/reference", timeout=30,
                        files={"file": ("ref.png", sample_reference().read_bytes(), "image/png")})
    assert upload.status_code == 200, upload.text
    with connect(ray_server.replace("http://", "ws://") + "/api/ws", open_timeout=30, max_queue=None) as holder:
        assert json.loads(holder.recv(timeout=30))["type"] == "hello"
        holder.send(json.dumps({"type": "start", "reference": upload.json()["id"]}))
        assert json.loads(holder.recv(timeout=30))["type"] == "started"
        with browser_page(ray_server, fake_camera) as (page, console):
            page.wait_for_selector("#start:enabled", timeout=30_000)
            page.click("#start")
            page.wait_for_selector("#status[data-state=error]", timeout=30_000)
            status = page.inner_text("#status")
            running = page.evaluate("window.__hud.frames")
    assert status.startswith("busy:") and "try again later" in status, status
    assert running == 0 and not [line for line in console if line.startswith("pageerror")], console


def check_page(server: str, fake_camera: Path, screenshot: str) -> None:
    """Upload the sample, start, wait for frames and HUD figures, stop: the page's whole path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_page(server, fake_camera) as (page, console):
        page.fill("#fps-input", "8")  # frames beyond one window per step are dropped anyway; spare the CPU
        page.dispatch_event("#fps-input", "change")
        page.wait_for_selector("#start:enabled", timeout=30_000)
        page.click("#start")
        page.wait_for_selector("#status[data-state=running]", timeout=30_000)
        # 3 steps of pipeline delay, then a window of 4 frames; ~4 s a step on 2 CPU cores
        page.wait_for_function("window.__hud.frames >= 4", timeout=150_000)
        first = page.evaluate("({...window.__hud})")
        page.wait_for_function(f"window.__hud.frames >= {first['frames'] + 4}", timeout=60_000)
        hud = page.evaluate("({...window.__hud})")
        texts = {name: page.inner_text(f"#hud-{name}") for name in ("fps", "step", "g2g", "frames", "dropped")}
        natural = page.evaluate("[document.getElementById('output').naturalWidth, "
                                "document.getElementById('output').naturalHeight]")
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        page.click("#stop")
        page.wait_for_selector("#status:has-text('stopped')", timeout=10_000)
    assert natural == [RES, RES]
    assert hud["frames"] >= first["frames"] + 4 and hud["step"] > 0 and hud["g2g"] > 0
    assert int(texts["frames"]) >= 8 and texts["step"] != "–" and texts["g2g"] != "–" and float(texts["fps"]) >= 0
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console
    assert (ARTIFACTS / screenshot).stat().st_size > 10_000
