"""Live driving sources: a capture thread per source feeding a latest-frame-wins slot.

``--driving`` values (see :func:`parse_source`):

* ``webcam`` / ``webcam:N`` -- camera N (default 0) through OpenCV;
* ``/dev/videoN`` -- a V4L2 device path;
* ``rtsp://...``, ``http://...``, ``https://...`` -- a network stream (OpenCV's FFmpeg backend);
* ``sample`` or a file path -- played back in real time at the file's frame rate, like a camera, so a file
  exercises exactly the live path (frames the animation cannot keep up with are dropped).

The capture thread always reads (a camera's driver buffer would otherwise hand out stale frames) and puts
each frame into the source's :class:`~personalive_trt.live.slots.LatestSlot`; frames nobody took before the
next one arrived are counted in ``dropped``. Frames are RGB uint8, stamped with ``time.monotonic()``.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalive_trt.live.slots import LatestSlot
from personalive_trt.live.worker import StampedFrame
from personalive_trt.media import MediaError

log = logging.getLogger("personalive_trt.live")

_WEBCAM = re.compile(r"^webcam(?::(\d+))?$")
_DEVICE = re.compile(r"^/dev/video\d+$")
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https)://", re.IGNORECASE)
#: Consecutive failed reads after which a camera or stream counts as lost.
MAX_READ_FAILURES = 50


class SourceError(MediaError):
    """A live source could not be opened or was lost (one-line message naming it)."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "camera" (index), "device" (path), "url" or "file"
    target: str | int
    text: str  # as the user wrote it

    @property
    def is_live(self) -> bool:
        """True for cameras and streams; files and the sample are not live unless a live sink is asked for."""
        return self.kind != "file"


def parse_source(value: str) -> SourceSpec:
    """Classify a ``--driving`` value; files are resolved (and must exist) here."""
    from personalive_trt.media.sample import resolve_media

    text = value.strip()
    match = _WEBCAM.match(text)
    if match:
        return SourceSpec("camera", int(match.group(1) or 0), text)
    if _DEVICE.match(text):
        return SourceSpec("device", text, text)
    if _URL.match(text):
        return SourceSpec("url", text, text)
    if text.startswith("webcam"):
        raise ValueError(f"--driving {value!r}: expected webcam or webcam:N (N a camera index)")
    return SourceSpec("file", str(resolve_media(text, "driving")), text)


class FrameSource:
    """Base: a daemon capture thread that fills :attr:`slot`. Use as a context manager or call close()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slot: LatestSlot[StampedFrame] = LatestSlot()
        self.fps: float = 30.0  # nominal rate, used for output files and play-out pacing
        self.ended = threading.Event()  # set when the source has no more frames (file end, lost camera)
        self.error: str | None = None
        self.captured = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Frames captured but replaced by a newer one before anybody took them."""
        return self.slot.dropped

    def start(self) -> "FrameSource":
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture {self.name}", daemon=True)
        self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> StampedFrame | None:
        """The newest frame (None on timeout or once the source ended and nothing is left)."""
        return self.slot.get(timeout)

    def _publish(self, rgb: np.ndarray) -> None:
        self.slot.put(StampedFrame(rgb, time.monotonic(), self.captured))
        self.captured += 1

    def _capture_loop(self) -> None:
        try:
            self._capture()
        except Exception as exc:  # a lost source ends the run with its message, it does not vanish
            self.error = f"{self.name}: {exc}"  # surfaced by the consumer (run summary or SourceError)
            log.info("capture stopped: %s", self.error)
        finally:
            self.ended.set()
            self.slot.close()

    def _capture(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.slot.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class FileSource(FrameSource):
    """A video file played in real time (at its own fps, or ``fps``), optionally ``loop``-ed."""

    def __init__(self, path: str | Path, fps: float | None = None, loop: bool = False,
                 max_frames: int | None = None) -> None:
        from personalive_trt.media import probe_video

        super().__init__(str(path))
        self.path = Path(path)
        info = probe_video(self.path)  # MediaError naming the file when it is not a readable video
        self.fps = float(fps or info.fps or 25.0)
        self.loop = loop
        self.max_frames = max_frames

    def _capture(self) -> None:
        from personalive_trt.media import VideoReader

        period = 1.0 / self.fps
        next_time = time.monotonic()
        while not self._stop.is_set():
            produced = 0
            with VideoReader(self.path) as reader:
                for frame in reader:
                    if self._stop.is_set() or (self.max_frames is not None and self.captured >= self.max_frames):
                        return
                    delay = next_time - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    next_time = max(next_time + period, time.monotonic() - period)  # no catch-up bursts
                    self._publish(frame)
                    produced += 1
            if not self.loop or produced == 0:
                return


class CameraSource(FrameSource):
    """OpenCV capture of a camera index, a /dev/videoN path or a stream URL."""

    def __init__(self, spec: SourceSpec, fps: float | None = None, size: tuple[int, int] | None = None) -> None:
        import cv2

        super().__init__(spec.text)
        self._cv2 = cv2
        self.spec = spec
        cap = _quiet_open(cv2, spec.target)
        if not cap.isOpened():
            cap.release()
            hint = {"camera": "is a camera connected, and is it free?", "device": "does the device exist, and "
                    "may this user open it?", "url": "is the URL reachable and the stream running?"}[spec.kind]
            raise SourceError(f"{spec.text}: cannot open the {spec.kind} ({hint})")
        if size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ask the driver for the newest frame, not a backlog
        reported = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps or (reported if 1 <= reported <= 240 else 30.0))
        self._cap = cap

    def _capture(self) -> None:
        """Read continuously. A camera or live stream blocks in read() until its next frame; a recorded stream
        (a file over HTTP, VOD) would decode as fast as possible, so reads are held to the nominal fps."""
        failures = 0
        period = 1.0 / self.fps
        next_time = time.monotonic()
        try:
            while not self._stop.is_set():
                delay = next_time - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                next_time = max(next_time + period, time.monotonic() - period)
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    failures += 1
                    if failures >= MAX_READ_FAILURES:
                        raise SourceError(f"no frames after {failures} attempts (source lost or ended)")
                    self._stop.wait(0.01)
                    continue
                failures = 0
                self._publish(np.ascontiguousarray(bgr[:, :, ::-1]))
        finally:
            self._cap.release()


def _quiet_open(cv2, target):
    """cv2.VideoCapture without OpenCV's multi-line backend warnings (our error is one line)."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        return cv2.VideoCapture(target)
    previous = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(target)
    finally:
        logging_api.setLogLevel(previous)


def open_source(value: str, fps: float | None = None, loop: bool = False,
                max_frames: int | None = None) -> FrameSource:
    """Open (not yet start) the source a ``--driving`` value names; SourceError/MediaError when it cannot."""
    spec = parse_source(value)
    if spec.kind == "file":
        return FileSource(spec.target, fps=fps, loop=loop, max_frames=max_frames)
    return CameraSource(spec, fps=fps)
