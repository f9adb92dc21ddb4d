"""Face framing: reference crop, per-video driving crop (stability), --no-crop resize, crop geometry."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_REFERENCE
from personalive_trt.media.framing import (
    DEFAULT_FACE_Y,
    DEFAULT_MARGIN,
    DrivingFramer,
    FaceBox,
    FaceDetector,
    NoFaceError,
    SquareBox,
    crop_square,
    detect_face,
    frame_reference,
    resize_square,
)
from personalive_trt.media import MediaError, VideoReader, read_image
from personalive_trt.media.sample import sample_driving, sample_reference

DEMO_REFERENCE = SHARED_REFERENCE / "media" / "ref_image.png"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return read_image(sample_reference())


def assert_well_framed(framed: np.ndarray, size: int = 512) -> None:
    """The face in a framed image sits where the framing rule puts it (5% of the side), at the right scale."""
    assert framed.shape == (size, size, 3) and framed.dtype == np.uint8
    face = detect_face(framed)
    assert face is not None
    assert abs(face.cx / size - 0.5) < 0.05
    assert abs(face.cy / size - DEFAULT_FACE_Y) < 0.05
    assert face.side / size == pytest.approx(1 / DEFAULT_MARGIN, rel=0.15)


# --------------------------------------------------------------------------------------------------- reference


def test_frame_reference_on_sample(astronaut):
    assert_well_framed(frame_reference(astronaut))
    assert_well_framed(frame_reference(astronaut, size=256), size=256)


@pytest.mark.skipif(not DEMO_REFERENCE.is_file(), reason=f"{DEMO_REFERENCE} not present")
def test_frame_reference_keeps_demo_framing():
    """The demo reference is already framed the PersonaLive way: framing it again barely changes it."""
    image = read_image(DEMO_REFERENCE)
    framed = frame_reference(image)
    assert_well_framed(framed)
    assert np.abs(framed.astype(int) - image).mean() < 12.0


def test_frame_reference_finds_small_face_in_wide_shot(astronaut):
    """A face ~5% of a 1080p frame's width: missed by the whole-image pass, found by the tiled search."""
    canvas = np.full((1080, 1920, 3), 200, np.uint8)
    canvas[400:912, 1200:1712] = astronaut
    direct = detect_face(astronaut)
    found = FaceDetector().detect(canvas, thorough=True)
    assert found is not None
    assert abs(found.cx - (direct.cx + 1200)) < 0.1 * direct.side
    assert abs(found.cy - (direct.cy + 400)) < 0.1 * direct.side
    assert found.side == pytest.approx(direct.side, rel=0.15)
    assert_well_framed(frame_reference(canvas))


def test_frame_reference_no_face():
    blank = np.full((400, 300, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        frame_reference(blank)
    assert issubclass(NoFaceError, MediaError)


def test_frame_reference_rejects_non_rgb():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        frame_reference(np.zeros((64, 64), np.uint8))


# --------------------------------------------------------------------------------------------------- geometry


def test_crop_square_inside_is_exact_crop():
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    out = crop_square(image, SquareBox(cx=30, cy=20, side=16), size=16)
    np.testing.assert_array_equal(out, image[12:28, 22:38])


def test_crop_square_pads_outside():
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :, 0] = np.arange(10)[None, :] * 20  # red grows to the right
    box = SquareBox(cx=10, cy=5, side=10)  # right half lies outside the image
    replicated = crop_square(image, box, size=10)
    np.testing.assert_array_equal(replicated[:, :5, 0], image[:, 5:, 0])
    np.testing.assert_array_equal(replicated[:, 5:, 0], 180)  # the last column, repeated
    constant = crop_square(image, box, size=10, pad_mode="constant")
    np.testing.assert_array_equal(constant[:, 5:], 0)
    far = crop_square(image, SquareBox(cx=100, cy=100, side=8), size=8)  # entirely outside: nearest pixel
    assert far.shape == (8, 8, 3) and np.all(far[:, :, 0] == 180)
    with pytest.raises(ValueError, match="pad_mode"):
        crop_square(image, box, pad_mode="mirror")


def test_resize_square_shapes():
    wide = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert resize_square(wide).shape == (512, 512, 3)
    assert resize_square(wide, 256).shape == (256, 256, 3)
    small = np.random.default_rng(1).integers(0, 255, (100, 80, 3), dtype=np.uint8)
    out = resize_square(small)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    square = np.random.default_rng(2).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_square(square), square)  # already the right size: untouched


# --------------------------------------------------------------------------------------------------- driving


class ScriptedDetector:
    """Returns a scripted sequence of faces (None = no face), to test the box filter exactly."""

    def __init__(self, faces):
        self.faces = list(faces)
        self.calls = 0

    def detect(self, image, thorough=False, region=None):
        face = self.faces[min(self.calls, len(self.faces) - 1)]
        self.calls += 1
        return face


def run_framer(framer: DrivingFramer, frames: int, image: np.ndarray | None = None):
    image = np.zeros((600, 800, 3), np.uint8) if image is None else image
    boxes = []
    for _ in range(frames):
        out = framer(image)
        assert out.shape == (framer.size, framer.size, 3)
        boxes.append(framer.box)
    return boxes


def test_driving_box_ignores_jitter_within_dead_band():
    rng = np.random.default_rng(0)
    faces = [FaceBox(400 + rng.normal(0, 2), 300 + rng.normal(0, 2), 200 * (1 + rng.normal(0, 0.02)))
             for _ in range(200)]
    framer = DrivingFramer(detector=ScriptedDetector(faces))
    boxes = run_framer(framer, 60)
    assert len(set(boxes)) == 1  # not a single pixel of movement
    assert boxes[0].side == pytest.approx(DEFAULT_MARGIN * 200, rel=0.1)


def test_driving_box_follows_a_real_move_and_settles():
    still = [FaceBox(400, 300, 200)] * 3  # first detection + two refinements, then steady
    moved = [FaceBox(480, 300, 200)] * 200  # the head moves 80 px (19% of the crop side)
    framer = DrivingFramer(detector=ScriptedDetector(still + moved))
    boxes = run_framer(framer, 60)
    xs = np.array([b.cx for b in boxes])
    assert xs[0] == 400
    assert np.all(np.diff(xs) >= 0) and np.max(np.diff(xs)) <= 0.25 * 80 + 1e-9  # glides, no jump
    assert abs(xs[-1] - 480) <= framer.dead_band / 4 * boxes[-1].side
    assert len(set(boxes[-10:])) == 1  # then stops


def test_driving_box_kept_when_face_lost_and_centre_crop_before_first_face():
    image = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    faces = [None, None, FaceBox(300, 250, 150), FaceBox(300, 250, 150), FaceBox(300, 250, 150), None, None]
    framer = DrivingFramer(detector=ScriptedDetector(faces))
    first = framer(image)
    assert framer.box is None
    np.testing.assert_array_equal(first, resize_square(image[:, 100:700]))  # centred 600x600 square
    framer(image)
    framer(image)  # the face appears: box set at once
    found = framer.box
    assert found is not None and found.cx == 300
    kept = [framer(image) for _ in range(4)]  # no face any more: the last box stays
    assert framer.box == found
    np.testing.assert_array_equal(kept[0], kept[-1])
    framer.reset()
    assert framer.box is None and framer.faces_found == 0


def test_driving_framer_detect_every():
    detector = ScriptedDetector([FaceBox(400, 300, 200)])
    framer = DrivingFramer(detect_every=5, detector=detector)
    run_framer(framer, 20)
    assert detector.calls == 4 + 2  # frames 0, 5, 10, 15 (+2 refinements of the first face)


def test_driving_framer_static_noisy_video_real_detector(astronaut):
    """A still head with sensor noise: after the first frame the crop never moves."""
    rng = np.random.default_rng(0)
    framer = DrivingFramer()
    boxes = []
    for _ in range(40):
        noisy = np.clip(astronaut.astype(np.int16) + rng.normal(0, 4, astronaut.shape), 0, 255).astype(np.uint8)
        out = framer(noisy)
        boxes.append(framer.box)
    assert out.shape == (512, 512, 3)
    assert framer.faces_found == 40
    assert len(set(boxes)) == 1
    blank = np.full_like(astronaut, 90)
    framer(blank)
    assert framer.box == boxes[-1]  # face lost: the last box is kept


def test_driving_framer_on_sample_clip():
    """The sample clip is already framed: the crop stays close to the full frame and moves at most rarely."""
    framer = DrivingFramer()
    moves = 0
    with VideoReader(sample_driving()) as reader:
        previous = None
        for frame in reader:
            out = framer(frame)
            assert out.shape == (512, 512, 3)
            moves += previous is not None and framer.box != previous
            previous = framer.box
    assert framer.faces_found == reader.frames_read
    assert moves <= reader.frames_read // 4
    assert abs(framer.box.cx - 256) < 40 and abs(framer.box.cy - 256) < 40
    assert framer.box.side == pytest.approx(512, rel=0.2)
