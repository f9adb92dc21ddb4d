#!/usr/bin/env python
"""Build the built-in sample media in personalive_trt/assets/ (run once; the outputs are committed).

* ``sample_reference.png``: scikit-image's ``astronaut`` photo (Eileen Collins, NASA, public domain), 512x512,
  unchanged: the CLI frames it like any user photo.
* ``sample_driving.mp4``: 2.4 s, 25 fps, 512x512 H.264 with a mono AAC track. The astronaut's head gently
  nods, turns, tilts and leans over a static body (a smooth displacement field: the head moves rigidly, the
  surroundings stretch slightly, nothing is cut out or inpainted). The frame is the same head-and-shoulders
  framing that ``framing.frame_reference`` gives the photo, so the clip also works with ``--no-crop``. The
  audio is a soft synthetic hum with a syllable-like rhythm: it exists so that audio muxing is exercised.

Every pixel and sample is a deterministic function of the photo (no randomness); libx264 runs single-threaded
so that the same FFmpeg build gives the same bytes. Only this script uses scikit-image (``pip install
scikit-image``); the package itself reads the committed files.

Usage: python scripts/make_sample.py [--out-dir personalive_trt/assets]
"""
from __future__ import annotations

import argparse
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from personalive_trt.media import VideoWriter

ASSETS = Path(__file__).resolve().parents[1] / "personalive_trt" / "assets"
SIZE = 512
FPS = 25
SECONDS = 2.4  # 60 frames: one full cycle of every motion, so the clip loops smoothly
AUDIO_RATE = 44100

# The astronaut photo's face, measured once with framing.detect_face (MediaPipe short-range box) and
# hard-coded so the clip does not depend on the detector version.
FACE_CX, FACE_CY, FACE_SIDE = 225.2, 126.8, 95.3
# Same framing rule as framing.frame_reference (margin 2.1, face centre at 52% of the height).
CROP_SIDE = 2.1 * FACE_SIDE
CROP_CX, CROP_CY = FACE_CX, FACE_CY + (0.5 - 0.52) * CROP_SIDE
# The moving head (source pixels): hair and face ellipses, read off the photo; it pivots about the neck.
HAIR_CENTRE, HAIR_AXES = (228.0, 76.0), (76, 62)
FACE_CENTRE, FACE_AXES = (226.0, 128.0), (54, 66)
NECK_PIVOT = np.array([FACE_CX, FACE_CY + 62.0])


def head_motion(t: float) -> dict[str, float]:
    """Head pose at time t (s): small, smooth, periodic over the clip (angles in degrees, shifts in px)."""
    phase = 2 * math.pi * t / SECONDS
    return {
        "roll": 5.0 * math.sin(phase),                                        # tilt to the shoulder and back
        "turn": 5.0 * math.sin(phase + math.pi / 3) * math.sin(phase / 2) ** 2 + 3.0 * math.sin(phase),
        "nod": 4.0 * math.sin(2 * phase),                                     # two nods
        "scale": 1.0 + 0.03 * math.sin(phase) * math.cos(phase),               # lean in and out
    }


def head_affine(t: float) -> np.ndarray:
    """2x3 affine (source -> source pixels) moving the head about the neck pivot.

    Roll is an in-plane rotation; turn is a horizontal shift with a slight horizontal squeeze (a 2-D stand-in
    for yaw), nod a vertical shift with a slight vertical squeeze (pitch), scale a lean towards the camera.
    """
    m = head_motion(t)
    angle = math.radians(m["roll"])
    squeeze_x = 1.0 - 0.012 * abs(m["turn"])
    squeeze_y = 1.0 - 0.010 * abs(m["nod"])
    linear = m["scale"] * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = linear @ np.diag([squeeze_x, squeeze_y])
    shift = np.array([m["turn"], m["nod"]])
    offset = NECK_PIVOT + shift - linear @ NECK_PIVOT
    return np.hstack([linear, offset[:, None]])


def crop_affine() -> np.ndarray:
    """2x3 affine mapping the framing square of the source onto the SIZE x SIZE output."""
    k = SIZE / CROP_SIDE
    return np.array([[k, 0, SIZE / 2 - k * CROP_CX], [0, k, SIZE / 2 - k * CROP_CY]])


def head_weight(shape: tuple[int, int]) -> np.ndarray:
    """How much each source pixel follows the head, in [0, 1] (float32).

    1 on the hair and face (two ellipses), falling smoothly to 0 over ~30 px around them, so the background
    and collar next to the head stretch a little instead of tearing or showing a cut-out seam.
    """
    weight = np.zeros(shape, np.float32)
    for (cx, cy), axes in ((HAIR_CENTRE, HAIR_AXES), (FACE_CENTRE, FACE_AXES)):
        cv2.ellipse(weight, (round(cx), round(cy)), axes, 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(weight, (0, 0), sigmaX=10.0)


def render_frames(photo: np.ndarray) -> list[np.ndarray]:
    """The driving clip's frames: the photo seen through the crop, with the head region displaced per frame.

    Backward mapping: output pixel q looks at source point p = C^-1 q (the framing crop) moved towards where
    the head transform A brought it from, p + w(p) (A^-1 p - p), with w the head weight. One interpolation
    per frame; w = 1 moves the head rigidly, w = 0 leaves the body and background still.
    """
    weight = head_weight(photo.shape[:2])
    crop_inverse = np.linalg.inv(np.vstack([crop_affine(), [0, 0, 1]]))
    qy, qx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    points = np.stack([qx.ravel(), qy.ravel(), np.ones(qx.size)])
    px, py = (crop_inverse @ points)[:2]
    w = cv2.remap(weight, px.reshape(SIZE, SIZE).astype(np.float32), py.reshape(SIZE, SIZE).astype(np.float32),
                  cv2.INTER_LINEAR).ravel().astype(np.float64)
    frames = []
    for index in range(round(SECONDS * FPS)):
        head_inverse = np.linalg.inv(np.vstack([head_affine(index / FPS), [0, 0, 1]]))
        hx, hy = (head_inverse @ np.stack([px, py, np.ones(px.size)]))[:2]
        map_x = (px + w * (hx - px)).reshape(SIZE, SIZE).astype(np.float32)
        map_y = (py + w * (hy - py)).reshape(SIZE, SIZE).astype(np.float32)
        frames.append(cv2.remap(photo, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return frames


def render_audio(seconds: float) -> np.ndarray:
    """A soft voiced hum (mono float32): 150 Hz with harmonics, pitch glides and a ~4 Hz syllable rhythm."""
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    pitch = 150.0 * (1.0 + 0.08 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / AUDIO_RATE
    voice = sum(np.sin(k * phase) / k**1.5 for k in range(1, 7))
    syllables = np.clip(np.sin(2 * np.pi * 4.2 * t) * 0.6 + 0.4, 0, None) ** 1.5
    fade = np.clip(np.minimum(t, seconds - t) / 0.05, 0, 1)
    signal = voice * syllables * fade
    return (0.25 * signal / np.abs(signal).max()).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with av.open(str(path), mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
        pcm = np.clip(np.rint(samples * 32767), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args()
    from skimage import data  # only this script needs scikit-image

    photo = np.ascontiguousarray(data.astronaut())
    assert photo.shape == (SIZE, SIZE, 3) and photo.dtype == np.uint8, photo.shape
    args.out_dir.mkdir(parents=True, exist_ok=True)
    reference = args.out_dir / "sample_reference.png"
    Image.fromarray(photo).save(reference, optimize=True)

    driving = args.out_dir / "sample_driving.mp4"
    frames = render_frames(photo)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "hum.wav"
        write_wav(wav, render_audio(SECONDS))
        with VideoWriter(driving, fps=FPS, size=(SIZE, SIZE), audio_source=wav, crf=26, preset="veryslow",
                         encoder_options={"threads": "1"}) as writer:
            for frame in frames:
                writer.write(frame)
    for path in (reference, driving):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
