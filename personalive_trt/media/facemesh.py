"""Face crops by MediaPipe FaceMesh: the framing of the original's offline script, reproduced exactly.

The original's ``inference_offline.py`` crops the face of the reference and of every driving frame on its
own (FaceMesh in static-image mode, one face, no smoothing between frames): the box spans all 468
landmarks in integer pixels, a square of 1.1 times its larger side is centred on it and clipped to the
image, and the crop is cut from the full-resolution frame. The crops only feed the motion encoder (resized
to 224 there); the pose path sees the whole frame.

Exactness matters here: a box one pixel off changes the 224 crop, the motion states, and so the keyframe
decisions downstream. So the arithmetic follows the original step for step: landmark pixels are
``int(x * width)`` in double precision (truncation toward zero, also for landmarks left of or above the
image), the square is computed in doubles, clipped to ``width - 1`` / ``height - 1`` (so the last row and
column are never part of a crop) and its corners truncated with ``int()`` to cut the crop.

This is not :mod:`personalive_trt.media.framing` (BlazeFace boxes, steady crops of a whole head-and-shoulders
square for the online path): each module reproduces the framing of one of the original's two paths.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from personalive_trt.media.framing import NoFaceError, mediapipe_process, native_stderr_silenced

__all__ = ["FaceMesh", "FaceMeshCrop", "faceless_frames_error", "frame_ranges", "landmark_box", "square_box"]

#: Side of the crop as a multiple of the larger side of the landmark box (the original's ``scale_bb``).
CROP_SCALE = 1.1


@dataclass(frozen=True)
class FaceMeshCrop:
    """Where the face of one image is, in the original's three stages.

    Args:
        landmarks: (468, 3) float32, FaceMesh's normalised x, y (fractions of the width and height) and z.
        box_raw: (x1, y1, x2, y2) integer pixels spanning every landmark.
        box: (left, top, right, bottom) of the scaled square, clipped to the image, in (float) pixels.
    """

    landmarks: np.ndarray
    box_raw: tuple[int, int, int, int]
    box: tuple[float, float, float, float]

    @property
    def slices(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): the rows and columns cut, ``int()`` of the box."""
        left, top, right, bottom = self.box
        return int(top), int(bottom), int(left), int(right)

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The face crop of ``image`` (the image the landmarks were found in), a view."""
        top, bottom, left, right = self.slices
        return image[top:bottom, left:right]


def landmark_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the integer-pixel box of the landmarks.

    Each landmark's pixel is ``int(x * width)``: the float32 coordinate times the width in double precision,
    truncated toward zero (``np.trunc``), as Python's ``int()`` does in the original."""
    xs = np.trunc(landmarks[:, 0].astype(np.float64) * width).astype(np.int64)
    ys = np.trunc(landmarks[:, 1].astype(np.float64) * height).astype(np.int64)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def square_box(box_raw: tuple[int, int, int, int], width: int, height: int,
               scale: float = CROP_SCALE) -> tuple[float, float, float, float]:
    """(left, top, right, bottom): a square of ``scale`` times the larger side of ``box_raw`` on its centre,
    clipped to [0, width - 1] x [0, height - 1] (the original clips the far edges one pixel short)."""
    x1, y1, x2, y2 = box_raw
    length = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    return (max(0.0, cx - length / 2), max(0.0, cy - length / 2),
            min(width - 1.0, cx + length / 2), min(height - 1.0, cy + length / 2))


class FaceMesh:
    """MediaPipe FaceMesh (legacy solutions API) in static-image mode, one face: each image on its own.

    The graph is built on first use (importing mediapipe takes ~1 s) and is not thread-safe, hence the lock.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    def _mesh(self):
        if self._model is None:
            with native_stderr_silenced():  # TF Lite / absl start-up chatter on the first process() call
                import mediapipe as mp  # heavy import, only when the offline mode runs

                # The original's settings; its other arguments are left at their defaults, as there
                # (detection confidence 0.5, no refined iris landmarks: 468 points).
                self._model = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
                mediapipe_process(self._model, np.zeros((64, 64, 3), np.uint8))
        return self._model

    def find(self, image: np.ndarray) -> FaceMeshCrop | None:
        """The face crop box of ``image`` ((H, W, 3) uint8 RGB), or None where FaceMesh finds no face."""
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"FaceMesh: expected an (H, W, 3) uint8 RGB image, got {got}")
        height, width = image.shape[:2]
        with self._lock:
            result = mediapipe_process(self._mesh(), np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        landmarks = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32)
        box_raw = landmark_box(landmarks, width, height)
        crop = FaceMeshCrop(landmarks, box_raw, square_box(box_raw, width, height))
        top, bottom, left, right = crop.slices
        if bottom <= top or right <= left:  # a degenerate mesh: the original would fail resizing an empty crop
            return None
        return crop

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def faceless_frames_error(faceless: list[int], frames: int, what: str) -> NoFaceError:
    """One error listing every frame (ascending numbers from 0) of ``what`` (the video's file name) in which
    FaceMesh found no face, out of ``frames``: the user sees every bad frame at once."""
    return NoFaceError(f"{what}: FaceMesh found no face in {len(faceless)} of {frames} frames (frame numbers "
                       f"from 0: {frame_ranges(faceless)}); the offline mode crops the face of every frame: trim "
                       "those frames or use --mode stream")


def frame_ranges(indices: list[int]) -> str:
    """Ascending frame numbers as short ranges: [3, 4, 5, 9] -> "3-5, 9"."""
    spans: list[list[int]] = []
    for index in indices:
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
