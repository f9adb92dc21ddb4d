"""Image dimensions from the header alone, so an oversized driving frame is refused before it is decoded.

A decoder allocates what the header declares: a 20000 x 20000 PNG of one colour is under 2 MiB on the wire
and over a gigabyte once decoded. So the protocol reads the width and height from the bytes a format puts
first (JPEG's start-of-frame segment, PNG's IHDR chunk, WebP's VP8/VP8L/VP8X chunk), checks them against the
limit, and only then lets OpenCV decode. Any other format (BMP, TIFF, GIF...) is refused here too: the page
sends JPEG, and every decoder we do not allow is one more parser a client can reach.

Pure Python over the first bytes of the message (a JPEG's segments before its start-of-frame are at most a
few tens of KiB, EXIF included), no allocation in proportion to the declared size.
"""
from __future__ import annotations

import struct

__all__ = ["HeaderError", "image_size"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field (TEM, RST0..7); SOI/EOI are handled where they may appear.
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


class HeaderError(ValueError):
    """The bytes are not a JPEG, PNG or WebP whose header declares a size (one line saying what was found)."""


def image_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` as the header of ``data`` declares them; raises :class:`HeaderError`."""
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_size(data))
    if data[:8] == PNG_SIGNATURE:
        return ("png", *_png_size(data))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("webp", *_webp_size(data))
    raise HeaderError(f"{len(data)} bytes that are not a JPEG, PNG or WebP image")


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length (13), type, then width and height (big-endian).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk first")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise HeaderError(f"JPEG with a broken segment at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes may pad before a marker
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI, or scan data before any start-of-frame
            raise HeaderError("JPEG without a start-of-frame segment before its image data")
        if i + 2 > n:
            break
        length = struct.unpack(">H", data[i:i + 2])[0]
        if length < 2:
            raise HeaderError(f"JPEG segment with a length of {length}")
        if marker in JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            if height == 0:  # the height would come later (a DNL segment): no size to check up front
                raise HeaderError("JPEG whose start-of-frame declares no height")
            return width, height
        i += length
    raise HeaderError("JPEG cut off before its start-of-frame segment")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:  # lossy: frame tag (3), start code, 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("WebP (VP8) without its start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:  # lossless: signature, 14-bit width-1 and height-1
        if data[20] != 0x2F:
            raise HeaderError("WebP (VP8L) without its signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas width-1 and height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise HeaderError(f"WebP with an unknown or cut-off first chunk {chunk!r}")
