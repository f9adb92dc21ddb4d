"""Motion extractor + keypoint geometry (maps, boxes, crops) against the golden data of the original.

Tolerances: float outputs max-abs error relative to max|expected| <= 1e-4 (README section 8;
measured ~1e-6), integer outputs (boxes, pixel counts) exact.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import relative_error
from personalive_trt.models import keypoints as K
from personalive_trt.models.motion_extractor import MotionExtractor

FLOAT_TOL = 1e-4
STATS_TOL = 1e-5
CROP_DEVICE_TOL = 1e-5


@pytest.fixture(scope="module")
def extractor(small_weights_dir) -> MotionExtractor:
    model = MotionExtractor(num_kp=21).eval()
    path = small_weights_dir / "personalive" / "motion_extractor.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def unit(golden) -> dict:
    return golden("unit_motion_extractor")


@pytest.fixture(scope="module")
def detected(extractor, unit) -> dict:
    """Detector outputs as the original computes them: reference, frame 0 alone, the 2 frames."""
    with torch.no_grad():
        return {
            "ref": extractor(unit["ref_cond_tensor"]),
            "frame0": extractor(unit["tgt_cond_tensor"][:1]),
            "frames": extractor(unit["tgt_cond_tensor"]),
        }


def _pipeline_frames(stream: dict, indices) -> torch.Tensor:
    """Driving frames as the pipeline sees them: 256 u8 -> pixel-repeated x2 -> [-1, 1] CHW."""
    frames = stream["driving_src256_u8"][list(indices)]
    frames = frames.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    return (frames.permute(0, 3, 1, 2).float() / 255.0) * 2 - 1


def _crop_stats(crops: torch.Tensor) -> torch.Tensor:
    x = crops.double().flatten(1)
    return torch.stack([x.sum(1), x.abs().sum(1), (x * x).sum(1)], dim=1)


# ------------------------------------------------------------------------------------------ layout
def test_state_dict_matches_layout(shared_reference):
    layout = json.loads((shared_reference / "layout" / "motion_extractor.json").read_text())["keys"]
    state = MotionExtractor(num_kp=21).state_dict()
    assert list(state) == list(layout)
    for key, spec in layout.items():
        assert list(state[key].shape) == spec["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == spec["dtype"], key
    assert torch.equal(state["idx_tensor"], torch.arange(66, dtype=torch.float32))


def test_layernorm_stays_fp32_under_half():
    model = MotionExtractor().half()
    block_norm = model.detector.stages[0][0].norm
    stem_norm = model.detector.downsample_layers[0][1]
    assert block_norm.weight.dtype == torch.float32 and stem_norm.bias.dtype == torch.float32
    assert model.detector.norm.weight.dtype == torch.float16  # the pooled norm follows the cast
    assert model.detector.fc_kp.weight.dtype == torch.float16
    x = torch.randn(1, 96, 8, 8, dtype=torch.float16)
    assert stem_norm(x).dtype == torch.float16


# ------------------------------------------------------------------------- unit_motion_extractor
@pytest.mark.parametrize("which, key", [("ref", "detector_ref"), ("frames", "detector_tgt")])
def test_detector_outputs(detected, unit, which, key):
    out = detected[which]
    assert set(out) == set(unit[key])
    for name, expected in unit[key].items():
        err = relative_error(out[name], expected)
        assert err <= FLOAT_TOL, f"{key}.{name}: {err:.3g}"


def test_get_kp(detected, unit):
    err = relative_error(K.detector_keypoints(detected["frames"]), unit["get_kp_tgt"])
    assert err <= FLOAT_TOL, err


def test_get_kp_on_golden_detector_outputs(unit):
    """The geometry alone, fed the stored raw head outputs (isolates it from the network)."""
    err = relative_error(K.detector_keypoints(unit["detector_tgt"]), unit["get_kp_tgt"])
    assert err <= 1e-6, err


def test_warmup_keypoints(detected, unit):
    kp_draw, kps_dri = K.warmup_keypoints(detected["ref"], detected["frame0"], detected["frames"], num_interp=13)
    golden_draw = unit["interpolate_kps_online"]["kp_interp"]
    assert kp_draw.shape == golden_draw.shape == (14, 21, 3)
    assert relative_error(kp_draw, golden_draw) <= FLOAT_TOL
    assert relative_error(kps_dri, unit["interpolate_kps_online"]["kp_dri"]) <= FLOAT_TOL
    assert torch.equal(K.face_boxes(kp_draw), unit["boxes_interp"])
    assert torch.equal(K.face_boxes(kps_dri), unit["boxes_dri"])
    nonzero = (K.draw_keypoints(kp_draw) != 0).sum(dim=(2, 3))
    assert torch.equal(nonzero, unit["kpmap_interp_nonzero"])


def test_transfer_keypoints(detected, unit):
    kp_draw, kps_dri = K.transfer_keypoints(detected["ref"], detected["frame0"], detected["frames"])
    assert relative_error(kp_draw, unit["get_kps"]["kps_motion"]) <= FLOAT_TOL
    assert relative_error(kps_dri, unit["get_kps"]["kps_dri"]) <= FLOAT_TOL


def test_geometry_on_golden_detector_outputs(unit):
    """Warm-up/transfer fed the stored raw outputs: tight (only float rounding order differs)."""
    ref, frames = unit["detector_ref"], unit["detector_tgt"]
    frame0 = {k: v[:1] for k, v in frames.items()}  # batched row 0 ~ the single-frame pass
    kp_draw, kps_dri = K.warmup_keypoints(ref, frame0, frames)
    assert relative_error(kp_draw, unit["interpolate_kps_online"]["kp_interp"]) <= 1e-6
    assert relative_error(kps_dri, unit["interpolate_kps_online"]["kp_dri"]) <= 1e-6
    assert torch.equal(K.face_boxes(kp_draw), unit["boxes_interp"])


# ---------------------------------------------------------------------------------------- stream
@pytest.fixture(scope="module")
def stream(golden) -> dict:
    return golden("stream")


def test_stream_maps_and_boxes(stream):
    for call in stream["calls"]:
        maps = K.draw_keypoints(call["kp_draw"])
        assert maps.shape == (call["kp_draw"].shape[0], 3, 512, 512)
        assert torch.equal((maps != 0).sum(dim=(2, 3)), call["kpmap_nonzero"]), call["call"]
        sums = maps.double().sum(dim=(2, 3))
        assert relative_error(sums, call["kpmap_sum"]) <= 1e-6, call["call"]
        values = torch.unique(maps)
        allowed = torch.tensor([0.0, 85 / 255, 1.0], dtype=torch.float32)
        assert torch.isin(values, allowed).all()
        assert torch.equal(K.face_boxes(call["kps_dri"]), call["boxes"]), call["call"]


def test_stream_keypoints_end_to_end(extractor, stream):
    """Detector + transfer on the stream's own frames (512 -> 256 bilinear, /2 + 0.5) reproduce the
    drawn and driving keypoints of every call; frame 0 is detected alone, as in the original."""
    with torch.no_grad():
        ref = extractor(stream["fuse"]["ref_cond_tensor"])
        frame0 = None
        for call in stream["calls"]:
            frames = _pipeline_frames(stream, call["frame_indices"])
            cond = F.interpolate(frames, size=(256, 256), mode="bilinear", align_corners=False) / 2 + 0.5
            detected = extractor(cond)
            if call["first_frame"]:
                frame0 = extractor(cond[:1])
                for name, expected in call["kps_frame1_raw"].items():
                    assert relative_error(frame0[name], expected) <= FLOAT_TOL, name
                kp_draw, kps_dri = K.warmup_keypoints(ref, frame0, detected)
            else:
                kp_draw, kps_dri = K.transfer_keypoints(ref, frame0, detected)
            assert relative_error(kp_draw, call["kp_draw"]) <= FLOAT_TOL, call["call"]
            assert relative_error(kps_dri, call["kps_dri"]) <= FLOAT_TOL, call["call"]


def _call_faces(stream: dict, call: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The motion-encoder crop inputs of one call: (images, boxes); call 0 has the reference first."""
    images = _pipeline_frames(stream, call["frame_indices"])
    boxes = K.face_boxes(call["kps_dri"])
    if call["first_frame"]:
        ref = (stream["ref_image_u8"].permute(2, 0, 1).float() / 255.0) * 2 - 1
        ref_box = K.face_boxes(call["kp_draw"][:1])
        assert torch.equal(ref_box, call["ref_box"])
        images = torch.cat([ref[None], images], dim=0)
        boxes = torch.cat([ref_box, boxes], dim=0)
    return images, boxes


def test_stream_face_crops(stream):
    for call in stream["calls"]:
        images, boxes = _call_faces(stream, call)
        crops = K.crop_faces(images, boxes)
        assert crops.shape == (boxes.shape[0], 3, 224, 224)
        err = relative_error(_crop_stats(crops), call["motion_encoder_in_stats"])
        assert err <= STATS_TOL, (call["call"], err)
        device_err = (K.crop_faces_device(images, boxes) - crops).abs().max().item()
        assert device_err <= CROP_DEVICE_TOL, (call["call"], device_err)


def test_crop_matches_golden_motion_encoder_input(golden, stream):
    """Call 0's crops equal the stored motion-encoder input (1, 3, 5, 224, 224)."""
    images, boxes = _call_faces(stream, stream["calls"][0])
    expected = golden("unit_motion_encoder")["input"][0].transpose(0, 1)
    assert relative_error(K.crop_faces(images, boxes), expected) <= 1e-6


# --------------------------------------------------------------- golden-free behaviour checks
def _reference_draw(kp: torch.Tensor, size: int) -> torch.Tensor:
    """Straightforward int64 re-statement of the original rule, for the edge cases below."""
    pts = ((kp[:, list(K.DRAWN_KEYPOINTS), :2] * 0.5 + 0.5) * size).long()
    canvas = torch.zeros(kp.shape[0], 3, size, size)
    grid = torch.arange(size)
    for i, color in enumerate(K.KEYPOINT_COLORS):
        x, y = pts[:, i, 0], pts[:, i, 1]
        mask = ((x[:, None, None] - grid) ** 2 + (y[:, None, None] - grid[:, None]) ** 2) <= 16
        for ch in range(3):
            canvas[:, ch] += torch.tensor(color[ch], dtype=torch.float32) / 255.0 * mask
    return canvas.clamp(0, 1)


def test_draw_keypoints_edges_and_outside():
    gen = torch.Generator().manual_seed(0)
    size = 64
    kp = torch.rand(6, 21, 3, generator=gen) * 2.6 - 1.3  # many points near/outside the canvas
    # exact borders: pixel -3 (partly visible), -5 (invisible), size+3, size+4 and -0.9 (truncates to 0)
    for frame, px in enumerate([-3, -5, size + 3, size + 4, -0.9]):
        kp[frame, 1, :2] = (torch.tensor([px, px], dtype=torch.float32) / size - 0.5) * 2
    maps = K.draw_keypoints(kp, size=size)
    assert torch.equal(maps, _reference_draw(kp, size))


def test_face_boxes_scaled_canvas_and_clamp():
    gen = torch.Generator().manual_seed(1)
    kp = torch.rand(32, 21, 3, generator=gen) * 2.4 - 1.2
    for size in (64, 512):
        boxes = K.face_boxes(kp, size=size)
        assert boxes.dtype == torch.int64
        assert int(boxes.min()) >= 0 and int(boxes.max()) <= size - 1


@pytest.mark.parametrize("size", [512, 97])
def test_crop_faces_device_random_boxes(size):
    gen = torch.Generator().manual_seed(2)
    n = 24
    images = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    a = torch.randint(0, size - 1, (n, 2), generator=gen)
    b = torch.randint(0, size, (n, 2), generator=gen)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    hi = torch.maximum(hi, lo + 1).clamp_max(size - 1)
    boxes = torch.stack([lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]], dim=1)
    # edge-touching, tiny and near-full boxes
    boxes[0] = torch.tensor([0, 0, size - 1, size - 1])
    boxes[1] = torch.tensor([0, 5, 3, size - 1])
    boxes[2] = torch.tensor([size - 2, size - 2, size - 1, size - 1])  # a single pixel
    boxes[3] = torch.tensor([10, 0, 11, size - 1])  # one column
    boxes[4] = torch.tensor([0, size // 2, size - 1, size // 2 + 2])
    expected = K.crop_faces(images, boxes)
    err = (K.crop_faces_device(images, boxes) - expected).abs().max().item()
    assert err <= CROP_DEVICE_TOL, err


class _DeviceSidePath(torch.nn.Module):
    def forward(self, images: torch.Tensor, boxes: torch.Tensor, kp: torch.Tensor):
        return K.crop_faces_device(images, boxes), K.draw_keypoints(kp, size=64), K.face_boxes(kp, size=64)


def test_device_side_functions_export_without_host_reads():
    """torch.export refuses data-dependent host reads; the exported graph must serve other inputs."""
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    kp = torch.rand(2, 21, 3, generator=gen) * 2 - 1
    first = torch.tensor([[0, 0, 63, 63], [5, 7, 30, 40]])
    program = torch.export.export(_DeviceSidePath(), (images, first, kp)).module()
    other = torch.tensor([[10, 3, 20, 60], [0, 40, 63, 63]])
    other_kp = torch.rand(2, 21, 3, generator=gen) * 2.4 - 1.2
    crops, maps, boxes = program(images, other, other_kp)
    assert (crops - K.crop_faces(images, other)).abs().max().item() <= CROP_DEVICE_TOL
    assert torch.equal(maps, K.draw_keypoints(other_kp, size=64))
    assert torch.equal(boxes, K.face_boxes(other_kp, size=64))
