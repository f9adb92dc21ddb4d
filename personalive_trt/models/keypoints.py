"""Keypoint geometry of PersonaLive's streaming loop (pure tensor functions).

The motion extractor (:class:`personalive_trt.models.motion_extractor.MotionExtractor`) returns raw
head outputs: pose-bin logits, translation, scale and canonical keypoints. This module turns them
into 2-D/3-D keypoints, transfers the driving head pose onto the reference face, renders the
keypoint maps fed to the pose guider and computes/crops the face boxes fed to the motion encoder.

Conventions reproduced from the original (all of them matter for exact pixel/box equality):

* Pose: degrees = softmax(logits) . arange(66) * 3 - 97.5; rotation = (Rz Ry Rx)^T with pitch on x,
  yaw on y, roll on z; keypoints = (kp @ R) * scale + (tx, ty, 0) (z translation is dropped).
* Drawn keypoints keep the reference identity: reference canonical keypoints and scale, the
  driving rotation, and the driving translation relative to the session's first frame, halved.
* Canvas pixel of a keypoint = trunc((k * 0.5 + 0.5) * size) (truncation toward zero, like
  ``.long()``); only keypoints 1, 2, 3, 4, 12, 15, 20 are drawn/used for boxes.

Every function computes in float32 whatever the input dtype: the geometry is cheap and the
integer truncations above are sensitive to half-precision rounding.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

NUM_POSE_BINS = 66
DEGREES_PER_BIN = 3.0
DEGREE_OFFSET = 97.5  # LivePortrait's modified bin mean
TRANSLATION_GAIN = 0.5  # driving translation relative to frame 0 is halved (``t_scale``)
WARMUP_FRAMES = 13  # interpolation points reference -> first frame (the last one is dropped)

# Keypoints drawn into the pose maps and used for the face box, with their RGB colours.
DRAWN_KEYPOINTS = (1, 2, 3, 4, 12, 15, 20)
KEYPOINT_COLORS = (
    (255, 0, 0),
    (255, 255, 0),
    (0, 255, 0),
    (0, 255, 255),
    (0, 0, 255),
    (255, 0, 255),
    (255, 0, 85),
)
DISC_RADIUS = 4  # pixels; a pixel is drawn when dx^2 + dy^2 <= radius^2
FACE_BOX_SIDE = 1.7  # box side = 2 * (centre_y - top keypoint y) * 1.7
FACE_BOX_LOW = 0.95  # the box extends 0.95 half-sides left/up of the centre ...
FACE_BOX_HIGH = 1.05  # ... and 1.05 half-sides right/down
FACE_SIZE = 224


@functools.lru_cache(maxsize=32)
def _constant(name: str, device: torch.device, size: int = 0) -> torch.Tensor:
    """Constant tables, built once per device (and canvas size).

    Creating them from Python data on every call would be a host->device copy (a synchronisation, and
    illegal inside a CUDA-graph capture); cached, the first call (before capture) builds them and every
    later call only reads them.
    """
    if name == "bins":
        return torch.arange(NUM_POSE_BINS, dtype=torch.float32, device=device)
    if name == "drawn":
        return torch.tensor(DRAWN_KEYPOINTS, device=device)
    if name == "colors":
        return torch.tensor(KEYPOINT_COLORS, dtype=torch.float32, device=device) / 255.0
    if name == "grid":
        return torch.arange(size, dtype=torch.float32, device=device)
    if name == "lerp":
        return torch.linspace(0, 1, size, dtype=torch.float32, device=device)
    raise KeyError(name)


def prepare_device_tables(device: torch.device, size: int, num_interp: int = WARMUP_FRAMES) -> None:
    """Build every cached table the streaming calls read (keypoint drawing at ``size``, warm-up
    interpolation, face-crop taps), so no call creates one: call before capturing a CUDA graph.

    The tables are cached per device as the calls' tensors report it (``cuda:0``, never ``cuda``)."""
    from personalive_trt.devices import canonical_device

    device = canonical_device(device)
    for name in ("bins", "drawn", "colors"):
        _constant(name, device)
    _constant("grid", device, size)
    _constant("lerp", device, num_interp)
    _resize_tap_table(size, FACE_SIZE, device)


# ---------------------------------------------------------------------------------------------
# pose -> keypoints
# ---------------------------------------------------------------------------------------------
def _bins_to_degrees(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Soft-argmax of the (N, 66) bin logits -> three (N,) angles in degrees.

    The three heads are evaluated as one (3N, 66) batch like the original (keeps the matmul's
    reduction identical to the reference)."""
    logits = torch.cat([pitch, yaw, roll], dim=0).float()
    bins = _constant("bins", logits.device)
    degrees = torch.matmul(torch.softmax(logits, dim=1), bins) * DEGREES_PER_BIN - DEGREE_OFFSET
    return degrees.chunk(3, dim=0)


def _rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(N,) angles in degrees -> (N, 3, 3) row-vector rotation (Rz @ Ry @ Rx)^T."""
    x, y, z = (a.float()[:, None] / 180 * math.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rot_x = torch.cat([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], dim=1)
    rot_y = torch.cat([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], dim=1)
    rot_z = torch.cat([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], dim=1)
    rot = rot_z.view(-1, 3, 3) @ rot_y.view(-1, 3, 3) @ rot_x.view(-1, 3, 3)
    return rot.transpose(1, 2)


def _posed_keypoints(
    pitch: torch.Tensor,
    yaw: torch.Tensor,
    roll: torch.Tensor,
    t: torch.Tensor,
    scale: torch.Tensor,
    kp: torch.Tensor,
) -> torch.Tensor:
    """Angles (N,) in degrees, t (N, 3), scale (N, 1), canonical kp (N, 3K) -> (N, K, 3)."""
    n = kp.shape[0]
    canonical = kp.float().reshape(n, -1, 3)
    posed = (canonical @ _rotation_matrix(pitch, yaw, roll)) * scale.float()[:, :, None]
    shift = torch.cat([t.float()[:, :2], torch.zeros_like(t.float()[:, :1])], dim=1)
    return posed + shift[:, None, :]


def detector_keypoints(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posed keypoints of a detector output (LivePortrait ``get_kp``): dict -> (N, 21, 3)."""
    pitch, yaw, roll = _bins_to_degrees(out["pitch"], out["yaw"], out["roll"])
    return _posed_keypoints(pitch, yaw, roll, out["t"], out["scale"], out["kp"])


def _lerp_drop_last(start: torch.Tensor, end: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` points from ``start`` to ``end`` (each (1, ...) or (1,)) with the last one dropped.

    Same formula as the original ((1 - a) * start + a * end with a = linspace(0, 1, num)) so the
    intermediate values round identically."""
    alphas = _constant("lerp", start.device, num)
    alphas = alphas.view((num,) + (1,) * (start.dim() - 1))
    return ((1 - alphas) * start.float() + alphas * end.float())[:-1]


def warmup_keypoints(
    ref: dict[str, torch.Tensor],
    frame0: dict[str, torch.Tensor] | None,
    frames: dict[str, torch.Tensor],
    num_interp: int = WARMUP_FRAMES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First streaming call (``interpolate_kps_online``): warm-up keypoints for the pose maps.

    The pose glides from the reference's to the first driving frame's over ``num_interp`` points
    (the last dropped, i.e. ``num_interp - 1`` warm-up frames), followed by the N driving frames.
    All frames use the reference canonical keypoints and scale; translation is the reference's
    plus half the driving translation relative to the first frame of ``frames`` (so the warm-up
    translation is constant).

    Args:
        ref: detector output of the reference (batch 1).
        frame0: detector output of the session's first frame on its own. Unused here: the original
            anchors the warm-up on row 0 of the batched ``frames`` pass; it is accepted for symmetry
            with :func:`transfer_keypoints` (whose ``frame0`` it is on later calls).
        frames: detector output of the N driving frames of the first chunk.
        num_interp: interpolation points reference -> frame 0, last dropped (13 -> 12 frames).

    Returns:
        ``kp_draw`` (num_interp - 1 + N, 21, 3): keypoints to draw; ``kps_dri`` (N, 21, 3): the
        driving frames' own keypoints (for the face boxes).
    """
    del frame0
    n = frames["kp"].shape[0]
    ref_angles = _bins_to_degrees(ref["pitch"], ref["yaw"], ref["roll"])
    frame_angles = _bins_to_degrees(frames["pitch"], frames["yaw"], frames["roll"])
    angles = [
        torch.cat([_lerp_drop_last(a_ref, a_frm[:1], num_interp), a_frm], dim=0)
        for a_ref, a_frm in zip(ref_angles, frame_angles)
    ]
    t_ref = ref["t"].float()
    t_frames = (frames["t"].float() - frames["t"].float()[:1]) * TRANSLATION_GAIN + t_ref
    t = torch.cat([_lerp_drop_last(t_ref, t_frames[:1], num_interp), t_frames], dim=0)
    # The original's scale transfer gain is 0: every frame keeps the reference scale.
    s_ref = ref["scale"].float()
    scale = torch.cat([_lerp_drop_last(s_ref, s_ref, num_interp), s_ref.expand(n, -1)], dim=0)
    kp = ref["kp"].float().expand(num_interp - 1 + n, -1)
    kp_draw = _posed_keypoints(*angles, t, scale, kp)
    return kp_draw, _posed_keypoints(*frame_angles, frames["t"], frames["scale"], frames["kp"])


def transfer_keypoints(
    ref: dict[str, torch.Tensor],
    frame0: dict[str, torch.Tensor],
    frames: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Later streaming calls (``get_kps``): driving pose transferred onto the reference face.

    Args:
        ref: detector output of the reference (batch 1).
        frame0: detector output of the session's first driving frame (batch 1, kept all session).
        frames: detector output of the N new driving frames.

    Returns:
        ``kp_draw`` (N, 21, 3): driving rotation, reference kp/scale, translation
        ``t_ref + (t - t_frame0) * 0.5``; ``kps_dri`` (N, 21, 3): the frames' own keypoints.
    """
    n = frames["kp"].shape[0]
    angles = _bins_to_degrees(frames["pitch"], frames["yaw"], frames["roll"])
    t = (frames["t"].float() - frame0["t"].float()) * TRANSLATION_GAIN + ref["t"].float()
    kp_draw = _posed_keypoints(*angles, t, ref["scale"].float().expand(n, -1), ref["kp"].float().expand(n, -1))
    return kp_draw, _posed_keypoints(*angles, frames["t"], frames["scale"], frames["kp"])


# ---------------------------------------------------------------------------------------------
# keypoint maps and face boxes
# ---------------------------------------------------------------------------------------------
def _canvas_pixels(kp: torch.Tensor, size: int) -> torch.Tensor:
    """(F, 21, >=2) keypoints -> (F, 7, 2) integer-valued float pixel (x, y) of the drawn points.

    ``torch.trunc`` equals the original's ``.long()`` (truncation toward zero) for every finite
    float32 value, and keeps the tensor float (no int64 in exported graphs)."""
    pts = kp.float().index_select(1, _constant("drawn", kp.device))[..., :2] * 0.5 + 0.5
    return torch.trunc(pts * size)


def draw_keypoints(kp: torch.Tensor, size: int = 512) -> torch.Tensor:
    """Render the pose-guider input maps: (F, 21, 3) keypoints -> (F, 3, size, size) in [0, 1].

    Each of the 7 drawn keypoints paints a disc of radius 4 px (dx^2 + dy^2 <= 16 around its
    truncated pixel) in its colour; colours are summed then clamped to [0, 1], so values are
    exactly {0, 85/255, 1}. The disc test runs against the canvas pixel grid, so a point outside
    the canvas paints only the part of its disc that lies inside (nothing once it is > 4 px out),
    exactly like the original. No host synchronisation (a fixed loop over the 7 colours).
    """
    pts = _canvas_pixels(kp, size)
    grid = _constant("grid", kp.device, size)
    dx2 = (pts[..., 0:1] - grid) ** 2  # (F, 7, size) along x
    dy2 = (pts[..., 1:2] - grid) ** 2  # (F, 7, size) along y
    colors = _constant("colors", kp.device)
    canvas = None
    for i in range(len(DRAWN_KEYPOINTS)):
        disc = (dy2[:, i, :, None] + dx2[:, i, None, :] <= DISC_RADIUS**2).float()  # (F, size, size)
        paint = colors[i][None, :, None, None] * disc[:, None]
        canvas = paint if canvas is None else canvas + paint
    return canvas.clamp(0, 1)


def face_boxes(kp: torch.Tensor, size: int = 512) -> torch.Tensor:
    """Face box of each frame's keypoints (``get_boxes``): (F, 21, 3) -> (F, 4) int64 [x1, y1, x2, y2].

    Centre = mean pixel of the 7 drawn keypoints; side = 2 * 1.7 * (centre_y - top point y); the
    box spans 0.95 half-sides before and 1.05 after the centre, clamped to [0, size - 1] and
    truncated. Tensor ops only (no host reads).
    """
    pts = _canvas_pixels(kp, size)
    cx = pts[..., 0].mean(dim=1)
    cy = pts[..., 1].mean(dim=1)
    top = pts[..., 1].min(dim=1).values
    side = (cy - top) * 2.0 * FACE_BOX_SIDE
    x1 = (cx - side / 2 * FACE_BOX_LOW).clamp(0, size - 1)
    y1 = (cy - side / 2 * FACE_BOX_LOW).clamp(0, size - 1)
    x2 = (cx + side / 2 * FACE_BOX_HIGH).clamp(0, size - 1)
    y2 = (cy + side / 2 * FACE_BOX_HIGH).clamp(0, size - 1)
    return torch.stack([x1, y1, x2, y2], dim=1).long()


# ---------------------------------------------------------------------------------------------
# face crops
# ---------------------------------------------------------------------------------------------
def crop_faces(images: torch.Tensor, boxes: torch.Tensor, out_size: int = FACE_SIZE) -> torch.Tensor:
    """Reference semantics: ``images[f, :, y1:y2, x1:x2]`` resized bilinearly (align_corners=False,
    no antialias) to ``out_size``; (F, 3, H, W), (F, 4) -> (F, 3, out_size, out_size).

    Reads the boxes on the host (one slice per frame); see :func:`crop_faces_device` for the
    graph-capturable equivalent. An empty box raises, like the original."""
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.tolist()):
        patch = image[:, int(y1) : int(y2), int(x1) : int(x2)].unsqueeze(0)
        crops.append(F.interpolate(patch, size=(out_size, out_size), mode="bilinear", align_corners=False))
    return torch.cat(crops, dim=0)


@functools.lru_cache(maxsize=16)
def _resize_tap_table(max_len: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower tap index and upper-tap weight of a length-L -> ``out_size`` bilinear resize, for every
    L in [0, max_len]: two (max_len + 1, out_size) tables (int64, float32).

    PyTorch's align_corners=False rule is source = scale * (dst + 0.5) - 0.5 (clamped at 0) with
    scale = float32(L) / out_size, and its CPU and CUDA kernels evaluate that expression as a fused
    multiply-add (one rounding). A plain float32 multiply-then-subtract rounds twice and moves the
    weights by up to ~2e-5, so the product is formed exactly in float64 and rounded once. Keeping it
    in a table (indexed by the crop length at run time) leaves no float64 in the sampling graph.
    """
    lengths = torch.arange(max_len + 1, device=device).clamp_min(1)
    scale = lengths.float() / out_size
    dst = torch.arange(out_size, dtype=torch.float64, device=device) + 0.5
    src = (scale.double()[:, None] * dst - 0.5).float().clamp_min(0)
    low = src.floor()
    return low.long(), src - low


def _crop_axis_taps(start: torch.Tensor, stop: torch.Tensor, out_size: int, max_len: int):
    """Bilinear taps along one axis of the crops [start, stop) resized to ``out_size``.

    Returns absolute source indices (lower, upper) (F, out) int64 and their weights (F, out). The
    upper tap is lower + 1 except at the crop's last pixel, where it is clamped to the crop (the
    sampler never reads outside the box, like a resize of the sliced patch).
    """
    length = (stop - start).clamp(1, max_len)  # an empty box raises in the original; keep 1 px
    low_table, frac_table = _resize_tap_table(max_len, out_size, start.device)
    low, frac = low_table[length], frac_table[length]
    high = torch.minimum(low + 1, (length - 1)[:, None])
    return start[:, None] + low, start[:, None] + high, 1 - frac, frac


def crop_faces_device(images: torch.Tensor, boxes: torch.Tensor, out_size: int = FACE_SIZE) -> torch.Tensor:
    """:func:`crop_faces` without reading ``boxes`` on the host (CUDA-graph / export friendly).

    A separable bilinear sampler: gather the two source rows of every output row and blend, then
    the two source columns of every output column. Same taps and weights as
    ``F.interpolate``; differs from :func:`crop_faces` only by the blend order (~1e-7).
    The tap tables are built (float64, once per image size/device) on the first call: make that
    call before capturing a CUDA graph.
    """
    f, c, h, w = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.long)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    row_lo, row_hi, wy_lo, wy_hi = _crop_axis_taps(y1, y2, out_size, h)
    col_lo, col_hi, wx_lo, wx_hi = _crop_axis_taps(x1, x2, out_size, w)

    def rows(index: torch.Tensor) -> torch.Tensor:  # (F, out) -> (F, C, out, W)
        return images.gather(2, index[:, None, :, None].expand(f, c, out_size, w))

    blended_rows = rows(row_lo) * wy_lo[:, None, :, None] + rows(row_hi) * wy_hi[:, None, :, None]

    def cols(index: torch.Tensor) -> torch.Tensor:  # (F, out) -> (F, C, out, out)
        return blended_rows.gather(3, index[:, None, None, :].expand(f, c, out_size, out_size))

    crops = cols(col_lo) * wx_lo[:, None, None, :] + cols(col_hi) * wx_hi[:, None, None, :]
    return crops.to(images.dtype)  # blended with float32 weights, returned in the input dtype
