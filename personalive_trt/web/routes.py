"""The HTTP and WebSocket routes of the web app: one ``APIRouter`` (page, REST, MJPEG) and the WebSocket
route, which read their state from the app.

Every route finds the :class:`~personalive_trt.web.state.ServerState` at ``app.state.server``, so a second
server reuses them by calling :func:`mount` on its own FastAPI app instead of copying them: the Ray app mounts
the HTTP routes on its front deployment and only the WebSocket route on its animator replicas (where each
open socket holds one of Ray's request slots, so the page and uploads never wait behind sessions).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from personalive_trt.web import session as protocol
from personalive_trt.web.frames import encode_jpeg
from personalive_trt.web.health import aggregate, replica_report
from personalive_trt.web.references import UploadRejected, decode_reference
from personalive_trt.web.state import ServerState

log = logging.getLogger("personalive_trt.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


def server_state(connection: Request | WebSocket) -> ServerState:
    return connection.app.state.server


def mount(app: FastAPI, state: ServerState, *, http: bool = True, websocket_path: str | None = "/api/ws") -> None:
    """Give ``app`` the page, the static files, the API, the upload limit and one-line JSON errors (``http``),
    and the session protocol's WebSocket at ``websocket_path`` (None: none)."""
    app.state.server = state
    if http:
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
        app.add_middleware(UploadLimit, path="/api/reference", limit=state.settings.max_upload_bytes + 64 * 1024)
        app.include_router(router)
        app.add_exception_handler(HTTPException, one_line_errors)
        app.add_exception_handler(RequestValidationError, one_line_request_errors)
    if websocket_path is not None:
        app.add_api_websocket_route(websocket_path, animate)


async def one_line_errors(request, exc: HTTPException):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def one_line_request_errors(request, exc: RequestValidationError):
    """A request without a required part (an upload without its ``file`` field, a query value that is not a
    number): 400 with one line naming the part, not FastAPI's list of validation records."""
    problems = "; ".join(f"{error['loc'][-1]!r} in the {error['loc'][0]}: {error['msg'].lower()}"
                         for error in exc.errors())
    return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/api/health")
async def health(request: Request):
    """The app's health summed over its replicas (the single-process server is its one replica)."""
    state = server_state(request)
    if state.health is not None:
        return await state.health()
    return aggregate([replica_report(state)])


@router.get("/api/sample-reference", include_in_schema=False)
async def sample_reference():
    from personalive_trt.media.sample import sample_reference as path

    return FileResponse(path(), media_type="image/png")


@router.post("/api/reference")
async def upload_reference(request: Request, file: UploadFile):
    state = server_state(request)
    settings = state.settings
    # UploadLimit has refused bodies far over the limit before parsing; this catches the margin.
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"upload is over the {settings.max_upload_bytes // 1024} KiB limit")
    if not data:  # not an image either: the same 415 as any other bytes that are not one
        raise HTTPException(415, "empty upload: not an image; send a PNG, JPEG or WebP")
    try:
        image = await run_in_threadpool(decode_reference, data, state.resolution, settings)
    except UploadRejected as exc:
        raise HTTPException(exc.status, str(exc))
    key = await state.references.add(image)
    return {"id": key, "resolution": state.resolution}


@router.get("/api/reference/{key}.jpg")
async def reference_image(request: Request, key: str):
    image = await server_state(request).references.get(key)
    if image is None:
        raise HTTPException(404, "unknown reference")
    return Response(await run_in_threadpool(encode_jpeg, image, 90), media_type="image/jpeg")


@router.get("/api/stream.mjpg")
async def stream_mjpeg(request: Request, max_frames: int | None = None, timeout: float = 5.0):
    """The newest animated frames as MJPEG (``multipart/x-mixed-replace``), e.g. an OBS browser/media source.

    ``max_frames`` ends the response after that many frames (also when none come for ``timeout`` s).
    """
    if max_frames is not None and max_frames < 1:
        raise HTTPException(400, "max_frames must be >= 1")
    return StreamingResponse(server_state(request).mjpeg.frames(max_frames, max(0.1, min(timeout, 60.0))),
                             media_type="multipart/x-mixed-replace; boundary=frame")


async def animate(ws: WebSocket):
    await protocol.accept(ws, server_state(ws))


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
