"""``personalive-trt serve``: a FastAPI app that animates a browser's camera over a WebSocket.

Protocol (one WebSocket per browser tab, ``/api/ws``):

* server -> client, text JSON: ``hello`` (limits, animator), ``started``, ``stopped``, ``stats`` (twice a
  second: server fps, step latency, drops, malformed frames), ``frame`` (the ``index`` of the driving frame
  the next binary message animates), ``error`` (``code``: ``busy``, ``bad_message``, ``no_reference``,
  ``animation_failed``...).
* client -> server, text JSON: ``start`` (``reference`` id from ``POST /api/reference``, ``fps``), ``swap``
  (``reference``), ``fps``, ``stop``, ``ping``.
* binary, both ways: one JPEG per message. The server numbers the client's binary messages 0, 1, 2... in
  arrival order (WebSocket messages are ordered), so the client can match an output's ``index`` with the
  moment it grabbed that camera frame: that is the glass-to-glass latency the page shows.

Threads: the event loop only moves bytes. Decoding and face framing of driving frames, the animator step and
JPEG encoding run on one :class:`~personalive_trt.live.worker.AnimationWorker` thread per animator; reference
images are decoded and framed in the thread pool. Driving frames reach the worker through a latest-frame-wins
slot (frames that arrive during a step are dropped and counted, never queued); outputs come back through a
small ring per session that evicts its oldest frame when the client reads too slowly. Unlike the original
app's unbounded queues, nothing can build up latency.

Safety: ``max_sessions`` animations at once (one animator each; others get ``busy``), uploads capped in
bytes and pixels and decoded before they are trusted, WebSocket messages capped in size (close code 1009),
malformed frames counted and skipped, a disconnect frees the session.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, UploadFile, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from personalive_trt.live.slots import PlayoutClock
from personalive_trt.live.worker import AnimationWorker, OutputFrame, StampedFrame

log = logging.getLogger("personalive_trt.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits and behaviour of the app (every field has a ``serve`` option or is fixed on purpose)."""

    max_sessions: int = 1  # animations at once; each needs its own animator (GPU memory)
    max_connections: int = 16  # open WebSockets (idle pages included); more are closed with 1013
    max_upload_bytes: int = 10 * MiB  # reference image upload
    max_image_pixels: int = 40_000_000  # decoded size guard (decompression bombs)
    max_message_bytes: int = 2 * MiB  # one WebSocket message (a driving JPEG)
    max_frame_side: int = 4096  # a driving frame larger than this is malformed
    crop: bool = True  # frame driving frames and references around the face
    references_kept: int = 16  # uploaded references remembered (oldest forgotten)
    output_quality: int = 85  # JPEG quality of output frames
    stats_interval: float = 0.5  # seconds between stats messages


class UploadRejected(ValueError):
    """An uploaded reference was rejected (HTTP status and one-line message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReferenceStore:
    """Framed reference images by random id, the ``capacity`` newest kept (bounded memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def add(self, image: np.ndarray) -> str:
        key = secrets.token_urlsafe(12)
        self._items[key] = image
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return key

    def get(self, key: object) -> np.ndarray | None:
        return self._items.get(key) if isinstance(key, str) else None


def decode_reference(data: bytes, resolution: int, settings: ServeSettings) -> np.ndarray:
    """Verify and decode an uploaded image, then frame it (runs in the thread pool: PIL + face detection).

    The bytes are checked for what they are, never trusted by file name or content type: PIL must identify
    them, their declared size must be within ``max_image_pixels`` before decoding, and the full decode must
    succeed (``media.read_image``: EXIF orientation, alpha over white, 16-bit grey).
    """
    from PIL import Image, UnidentifiedImageError

    from personalive_trt import framing, media

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            probe.verify()  # structure check without a full decode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadRejected(415, f"not an image PIL can read ({type(exc).__name__}); send a PNG, JPEG or WebP")
    if width * height > settings.max_image_pixels:
        raise UploadRejected(413, f"image is {width}x{height}, over the {settings.max_image_pixels:,}-pixel limit")
    fd, name = tempfile.mkstemp(suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            image = media.read_image(name)
        except media.MediaError as exc:
            raise UploadRejected(415, str(exc).replace(name, "upload"))
    finally:
        os.unlink(name)
    if not settings.crop:
        return framing.resize_square(image, resolution)
    try:
        return framing.frame_reference(image, size=resolution)
    except framing.NoFaceError:
        raise UploadRejected(422, "no face found in the image; use a portrait with the face clearly visible")


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


def make_frame_decoder(resolution: int, settings: ServeSettings) -> Callable[[bytes], np.ndarray]:
    """A ``prepare`` for the worker: JPEG/PNG bytes -> framed (R, R, 3) RGB; raises ValueError on bad data.

    A new decoder per session, as the face framer follows one video.
    """
    import cv2

    from personalive_trt import framing

    framer = framing.DrivingFramer(size=resolution) if settings.crop else None

    def decode(data: bytes) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{len(data)} bytes that do not decode as an image")
        h, w = bgr.shape[:2]
        if min(h, w) < 16 or max(h, w) > settings.max_frame_side:
            raise ValueError(f"frame is {w}x{h}; expected sides within 16..{settings.max_frame_side}")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        return framer(rgb) if framer is not None else framing.resize_square(rgb, resolution)

    return decode


class Session:
    """One client's animation: an engine leased from the pool, and the outputs waiting to be sent."""

    def __init__(self, session_id: int, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.id = session_id
        self.loop = loop
        self.outputs: deque[tuple[bytes, OutputFrame]] = deque()
        self.capacity = capacity
        self.dropped_output = 0
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.engine: Engine | None = None

    def deliver(self, item: tuple[bytes, OutputFrame]) -> None:
        """Event-loop side of the hand-over; evicts the oldest output when the client lags."""
        if len(self.outputs) >= self.capacity:
            self.outputs.popleft()
            self.dropped_output += 1
        self.outputs.append(item)
        self.ready.set()

    def fail(self, message: str) -> None:
        self.failure = message
        self.ready.set()


class Engine:
    """An animator and its worker thread, leased to one session at a time."""

    def __init__(self, animator, quality: int) -> None:
        self.animator = animator
        self.resolution = animator.config.resolution
        self.quality = quality
        self.session: Session | None = None
        self.worker = AnimationWorker(animator, emit=self._emit, on_error=self._error, name="animation-worker")

    def _emit(self, frame: OutputFrame) -> None:  # worker thread
        session = self.session
        if session is None or frame.tag is not session:
            return  # the tail of a stream that has been stopped (possibly another client's)
        jpeg = encode_jpeg(frame.image, self.quality)
        frame.image = None  # the JPEG is all that travels on; do not keep the array alive
        session.loop.call_soon_threadsafe(session.deliver, (jpeg, frame))

    def _error(self, exc: BaseException) -> None:  # worker thread
        session = self.session
        if session is not None:
            session.loop.call_soon_threadsafe(session.fail, f"{type(exc).__name__}: {exc}")


class EnginePool:
    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines

    @property
    def active(self) -> int:
        return sum(e.session is not None for e in self.engines)

    def acquire(self, session: Session) -> Engine | None:
        for engine in self.engines:
            if engine.session is None:
                engine.session = session
                session.engine = engine
                return engine
        return None

    def release(self, session: Session) -> None:
        engine = session.engine
        if engine is not None and engine.session is session:
            engine.worker.stop()
            engine.session = None
        session.engine = None

    def close(self) -> None:
        """End every worker thread, waiting for running steps (all asked first, so they finish together)."""
        for engine in self.engines:
            engine.worker.request_close()
        for engine in self.engines:
            if not engine.worker.close():
                log.warning("an animation worker did not finish its step in time")


class MjpegBroadcast:
    """The newest output JPEG of any session, for ``/api/stream.mjpg`` readers (OBS, a browser tab)."""

    def __init__(self) -> None:
        self.jpeg: bytes | None = None
        self.version = 0
        self.changed = asyncio.Event()

    def publish(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()  # readers waiting on the old event wake; new ones wait for the next

    async def frames(self, max_frames: int | None, timeout: float):
        sent, version = 0, -1
        while max_frames is None or sent < max_frames:
            if self.version == version or self.jpeg is None:
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout)
                except asyncio.TimeoutError:
                    if max_frames is not None:
                        return
                    continue
            version, jpeg = self.version, self.jpeg
            yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                   + b"\r\n\r\n" + jpeg + b"\r\n")
            sent += 1


class UploadLimit:
    """ASGI middleware: refuse a POST to ``path`` whose body is (or turns out) larger than ``limit`` bytes,
    before the multipart parser spools it. A body without Content-Length is counted as it streams."""

    def __init__(self, app, path: str, limit: int) -> None:
        self.app, self.path, self.limit = app, path, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        seen = 0
        too_large = refused = False

        async def counting_receive():
            nonlocal seen, too_large
            if too_large:  # stop feeding the parser; it sees the client go away
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def replacing_send(message):
            nonlocal refused
            if not too_large:
                return await send(message)
            if not refused:  # whatever the app answers to the cut-off body, the client gets the 413
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except Exception:
            if not too_large:
                raise
            if not refused:
                refused = True
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"upload is over the {self.limit // 1024} KiB limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def host_memory_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def device_memory_bytes() -> int | None:
    """CUDA memory allocated by torch in this process (None without CUDA)."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:  # memory reporting must never break a health check
        log.debug("device memory query failed", exc_info=True)
    return None


def create_app(animator_factory: Callable[[], object], settings: ServeSettings | None = None):
    """The FastAPI app; ``animator_factory()`` is called ``settings.max_sessions`` times, now.

    The animators are created eagerly so that bad weights fail ``serve`` at start, not at the first click.
    """
    settings = settings or ServeSettings()
    if settings.max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {settings.max_sessions}")
    pool = EnginePool([Engine(animator_factory(), settings.output_quality) for _ in range(settings.max_sessions)])
    resolution = pool.engines[0].resolution
    references = ReferenceStore(settings.references_kept)
    counters = {"sessions": 0, "connections": 0, "busy_refusals": 0, "refused_connections": 0,
                "oversize_messages": 0, "bad_messages": 0}

    @asynccontextmanager
    async def lifespan(app):
        app.state.mjpeg = MjpegBroadcast()
        yield
        await run_in_threadpool(pool.close)  # waits for running steps without freezing the loop

    app = FastAPI(title="personalive-trt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool
    app.state.settings = settings
    app.state.counters = counters
    app.state.mjpeg = None
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(UploadLimit, path="/api/reference", limit=settings.max_upload_bytes + 64 * 1024)

    def mjpeg() -> MjpegBroadcast:
        if app.state.mjpeg is None:  # apps driven without their lifespan (plain TestClient calls)
            app.state.mjpeg = MjpegBroadcast()
        return app.state.mjpeg

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/health")
    async def health():
        return {
            "status": "ok",
            "animator": pool.engines[0].animator.description,
            "resolution": resolution,
            "sessions_active": pool.active,
            "max_sessions": settings.max_sessions,
            "host_memory_bytes": host_memory_bytes(),
            "device_memory_bytes": device_memory_bytes(),
            "counters": dict(counters),
            "workers": [e.worker.stats.snapshot() | {"dropped_input": e.worker.inbox.dropped} for e in pool.engines],
        }

    @app.get("/api/sample-reference", include_in_schema=False)
    async def sample_reference():
        from personalive_trt.sample import sample_reference as path

        return FileResponse(path(), media_type="image/png")

    @app.post("/api/reference")
    async def upload_reference(file: UploadFile):
        # UploadLimit has refused bodies far over the limit before parsing; this catches the margin.
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload is over the {settings.max_upload_bytes // 1024} KiB limit")
        if not data:
            raise HTTPException(400, "empty upload")
        try:
            image = await run_in_threadpool(decode_reference, data, resolution, settings)
        except UploadRejected as exc:
            raise HTTPException(exc.status, str(exc))
        key = references.add(image)
        return {"id": key, "resolution": resolution}

    @app.get("/api/reference/{key}.jpg")
    async def reference_image(key: str):
        image = references.get(key)
        if image is None:
            raise HTTPException(404, "unknown reference")
        return Response(await run_in_threadpool(encode_jpeg, image, 90), media_type="image/jpeg")

    @app.get("/api/stream.mjpg")
    async def stream_mjpeg(max_frames: int | None = None, timeout: float = 5.0):
        """The newest animated frames as MJPEG (``multipart/x-mixed-replace``), e.g. an OBS browser/media source.

        ``max_frames`` ends the response after that many frames (also when none come for ``timeout`` s).
        """
        if max_frames is not None and max_frames < 1:
            raise HTTPException(400, "max_frames must be >= 1")
        return StreamingResponse(mjpeg().frames(max_frames, max(0.1, min(timeout, 60.0))),
                                 media_type="multipart/x-mixed-replace; boundary=frame")

    @app.websocket("/api/ws")
    async def animate(ws: WebSocket):
        await ws.accept()
        if counters["connections"] >= settings.max_connections:
            counters["refused_connections"] += 1
            await ws.close(1013, f"too many connections ({settings.max_connections}); try again later")
            return
        counters["connections"] += 1
        try:
            await serve_session(ws)
        finally:
            counters["connections"] -= 1

    async def serve_session(ws: WebSocket) -> None:
        counters["sessions"] += 1
        window = pool.engines[0].animator.config.window
        session = Session(counters["sessions"], asyncio.get_running_loop(), capacity=2 * window)
        received = 0
        tasks: list[asyncio.Task] = []

        async def send_json(payload: dict) -> None:
            if ws.application_state == WebSocketState.CONNECTED:
                await ws.send_text(json.dumps(payload))

        async def send_outputs() -> None:
            """Play outputs out spaced like their driving frames arrived (they leave the animator in windows)."""
            clock = PlayoutClock()
            while True:
                await session.ready.wait()
                session.ready.clear()
                if session.failure is not None:
                    message, session.failure = session.failure, None
                    pool.release(session)
                    await send_json({"type": "error", "code": "animation_failed", "message": message})
                    continue
                while session.outputs:
                    jpeg, frame = session.outputs.popleft()
                    wait = clock.wait(frame.t_capture, time.monotonic())
                    if wait > 0:
                        await asyncio.sleep(wait)
                    now = time.monotonic()
                    await send_json({"type": "frame", "index": frame.index,
                                     "server_latency_ms": round(1000 * (now - frame.t_capture), 1)})
                    await ws.send_bytes(jpeg)
                    mjpeg().publish(jpeg)

        async def send_stats() -> None:
            while True:
                await asyncio.sleep(settings.stats_interval)
                engine = session.engine
                if engine is None:
                    continue
                await send_json({"type": "stats", **engine.worker.stats.snapshot(), "received": received,
                                 "dropped_input": engine.worker.inbox.dropped,
                                 "dropped_output": session.dropped_output})

        async def start(message: dict, swap: bool) -> None:
            image = references.get(message.get("reference"))
            if image is None:
                await send_json({"type": "error", "code": "no_reference",
                                 "message": "upload a reference image first (POST /api/reference)"})
                return
            if swap:
                if session.engine is None:
                    await send_json({"type": "error", "code": "not_started", "message": "start before swapping"})
                    return
                session.engine.worker.swap_reference(image)
                await send_json({"type": "swapped"})
                return
            if session.engine is None and pool.acquire(session) is None:
                counters["busy_refusals"] += 1
                await send_json({"type": "error", "code": "busy", "message": f"busy: {settings.max_sessions} "
                                 "animation session(s) already running; try again when it ends"})
                return
            session.outputs.clear()
            session.engine.worker.start(image, make_frame_decoder(resolution, settings), tag=session)
            await send_json({"type": "started", "resolution": resolution})

        async def logged(coroutine) -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a send to a vanished client ends the task; say so, do not hide it
                log.info("session %d: sender stopped: %s: %s", session.id, type(exc).__name__, exc)

        tasks = [asyncio.create_task(logged(send_outputs())), asyncio.create_task(logged(send_stats()))]
        try:
            await send_json({"type": "hello", "resolution": resolution, "max_message_bytes": settings.max_message_bytes,
                             "animator": pool.engines[0].animator.description, "max_sessions": settings.max_sessions,
                             "sessions_active": pool.active})
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                size = len(data) if data is not None else len(text or "")
                if size > settings.max_message_bytes:
                    counters["oversize_messages"] += 1
                    log.warning("session %d: %d-byte message over the %d-byte limit; closing", session.id, size,
                                settings.max_message_bytes)
                    await ws.close(1009, f"message over {settings.max_message_bytes} bytes")
                    break
                if data is not None:
                    index, received = received, received + 1
                    if session.engine is not None:
                        session.engine.worker.inbox.put(StampedFrame(data, time.monotonic(), index))
                    continue
                try:
                    command = json.loads(text or "")
                    kind = command["type"]
                except (ValueError, KeyError, TypeError):
                    counters["bad_messages"] += 1
                    await send_json({"type": "error", "code": "bad_message",
                                     "message": "expected a JSON object with a 'type' field"})
                    continue
                if kind in ("start", "swap"):
                    await start(command, swap=kind == "swap")
                elif kind == "stop":
                    pool.release(session)
                    session.outputs.clear()
                    await send_json({"type": "stopped"})
                elif kind == "fps":
                    await send_json({"type": "fps", "fps": command.get("fps")})
                elif kind == "ping":
                    await send_json({"type": "pong", "t": command.get("t")})
                else:
                    counters["bad_messages"] += 1
                    await send_json({"type": "error", "code": "bad_message", "message": f"unknown type {kind!r}"})
        except WebSocketDisconnect:
            pass
        finally:
            pool.release(session)  # a vanished client frees its animator at once
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("session %d closed after %d frames", session.id, received)

    @app.exception_handler(HTTPException)
    async def one_line_errors(request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app
