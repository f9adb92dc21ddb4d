"""The protocol's frame codec: driving JPEGs in (decoded and framed on the worker thread), output JPEGs out."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from personalive_trt.live.worker import MalformedFrameError
from personalive_trt.web.image_header import HeaderError, image_size
from personalive_trt.web.settings import ServeSettings


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


def make_frame_decoder(resolution: int, settings: ServeSettings) -> Callable[[bytes], np.ndarray]:
    """A ``prepare`` for the worker: JPEG/PNG/WebP bytes -> framed (R, R, 3) RGB.

    The header's dimensions are checked before anything is decoded (:mod:`.image_header`): a frame of another
    format, or whose header declares a side outside ``16..max_frame_side``, raises
    :class:`MalformedFrameError` without reaching the decoder, as do bytes that then fail to decode (the frame
    is skipped); anything else that fails is a failure of the session, not of the client's data. A new
    decoder per session, as the face framer follows one video.
    """
    import cv2

    from personalive_trt.media.framing import Framing

    frame = Framing(resolution, settings.crop).driving()

    def check_sides(width: int, height: int, verb: str) -> None:
        if min(width, height) < 16 or max(width, height) > settings.max_frame_side:
            raise MalformedFrameError(f"frame {verb} {width}x{height}; expected sides within "
                                      f"16..{settings.max_frame_side}")

    def decode(data: bytes) -> np.ndarray:
        try:
            _, width, height = image_size(data)
        except HeaderError as exc:
            raise MalformedFrameError(str(exc)) from exc
        check_sides(width, height, "declares")
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # some corrupt streams make the codec raise instead of returning None
            raise MalformedFrameError(f"{len(data)} bytes that do not decode as an image "
                                      f"({str(exc).strip().splitlines()[-1][:80]})") from exc
        if bgr is None:
            raise MalformedFrameError(f"{len(data)} bytes that do not decode as an image")
        check_sides(bgr.shape[1], bgr.shape[0], "decodes to")  # the header and the decoder agree; if not, refuse
        return frame(np.ascontiguousarray(bgr[:, :, ::-1]))

    return decode
