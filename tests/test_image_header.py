"""Driving frames' sizes read from their headers, before any decoder runs (personalive_trt/web/image_header.py)."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from personalive_trt.live.testing import png_bomb
from personalive_trt.live.worker import MalformedFrameError
from personalive_trt.web.frames import make_frame_decoder
from personalive_trt.web.image_header import HeaderError, image_size
from personalive_trt.web.settings import ServeSettings


def encoded(fmt: str, size=(70, 40), **params) -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    if params.pop("rgba", False):  # an alpha channel that is not all opaque (else the encoder drops it)
        image.putalpha(Image.fromarray(np.full((size[1], size[0]), 128, np.uint8)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("fmt, params, kind", [
    ("JPEG", {}, "jpeg"),
    ("JPEG", {"progressive": True}, "jpeg"),  # SOF2
    ("JPEG", {"exif": b"Exif\0\0" + b"\0" * 4000}, "jpeg"),  # an APP1 segment before the start-of-frame
    ("PNG", {}, "png"),
    ("WEBP", {"quality": 80}, "webp"),  # VP8
    ("WEBP", {"lossless": True}, "webp"),  # VP8L
    ("WEBP", {"quality": 80, "rgba": True}, "webp"),  # VP8X (alpha)
])
def test_header_sizes_match_what_the_decoder_makes(fmt, params, kind):
    data = encoded(fmt, **params)
    assert image_size(data) == (kind, 70, 40)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (40, 70)


@pytest.mark.parametrize("case", ["bmp", "gif", "tiff", "garbage", "empty", "jpeg_cut_before_sof", "png_no_ihdr",
                                  "webp_cut"])
def test_other_formats_and_broken_headers_are_refused_in_one_line(case):
    jpeg = encoded("JPEG")
    body = {"bmp": encoded("BMP"), "gif": encoded("GIF"), "tiff": encoded("TIFF"),
            "garbage": np.random.default_rng(1).bytes(300), "empty": b"",
            "jpeg_cut_before_sof": jpeg[:jpeg.index(b"\xff\xc0")],
            "png_no_ihdr": b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a\0b"),
            "webp_cut": encoded("WEBP")[:20]}[case]
    with pytest.raises(HeaderError) as refused:
        image_size(body)
    assert "\n" not in str(refused.value)


def test_a_20000_square_png_under_2_mib_is_refused_without_a_call_to_the_decoder(monkeypatch):
    data = png_bomb()
    assert len(data) < 2 * 2**20 and image_size(data) == ("png", 20000, 20000)
    decode = make_frame_decoder(64, ServeSettings(crop=False))
    calls = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *args: calls.append(args) or real_imdecode(*args))
    with pytest.raises(MalformedFrameError, match=r"frame declares 20000x20000; expected sides within 16\.\.4096"):
        decode(data)
    assert calls == []
    with pytest.raises(MalformedFrameError, match="not a JPEG, PNG or WebP"):
        decode(encoded("BMP"))
    assert calls == []
    assert decode(encoded("JPEG", size=(80, 60))).shape == (64, 64, 3) and len(calls) == 1  # a good frame decodes
