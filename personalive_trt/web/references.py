"""Reference portraits: uploads verified and framed, then kept by random id in a bounded store.

A session names its reference by the id ``POST /api/reference`` returned, so the store is the one piece of
state an upload request and a WebSocket session share. It is a small awaitable ``add``/``get`` interface on
purpose: the Ray app, whose sessions run in other processes than the upload, keeps one :class:`ReferenceStore`
in its registry replica and reaches it through the same two calls (``personalive_trt.web.ray_app``).
"""
from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections import OrderedDict

import numpy as np

from personalive_trt.web.settings import ServeSettings


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

    async def add(self, image: np.ndarray) -> str:
        key = secrets.token_urlsafe(12)
        self._items[key] = image
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return key

    async def get(self, key: object) -> np.ndarray | None:
        return self._items.get(key) if isinstance(key, str) else None


def decode_reference(data: bytes, resolution: int, settings: ServeSettings) -> np.ndarray:
    """Verify and decode an uploaded image, then frame it (runs in the thread pool: PIL + face detection).

    The bytes are checked for what they are, never trusted by file name or content type: PIL must identify
    them, their declared size must be within ``max_image_pixels`` before decoding, and the full decode must
    succeed (``media.read_image``: EXIF orientation, alpha over white, 16-bit grey).
    """
    from PIL import Image, UnidentifiedImageError

    from personalive_trt import media
    from personalive_trt.media.framing import Framing, NoFaceError

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
    try:
        return Framing(resolution, settings.crop).reference(image)
    except NoFaceError:
        raise UploadRejected(422, "no face found in the image; use a portrait with the face clearly visible")
