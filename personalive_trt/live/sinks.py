"""Where live output frames go in ``run`` live mode: an mp4 file, a preview window, a virtual camera.

Each sink is opened (and fails with a one-line :class:`SinkError`) before any model is loaded, so a missing
display or a missing ``pyvirtualcam`` is reported at once, not after a minute of loading.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from personalive_trt.media import MediaError


class SinkError(MediaError):
    """A sink cannot be opened or used (one line naming it and what to do)."""


class FileSink:
    """H.264 mp4 through the atomic :class:`~personalive_trt.media.VideoWriter`: ``close`` finalises it
    (also after Ctrl-C), ``abort`` leaves no file."""

    name = "file"

    def __init__(self, path: str | Path, fps: float, resolution: int) -> None:
        from personalive_trt.media import VideoWriter

        self.path = Path(path)
        self._writer = VideoWriter(self.path, fps=fps, size=(resolution, resolution))

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def write(self, image: np.ndarray, hud: str) -> bool:
        self._writer.write(image)
        return True

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


class PreviewSink:
    """An OpenCV window showing the output with a fps/latency overlay; ``q`` or Esc stops the run."""

    name = "preview"

    def __init__(self, title: str = "personalive-trt") -> None:
        import cv2

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkError("--preview needs a display (DISPLAY is not set); use --output or --virtual-camera")
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error as exc:
            raise SinkError("--preview needs OpenCV with GUI support; the installed build has none "
                            "(opencv-python-headless). Install `opencv-python` in its place, or use "
                            f"--output / --virtual-camera ({str(exc).strip().splitlines()[-1][:80]})") from exc
        self._cv2 = cv2
        self.title = title

    def write(self, image: np.ndarray, hud: str) -> bool:
        cv2 = self._cv2
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        scale = max(0.4, image.shape[0] / 900)
        for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text stays readable
            cv2.putText(bgr, hud, (8, int(24 * scale * 1.6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width,
                        cv2.LINE_AA)
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            self._cv2.destroyWindow(self.title)
            self._cv2.waitKey(1)
        except self._cv2.error:
            pass

    abort = close


class VirtualCameraSink:
    """A virtual webcam (pyvirtualcam: v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS)."""

    name = "virtual-camera"

    def __init__(self, resolution: int, fps: float, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise SinkError("--virtual-camera needs pyvirtualcam: pip install 'personalive-trt[virtual-camera]' "
                            "(and v4l2loopback on Linux, or OBS on Windows/macOS)") from exc
        try:
            self._camera = pyvirtualcam.Camera(width=resolution, height=resolution, fps=fps, device=device,
                                               fmt=pyvirtualcam.PixelFormat.RGB)
        except Exception as exc:  # pyvirtualcam raises RuntimeError/ValueError with a reason; keep it on one line
            reason = " ".join(str(exc).split())[:200]
            raise SinkError(f"--virtual-camera: no virtual camera device available ({reason}); on Linux load "
                            "v4l2loopback: sudo modprobe v4l2loopback exclusive_caps=1") from exc
        self.device = self._camera.device

    def write(self, image: np.ndarray, hud: str) -> bool:
        self._camera.send(np.ascontiguousarray(image))
        return True

    def close(self) -> None:
        self._camera.close()

    abort = close
