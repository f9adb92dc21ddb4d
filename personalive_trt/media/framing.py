"""Face framing: turn arbitrary photos and videos into the 512x512 head-and-shoulders squares the model expects.

PersonaLive was trained on, and demonstrates with, portraits where the face fills about half of a square
frame: in the demo reference (``media/ref_image.png``) MediaPipe's face box is 0.47 of the side and its centre
sits at 50% of the width and 52% of the height, leaving room for the hair above and the neck and shoulders
below. :func:`frame_reference` reproduces that framing for any photo; :class:`DrivingFramer` does the same for
every frame of a driving video while keeping the crop steady; :func:`resize_square` is the ``--no-crop`` path.

Faces are found with MediaPipe face detection (BlazeFace; the model ships inside the ``mediapipe`` wheel). The
short-range model (faces within ~2 m, i.e. portraits and webcams) is tried first, then the full-range model
(small faces in wide shots). Their boxes differ systematically (the full-range box is ~5% larger and sits
~6% of its size higher: measured on the demo reference and driving frames), so full-range boxes are mapped
onto the short-range convention and both give the same framing.

All images are ``HxWx3`` uint8 RGB arrays.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from personalive_trt.media.io import MediaError

__all__ = [
    "DrivingFramer",
    "Framing",
    "FaceBox",
    "FaceDetector",
    "NoFaceError",
    "SquareBox",
    "crop_square",
    "detect_face",
    "frame_reference",
    "framing_box",
    "resize_square",
]

#: Crop side as a multiple of the (short-range) face box side: 2.1 gives the demo reference's framing.
DEFAULT_MARGIN = 2.1
#: Where the face box centre lands vertically in the crop (0 = top, 1 = bottom); >0.5 leaves room for hair.
DEFAULT_FACE_Y = 0.52
# Resolution at which FaceDetector searches a region, e.g. DrivingFramer's current crop (MediaPipe then
# works at 128 px).
_ROI_SIZE = 256
# Before any face is found, DrivingFramer runs the slow tiled search on every this-many-th frame.
_THOROUGH_EVERY = 25
# Full-range -> short-range box mapping (see the module docstring).
_FULL_RANGE_SCALE = 0.95
_FULL_RANGE_SHIFT_Y = 0.06


class NoFaceError(MediaError):
    """No face was found where one is required (the caller adds the file name)."""


@dataclass(frozen=True)
class FaceBox:
    """A square face box in pixels: centre (cx, cy), side, and the detector's confidence."""

    cx: float
    cy: float
    side: float
    score: float = 1.0


@dataclass(frozen=True)
class SquareBox:
    """A square crop region in source pixels (may extend past the image; the outside is padded)."""

    cx: float
    cy: float
    side: float


# --------------------------------------------------------------------------------------------------- detection


class FaceDetector:
    """MediaPipe face detection, short-range model first, full-range as a fallback.

    The MediaPipe graphs are built lazily (importing mediapipe takes ~1 s) and are not thread-safe, hence the
    lock. One instance can be reused for any number of images of any size.
    """

    def __init__(self, min_confidence: float = 0.5):
        self.min_confidence = min_confidence
        self._models: dict[int, object] = {}
        self._lock = threading.Lock()

    def _model(self, selection: int):
        if selection not in self._models:
            with native_stderr_silenced():  # TF Lite / absl start-up chatter on the first process() call
                import mediapipe as mp  # heavy import, only when framing is actually used

                model = mp.solutions.face_detection.FaceDetection(
                    model_selection=selection, min_detection_confidence=self.min_confidence
                )
                mediapipe_process(model, np.zeros((64, 64, 3), np.uint8))
            self._models[selection] = model
        return self._models[selection]

    def detect(self, image: np.ndarray, thorough: bool = False, region: SquareBox | None = None) -> FaceBox | None:
        """The main face in ``image`` (in short-range box convention, image pixels), or None.

        ``region``: search only inside this square (resampled to 256 px, padded where it leaves the image).
        Where a face is expected to be about half the region, as in a framing crop, that is the short-range
        model's sweet spot whatever the image size, and it ignores other people in the frame.

        The main face is the largest of the confident ones (score within 0.1 of the best): the subject is
        usually the biggest face, but a big low-score false positive (a patterned shirt) must not win.

        MediaPipe shrinks the whole image to 128 (short-range) or 192 (full-range) pixels, so a face smaller
        than ~8% of the image side is missed. ``thorough=True`` then also searches square tiles (overlapping
        by a third) of 1/2 and of 1/4 of the short image side with the short-range model (a full-body
        photo, a wide shot); a face cut by a tile edge scores low, the tile holding it whole wins. That
        costs ~3-6 ms per tile (~0.8 s on a 1080p frame without any face, 2 CPU cores) and only runs when
        the whole-image pass finds nothing.
        """
        _check_rgb(image)
        if region is not None:
            x0, y0, side = _pixel_bounds(region)
            found = self.detect(crop_square(image, region, _ROI_SIZE, "replicate"))
            if found is None:
                return None
            scale = side / _ROI_SIZE
            return FaceBox(x0 + found.cx * scale, y0 + found.cy * scale, found.side * scale, found.score)
        faces = self._detect_once(image)
        if not faces and thorough:
            height, width = image.shape[:2]
            tile, smallest = min(height, width) // 2, max(96, min(height, width) // 4)
            while tile >= smallest:
                step = tile * 2 // 3
                for y0 in _tile_starts(height, tile, step):
                    for x0 in _tile_starts(width, tile, step):
                        tile_image = image[y0:y0 + tile, x0:x0 + tile]
                        faces += [FaceBox(f.cx + x0, f.cy + y0, f.side, f.score)
                                  for f in self._detect_once(tile_image, models=(0,))]
                tile //= 2
        if not faces:
            return None
        best = max(f.score for f in faces)
        return max((f for f in faces if f.score >= best - 0.1), key=lambda f: f.side)

    def _detect_once(self, image: np.ndarray, models: tuple[int, ...] = (0, 1)) -> list[FaceBox]:
        """All faces of one MediaPipe pass: short-range model, or full-range when short-range finds none."""
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        with self._lock:
            for selection in models:
                result = mediapipe_process(self._model(selection), image)
                boxes = [_to_face_box(d, width, height, selection) for d in (result.detections or ())]
                boxes = [b for b in boxes if b.side >= 4]
                if boxes:
                    return boxes
        return []

    def close(self) -> None:
        with self._lock:
            for model in self._models.values():
                model.close()
            self._models.clear()


def mediapipe_process(model, image: np.ndarray):
    """model.process(image) without the protobuf deprecation warning mediapipe 0.10.14 triggers on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                                category=UserWarning)
        return model.process(image)


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a moment (C++ logging bypasses Python's sys.stderr).

    Only wraps the detector's one-off start-up; if the descriptors cannot be juggled, nothing is silenced.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _to_face_box(detection, width: int, height: int, selection: int) -> FaceBox:
    rel = detection.location_data.relative_bounding_box
    w, h = rel.width * width, rel.height * height
    side = max(w, h)
    cx, cy = (rel.xmin * width) + w / 2, (rel.ymin * height) + h / 2
    if selection == 1:
        cy += _FULL_RANGE_SHIFT_Y * side
        side *= _FULL_RANGE_SCALE
    return FaceBox(cx=cx, cy=cy, side=side, score=float(detection.score[0]))


_default_detector: FaceDetector | None = None
_default_lock = threading.Lock()


def _shared_detector() -> FaceDetector:
    global _default_detector
    with _default_lock:
        if _default_detector is None:
            _default_detector = FaceDetector()
        return _default_detector


def detect_face(image: np.ndarray) -> FaceBox | None:
    """The largest face in ``image`` with a shared detector, or None."""
    return _shared_detector().detect(image)


# --------------------------------------------------------------------------------------------------- geometry


def framing_box(face: FaceBox, margin: float = DEFAULT_MARGIN, face_y: float = DEFAULT_FACE_Y) -> SquareBox:
    """The portrait crop for a face: side ``margin`` x face side, face centre at (0.5, ``face_y``) of the crop."""
    side = face.side * margin
    return SquareBox(cx=face.cx, cy=face.cy + (0.5 - face_y) * side, side=side)


def crop_square(image: np.ndarray, box: SquareBox, size: int = 512, pad_mode: str = "replicate") -> np.ndarray:
    """Crop ``box`` from ``image`` (padding whatever lies outside) and resize it to ``size`` x ``size``.

    ``pad_mode``: ``"replicate"`` repeats the border pixels (background and clothes continue, which the model
    handles better than a hard edge) or ``"constant"`` pads with black. Shrinking uses area averaging (no
    aliasing on large photos), enlarging uses bicubic interpolation.
    """
    if pad_mode not in ("replicate", "constant"):
        raise ValueError(f"pad_mode must be 'replicate' or 'constant', got {pad_mode!r}")
    _check_rgb(image)
    height, width = image.shape[:2]
    x0, y0, side = _pixel_bounds(box)
    x1, y1 = x0 + side, y0 + side
    inner = image[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    if inner.size == 0:  # the box lies entirely outside: there is nothing to replicate from
        inner = image[min(max(y0, 0), height - 1):min(max(y0, 0), height - 1) + 1,
                      min(max(x0, 0), width - 1):min(max(x0, 0), width - 1) + 1]
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = x0 + 1, y0 + 1
    pads = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if any(pads):
        border = cv2.BORDER_REPLICATE if pad_mode == "replicate" else cv2.BORDER_CONSTANT
        inner = cv2.copyMakeBorder(inner, *pads, borderType=border, value=(0, 0, 0))
    return _resize(inner, size)


def _pixel_bounds(box: SquareBox) -> tuple[int, int, int]:
    """Integer (x0, y0, side) of a box: crops are whole pixels, so steady boxes give identical crops."""
    side = max(1, int(round(box.side)))
    return int(round(box.cx - side / 2)), int(round(box.cy - side / 2)), side


def resize_square(image: np.ndarray, size: int = 512) -> np.ndarray:
    """The ``--no-crop`` path: resize the whole frame to ``size`` x ``size``, aspect ratio NOT kept.

    This is what the original PersonaLive web demo does with webcam frames; it suits inputs that are already
    square portraits. Wide frames come out horizontally squeezed, so prefer the face-framing path for those.
    """
    _check_rgb(image)
    return _resize(image, size)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image)
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)


def _centre_box(image: np.ndarray) -> SquareBox:
    height, width = image.shape[:2]
    return SquareBox(cx=width / 2, cy=height / 2, side=float(min(height, width)))


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


# --------------------------------------------------------------------------------------------------- reference


def frame_reference(
    image: np.ndarray,
    size: int = 512,
    margin: float = DEFAULT_MARGIN,
    face_y: float = DEFAULT_FACE_Y,
    pad_mode: str = "replicate",
    detector: FaceDetector | None = None,
) -> np.ndarray:
    """Frame a portrait photo like the PersonaLive demo reference: a ``size`` x ``size`` head-and-shoulders crop.

    The crop is a square of side ``margin`` x the face box, centred on the face horizontally with the face
    centre at ``face_y`` of the height; parts outside the photo are padded (``pad_mode``). The largest face
    is used when there are several. Raises :class:`NoFaceError` when no face is found.
    """
    face = (detector or _shared_detector()).detect(image, thorough=True)
    if face is None:
        raise NoFaceError("no face found in the image; expected a photo with a clearly visible face")
    return crop_square(image, framing_box(face, margin, face_y), size, pad_mode)


# --------------------------------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Framing:
    """Frame around the face, or resize whole frames (``--no-crop``): decided once per session, for its reference
    and its driving frames alike (file mode, live mode and the web app all come through here).

    Args:
        size (`int`): the canvas side.
        crop (`bool`, defaults to True): frame the face; False resizes whole frames (:func:`resize_square`).
    """

    size: int
    crop: bool = True

    def reference(self, image: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
        """The reference portrait, framed (or resized). With ``source``, a :class:`NoFaceError` names it and the
        ``--no-crop`` way around."""
        if not self.crop:
            return resize_square(image, self.size)
        try:
            return frame_reference(image, size=self.size)
        except NoFaceError as exc:
            if source is None:
                raise
            raise NoFaceError(f"{source}: {exc} (use --no-crop to skip face framing)") from exc

    def driving(self) -> Callable[[np.ndarray], np.ndarray]:
        """A framer for one driving video or stream: a new one per video (the face crop follows it frame to frame)."""
        if self.crop:
            return DrivingFramer(size=self.size)
        return functools.partial(resize_square, size=self.size)


# --------------------------------------------------------------------------------------------------- driving


class DrivingFramer:
    """Frame every frame of a driving video around the face, with a crop box that stays still.

    Per-frame detection boxes jitter by a few pixels and the crop must not: a shaking crop reads as head
    motion to the model. So the crop box is filtered:

    * Detection runs on every ``detect_every``-th frame (1 = every frame), inside the current crop (then the
      whole frame if the face is not there); the newest detection, framed like the reference, is the target.
    * Dead-band with hysteresis: while the target's centre stays within ``dead_band`` x the crop side of the
      box's centre and its side within ``scale_dead_band`` (relative) of the box's side, the box does not
      move at all. Once either leaves its band, the box follows with exponential smoothing (``smoothing`` =
      fraction of the remaining gap closed per frame) until both are within a quarter of their bands, then
      stops again. So the crop is perfectly still for a still head (and through the size changes that nods
      and turns cause in the face box, hence the wider scale band) and glides after a real move, without
      lagging a band-width behind.
    * A frame where no face is found keeps the last box (a hand over the face, motion blur).
    * Until the first face is ever found the crop is the centred largest square of the frame; the first
      detection then sets the box directly (no glide from the centre crop), refined by two searches inside
      it so that it already follows the in-crop detections that come after.

    Because the crop follows the head, large head translations in the driving video are mostly removed from
    the framed frames (rotation and expression are kept). Call :meth:`reset` between videos.
    """

    def __init__(
        self,
        size: int = 512,
        margin: float = DEFAULT_MARGIN,
        face_y: float = DEFAULT_FACE_Y,
        detect_every: int = 1,
        smoothing: float = 0.25,
        dead_band: float = 0.05,
        scale_dead_band: float = 0.12,
        pad_mode: str = "replicate",
        detector: FaceDetector | None = None,
    ):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if dead_band < 0 or scale_dead_band < 0:
            raise ValueError(f"dead bands must be >= 0, got {dead_band}, {scale_dead_band}")
        self.size = size
        self.margin = margin
        self.face_y = face_y
        self.detect_every = detect_every
        self.smoothing = smoothing
        self.dead_band = dead_band
        self.scale_dead_band = scale_dead_band
        self.pad_mode = pad_mode
        self._detector = detector or _shared_detector()
        self.reset()

    def reset(self) -> None:
        """Forget the box and the frame counter (start of a new video)."""
        self.box: SquareBox | None = None  # the crop in use; None until a face has been seen
        self.target: SquareBox | None = None
        self.faces_found = 0
        self._moving = False
        self._index = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame one driving frame: ``size`` x ``size`` x 3 uint8."""
        _check_rgb(frame)
        if self._index % self.detect_every == 0:
            face = self._detect(frame)
            if face is not None:
                self.faces_found += 1
                self.target = framing_box(face, self.margin, self.face_y)
                if self.box is None:
                    # First face: take its box at once, refined by searches inside it, because later
                    # detections run inside the crop, where the face is bigger and the box a bit different.
                    self.box = self.target
                    for _ in range(2):
                        refined = self._detect(frame)
                        if refined is not None:
                            self.box = self.target = framing_box(refined, self.margin, self.face_y)
        self._index += 1
        if self.box is None:
            return crop_square(frame, _centre_box(frame), self.size, self.pad_mode)
        self._follow()
        return crop_square(frame, self.box, self.size, self.pad_mode)

    def _detect(self, frame: np.ndarray) -> FaceBox | None:
        """Find the face: inside the current crop first, then in the whole frame.

        The current crop is where the face almost certainly is, at about half its side: the detector's sweet
        spot whatever the frame size. Before any face is known the whole frame is searched, thoroughly
        (tiles, for small faces in wide shots) on every 25th frame only, as that is slow on faceless frames.
        """
        if self.box is not None:
            face = self._detector.detect(frame, region=self.box)
            return face if face is not None else self._detector.detect(frame)
        return self._detector.detect(frame, thorough=self._index % _THOROUGH_EVERY == 0)

    def _follow(self) -> None:
        box, target = self.box, self.target
        shift = max(abs(target.cx - box.cx), abs(target.cy - box.cy)) / box.side
        zoom = abs(target.side / box.side - 1.0)
        if not self._moving and (shift > self.dead_band or zoom > self.scale_dead_band):
            self._moving = True
        if self._moving and shift <= self.dead_band / 4 and zoom <= self.scale_dead_band / 4:
            self._moving = False
        if self._moving:
            k = self.smoothing
            self.box = SquareBox(cx=box.cx + k * (target.cx - box.cx), cy=box.cy + k * (target.cy - box.cy),
                                 side=box.side + k * (target.side - box.side))
