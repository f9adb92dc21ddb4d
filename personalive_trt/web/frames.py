"""The protocol's frame codec: driving JPEGs in (decoded and framed on the worker thread), output JPEGs out."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from personalive_trt.live.worker import MalformedFrameError
from personalive_trt.web.settings import ServeSettings


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


def make_frame_decoder(resolution: int, settings: ServeSettings) -> Callable[[bytes], np.ndarray]:
    """A ``prepare`` for the worker: JPEG/PNG bytes -> framed (R, R, 3) RGB.

    Bytes that do not decode, or decode to absurd dimensions, raise :class:`MalformedFrameError` (the frame is
    skipped); anything else that fails is a failure of the session, not of the client's data. A new decoder
    per session, as the face framer follows one video.
    """
    import cv2

    from personalive_trt.media.framing import Framing

    frame = Framing(resolution, settings.crop).driving()

    def decode(data: bytes) -> np.ndarray:
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        except cv2.error as exc:  # some corrupt streams make the codec raise instead of returning None
            raise MalformedFrameError(f"{len(data)} bytes that do not decode as an image "
                                      f"({str(exc).strip().splitlines()[-1][:80]})") from exc
        if bgr is None:
            raise MalformedFrameError(f"{len(data)} bytes that do not decode as an image")
        h, w = bgr.shape[:2]
        if min(h, w) < 16 or max(h, w) > settings.max_frame_side:
            raise MalformedFrameError(f"frame is {w}x{h}; expected sides within 16..{settings.max_frame_side}")
        return frame(np.ascontiguousarray(bgr[:, :, ::-1]))

    return decode
