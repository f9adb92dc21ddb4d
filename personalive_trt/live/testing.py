"""A stand-in animator for exercising the live and serving paths without a model (a TEST DOUBLE).

:class:`EchoAnimator` has the animator interface the live code uses (``config``, ``fuse_reference``,
``reset``, ``swap_reference``, ``step``, ``count``, ``description``) and the same stream timing: call *k*
returns the frames that entered at call *k - (steps-1)*, the first ``steps-1`` calls return warm-up frames
(the reference). Its "animation" is the driving frame blended with the reference, so a test can tell
output from input; ``step_seconds`` sleeps inside ``step`` (releasing the GIL, as a GPU step does) to
stand in for the model's step time, and ``fuse_seconds`` inside ``fuse_reference`` for the reference fusion
(a start or swap costs that much of the animator's time, as the real one's does). With
``fail_on_black=True`` it fails on demand: a step whose window holds an all-black driving frame (every
pixel below 8) raises :class:`EchoFailure` -- a stand-in for a real animator failure (a CUDA error), which
tests trigger by sending black frames. It does no model work: its frames say
nothing about quality, only about plumbing, pacing, latency and memory. ``personalive-trt serve`` never uses
it; tests and ``scripts/soak.py`` do.

:func:`png_bomb` makes the other thing tests and ``scripts/abuse.py`` send: a valid PNG that is tiny on the wire
and enormous decoded.
"""
from __future__ import annotations

import struct
import time
import zlib
from collections import deque

import numpy as np

from personalive_trt.config import StreamConfig


class EchoFailure(RuntimeError):
    """The echo test double failing on demand (``fail_on_black``): stands in for an animator failure."""


class EchoAnimator:
    """Test double: the pipeline's timing and interface, no model (see the module docstring)."""

    def __init__(self, config: StreamConfig | None = None, step_seconds: float = 0.0,
                 fail_on_black: bool = False, fuse_seconds: float = 0.0) -> None:
        self.config = config or StreamConfig()
        self.step_seconds = step_seconds
        self.fuse_seconds = fuse_seconds
        self.fail_on_black = fail_on_black
        fuse = f", {fuse_seconds * 1000:.0f} ms/fusion" if fuse_seconds > 0 else ""
        self.description = f"echo test double (no model, {step_seconds * 1000:.0f} ms/step{fuse})"
        self.reference: np.ndarray | None = None
        self.count = 0
        self._pipe: deque[np.ndarray] = deque()

    def fuse_reference(self, image: np.ndarray) -> None:
        r = self.config.resolution
        if not (isinstance(image, np.ndarray) and image.shape == (r, r, 3) and image.dtype == np.uint8):
            raise ValueError(f"reference image must be ({r}, {r}, 3) uint8, got {getattr(image, 'shape', None)}")
        if self.fuse_seconds > 0:
            time.sleep(self.fuse_seconds)
        self.reference = image.copy()

    def reset(self) -> None:
        self.reference = None
        self.count = 0
        self._pipe.clear()

    def swap_reference(self, image: np.ndarray) -> None:
        self.reset()
        self.fuse_reference(image)

    def step(self, frames: np.ndarray) -> np.ndarray:
        cfg = self.config
        if self.reference is None:
            raise RuntimeError("fuse_reference must be called before step")
        if frames.shape != (cfg.window, cfg.resolution, cfg.resolution, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be ({cfg.window}, {cfg.resolution}, {cfg.resolution}, 3) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        if self.fail_on_black and (frames.reshape(len(frames), -1).max(axis=1) < 8).any():
            raise EchoFailure("echo test double failing on demand: an all-black driving frame")
        if self.step_seconds > 0:
            time.sleep(self.step_seconds)
        blended = ((frames.astype(np.uint16) * 3 + self.reference.astype(np.uint16)) // 4).astype(np.uint8)
        self._pipe.append(blended)
        self.count += 1
        if self.count < cfg.steps:
            return np.repeat(self.reference[None], cfg.window, axis=0)
        return self._pipe.popleft()


def png_bomb(side: int = 20000) -> bytes:
    """A valid one-bit greyscale PNG of ``side`` x ``side`` black pixels: ~50 KB for 20000, and ``3 * side**2``
    bytes (1.2 GB for 20000) for a decoder that makes it a colour image. Built in ~0.3 s."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
