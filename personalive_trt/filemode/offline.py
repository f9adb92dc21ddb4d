"""The offline mode's file side: its inputs prepared as the original's offline script prepares them, and the
driver that runs a prepared clip through the loop (:class:`~personalive_trt.runtime.offline_loop.OfflineAnimator`).

The original's ``inference_offline.py`` (its streaming pipeline ``Pose2VideoPipeline_Stream``) differs from
the online loop before any network runs, and every difference changes the numbers:

* **Frames.** Every frame of the driving video at its own size; N = the frame count rounded down to a
  multiple of the window (4) (:func:`offline_frame_count`; the schedule with the mirrored tail is
  :func:`personalive_trt.runtime.offline_loop.window_frames`). A clip needs at least 16 frames: with fewer than 13 the
  tail would run short (the original then fails mid-run).
* **Pose input.** The whole driving frame, resized (PIL Lanczos, aspect not kept) to 256x256.
* **Motion input.** The FaceMesh crop of each frame (:mod:`personalive_trt.media.facemesh`), resized (PIL
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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from personalive_trt.config import CLIP_SIZE, COND_SIZE, FACE_SIZE, StreamConfig
from personalive_trt.media import MediaError
from personalive_trt.media.facemesh import FaceMesh, FaceMeshCrop, faceless_frames_error
from personalive_trt.media.framing import NoFaceError
from personalive_trt.runtime.offline_loop import (
    OfflineAnimator,
    OfflineWindow,
    PreparedReference,
    min_frames,
    window_frames,
)
from personalive_trt.runtime.reference_loop import clip_pixels, frames_to_tensor, lanczos
from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

__all__ = ["PreparedClip", "animate_offline", "offline_frame_count", "prepare_driving", "prepare_reference"]


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


def prepare_reference(image: np.ndarray, mesh: FaceMesh, config: StreamConfig, what: str) -> PreparedReference:
    """The offline mode's reference inputs from the whole portrait ((H, W, 3) uint8 RGB, any size)."""
    crop = mesh.find(image)
    if crop is None:
        raise NoFaceError(f"{what}: FaceMesh found no face in the reference image")
    clip_input = np.asarray(Image.fromarray(image).resize((CLIP_SIZE, CLIP_SIZE), Image.BICUBIC))
    return PreparedReference(clip_pixels=clip_pixels(clip_input), image=lanczos(image, config.resolution),
                             cond=lanczos(image, COND_SIZE), face=lanczos(crop.cut(image), FACE_SIZE), crop=crop)


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
    more = False  # the clip goes on past max_frames (the error for too few frames says it was capped)
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            more = True
            break
        crop = mesh.find(frame)
        if crop is None:
            faceless.append(index)
        else:
            faces.append(lanczos(crop.cut(frame), FACE_SIZE))
        cond.append(lanczos(frame, COND_SIZE))
        crops.append(crop)
    count = offline_frame_count(len(crops) + more, max_frames, config, what)
    faceless = [index for index in faceless if index < count]  # the frames past N are never used
    if faceless:
        raise faceless_frames_error(faceless, count, what)
    return PreparedClip(cond=np.stack(cond[:count]), faces=np.stack(faces[:count]), crops=tuple(crops[:count]))


def animate_offline(animator: OfflineAnimator | OfflineStreamRuntime, clip: PreparedClip) -> Iterator[np.ndarray]:
    """Run a prepared clip through a fused animator (the offline loop or the offline runtime): yields the N
    output frames, a window ((W,R,R,3) uint8) at a time, driving frames 0..N-1 in order."""
    if isinstance(animator, OfflineStreamRuntime):
        yield from animator.animate(clip)
        return
    cfg = animator.config
    for index, frames in enumerate(window_frames(clip.frames, cfg)):
        video = animator.step(clip.window(frames, animator.device, animator.dtype))
        if index >= cfg.steps - 1:
            yield video
