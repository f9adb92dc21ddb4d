"""The protocol's frame codec: driving JPEGs in (decoded and framed on the worker thread), output JPEGs out."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from personalive_trt.web.settings import ServeSettings


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
