"""What the offline mode feeds its loop, prepared as the original's offline script prepares it.

The original's ``inference_offline.py`` (its streaming pipeline ``Pose2VideoPipeline_Stream``) differs from
the online loop before any network runs, and every difference changes the numbers:

* **Frames.** Every frame of the driving video at its own size; N = the frame count rounded down to a
  multiple of the window (4). The loop runs N / 4 + 3 windows: the last 3 take their new frames from a
  mirrored tail, the 12 frames before the last in reverse order (``frames[-13:-1][::-1]``), so that the
  last driving frames get through the pile and exactly N frames come out. A clip needs at least 16
  frames: with fewer than 13 the tail would run short (the original then fails mid-run).
* **Pose input.** The whole driving frame, resized (PIL Lanczos, aspect not kept) to 256x256.
* **Motion input.** The FaceMesh crop of each frame (:mod:`personalive_trt.facemesh`), resized (PIL
  Lanczos, aspect not kept) to 224x224; not the keypoint boxes of the online loop.
* **Reference.** The whole image, not a crop: CLIP input resized to 224x224 (PIL bicubic, then the CLIP
  processor's defaults, which leave a 224 image as it is), VAE input resized to the canvas (Lanczos),
  pose input to 256 (Lanczos); its FaceMesh crop at 224 (Lanczos) gives the reference motion that the
  warm-up glides from.

PIL resizes uint8 images to uint8, and the original turns the resized image into floats only afterwards,
so the prepared images are kept as uint8 arrays here (a quarter of the memory of floats, and exact): a
100-frame clip holds ~35 MB, whatever the video's resolution.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from personalive_trt.config import CLIP_SIZE, COND_SIZE, FACE_SIZE, StreamConfig
from personalive_trt.facemesh import FaceMesh, FaceMeshCrop, faceless_frames_error
from personalive_trt.framing import NoFaceError
from personalive_trt.media import MediaError
from personalive_trt.pipeline import clip_pixels, frames_to_tensor

__all__ = ["OfflineWindow", "PreparedClip", "PreparedReference", "min_frames", "offline_frame_count",
           "prepare_driving", "prepare_reference", "window_frames"]


def min_frames(config: StreamConfig) -> int:
    """The shortest clip: the mirrored tail needs ``warmup_frames + 1`` (13) frames, and N is a multiple of
    the window: 16 for the original's configuration."""
    return (config.warmup_frames // config.window + 1) * config.window


def offline_frame_count(available: int, max_frames: int | None, config: StreamConfig, what: str) -> int:
    """N, the frames the offline mode animates: ``available`` capped at ``max_frames``, rounded down to a
    multiple of the window. Fewer than :func:`min_frames` is a one-line :class:`MediaError` naming ``what``."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be a positive number of frames, got {max_frames}")
    capped = available if max_frames is None else min(available, max_frames)
    frames = capped // config.window * config.window
    if frames < min_frames(config):
        cap = f" (capped at --max-frames {max_frames})" if max_frames is not None and max_frames < available else ""
        raise MediaError(f"{what}: {capped} frames{cap}; the offline mode needs at least {min_frames(config)} "
                         f"(it animates a multiple of {config.window} and mirrors the {config.warmup_frames} frames "
                         "before the last at the end)")
    return frames


def window_frames(frames: int, config: StreamConfig) -> list[tuple[int, ...]]:
    """The driving frame index of every new frame of every window: the N frames in order, then the
    mirrored tail (the ``warmup_frames`` (12) frames before the last, last first). ``frames // window +
    steps - 1`` windows of ``window`` indices."""
    if frames % config.window or frames <= config.warmup_frames:
        raise ValueError(f"window_frames: {frames} frames is not a multiple of {config.window} above "
                         f"{config.warmup_frames}")
    tail = list(range(frames - 1 - config.warmup_frames, frames - 1))[::-1]
    order = [*range(frames), *tail]
    return [tuple(order[i:i + config.window]) for i in range(0, len(order), config.window)]


def lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """PIL Lanczos resize to ``size`` x ``size`` (aspect not kept), uint8 in and out."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


@dataclass(frozen=True)
class PreparedReference:
    """The reference portrait, prepared once.

    Args:
        clip_pixels: (1, 3, 224, 224) float32, CLIP-normalised.
        image: (R, R, 3) uint8, the VAE input (Lanczos).
        cond: (256, 256, 3) uint8, the pose-encoder input (Lanczos).
        face: (224, 224, 3) uint8, the FaceMesh crop resized for the motion encoder (Lanczos).
        crop: where the face was found in the original image.
    """

    clip_pixels: torch.Tensor
    image: np.ndarray
    cond: np.ndarray
    face: np.ndarray
    crop: FaceMeshCrop


def prepare_reference(image: np.ndarray, mesh: FaceMesh, config: StreamConfig, what: str) -> PreparedReference:
    """The offline mode's reference inputs from the whole portrait ((H, W, 3) uint8 RGB, any size)."""
    crop = mesh.find(image)
    if crop is None:
        raise NoFaceError(f"{what}: FaceMesh found no face in the reference image")
    clip_input = np.asarray(Image.fromarray(image).resize((CLIP_SIZE, CLIP_SIZE), Image.BICUBIC))
    return PreparedReference(clip_pixels=clip_pixels(clip_input), image=lanczos(image, config.resolution),
                             cond=lanczos(image, COND_SIZE), face=lanczos(crop.cut(image), FACE_SIZE), crop=crop)


@dataclass(frozen=True)
class OfflineWindow:
    """One window's new frames as the networks take them.

    Args:
        cond: (W, 3, 256, 256) in [0, 1], the whole frames (pose encoder).
        faces: (W, 3, 224, 224) in [-1, 1], the face crops (motion encoder).
    """

    cond: torch.Tensor
    faces: torch.Tensor


@dataclass(frozen=True)
class PreparedClip:
    """The N driving frames, prepared: ``cond`` (N, 256, 256, 3) and ``faces`` (N, 224, 224, 3) uint8
    (Lanczos), with the FaceMesh crop of every frame."""

    cond: np.ndarray
    faces: np.ndarray
    crops: tuple[FaceMeshCrop, ...]

    @property
    def frames(self) -> int:
        return len(self.crops)

    def window(self, indices: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> OfflineWindow:
        """The frames ``indices`` (one entry of :func:`window_frames`) on ``device``: [0, 1] pose input
        ((2x - 1) / 2 + 0.5 like the original: its processor normalises, the pipeline undoes it) and
        [-1, 1] faces."""
        rows = np.asarray(indices)
        cond = frames_to_tensor(self.cond[rows], device, torch.float32) / 2 + 0.5
        return OfflineWindow(cond=cond.to(dtype), faces=frames_to_tensor(self.faces[rows], device, dtype))


def prepare_driving(frames: Iterable[np.ndarray], mesh: FaceMesh, config: StreamConfig, what: str,
                    max_frames: int | None = None) -> PreparedClip:
    """Prepare the first N frames of ``frames`` ((H, W, 3) uint8 RGB each, read up to ``max_frames``).

    Frames are prepared as they arrive, so only the small resized images are held. Everything a network
    would need is checked before returning: the frame count (:func:`offline_frame_count`) and a face in
    every one of the N frames (all faceless frames listed in one :class:`NoFaceError`), so that a bad clip
    fails before any network loads."""
    cond, faces, crops, faceless = [], [], [], []
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            break
        crop = mesh.find(frame)
        if crop is None:
            faceless.append(index)
        else:
            faces.append(lanczos(crop.cut(frame), FACE_SIZE))
        cond.append(lanczos(frame, COND_SIZE))
        crops.append(crop)
    count = offline_frame_count(len(crops), max_frames, config, what)
    faceless = [index for index in faceless if index < count]  # the frames past N are never used
    if faceless:
        raise faceless_frames_error(faceless, count, what)
    return PreparedClip(cond=np.stack(cond[:count]), faces=np.stack(faces[:count]), crops=tuple(crops[:count]))
