"""The original's offline algorithm (``inference_offline.py``) on the reference loop's networks.

The original ships two ways to animate a video file. Its web demo runs the online loop
(:class:`~personalive_trt.runtime.reference_loop.Animator`); its offline script runs a variant of the same pile
(``Pose2VideoPipeline_Stream.__call__``) that a user comparing outputs would see differ. This module
reproduces the variant exactly, as a subclass of the reference loop: the pile, the UNet call, the DDIM step,
the keyframe bank write and the decode are the reference loop's own. What differs:

* inputs (prepared by :mod:`personalive_trt.filemode.offline`): whole driving frames for the pose path,
  FaceMesh crops for the motion path, the whole reference image, PIL resizes;
* first window: the pose encoder also runs on the first frame alone (the anchor of the driving
  translation), and the reference motion comes from the reference's FaceMesh crop (encoded with the
  window's faces, one motion-encoder call; each frame is encoded independently, so this is the original's
  separate call up to rounding);
* keyframes: the distance test runs on the first frame of the *newest* chunk (not the pile's oldest), from
  the 10th window on, while the motion bank holds fewer than 4 entries; and its verdict is sticky: it is
  only updated when the test runs, so once the bank is full (after a third keyframe) every later window
  appends another reference bank from the x0 of its oldest frame. The bank therefore grows with the video
  in the original. Here it grows up to ``keyframe_limit`` banks (:func:`offline_config`; 20 covers every
  clip the original's own 100-frame cap allows) and stops there: the frames from that window on differ
  from what the original would produce (it keeps growing until it runs out of memory);
* frames and output (:func:`window_frames`): N = a multiple of 4 frames, then the 12 before the last,
  mirrored, as new frames of the last 3 windows; windows 0-2 are the warm-up (their frames are dropped), then
  each window gives the x0 of the pile's oldest chunk, i.e. driving chunk i - 3, so exactly N frames come out.

The reference loop still decodes the three warm-up windows (its step always decodes); that is 3 decodes
of N / 4 + 3 windows.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from personalive_trt.config import COND_SIZE, FACE_SIZE, StreamConfig
from personalive_trt.engines.networks import Networks
from personalive_trt.media.facemesh import FaceMeshCrop
from personalive_trt.models.weights import Models
from personalive_trt.runtime.reference_loop import Animator, NoiseFn, Reference, encode_prepared_reference, unit_range

__all__ = ["DEFAULT_KEYFRAME_LIMIT", "OfflineAnimator", "OfflineReference", "OfflineWindow", "PreparedReference",
           "max_keyframe_banks", "min_frames", "offline_config", "window_frames"]

#: Reference banks appended at most (``--keyframe-limit``): the original's 100-frame cap gives 28 windows,
#: of which at most 28 - 9 = 19 can append one.
DEFAULT_KEYFRAME_LIMIT = 20


def offline_config(keyframe_limit: int = DEFAULT_KEYFRAME_LIMIT, **fields) -> StreamConfig:
    """The stream configuration of an offline run: ``bank_capacity`` is the bank limit, which sizes the
    denoising UNet's bank inputs (and so a built engine); ``max_keyframes`` stays the original's 3 tested
    keyframes (it tests while its motion bank, reference motion + keyframes, holds fewer than 4 entries); the
    other fields as given (defaults: the original's)."""
    if keyframe_limit < 0:
        raise ValueError(f"keyframe_limit must be >= 0, got {keyframe_limit}")
    return StreamConfig(bank_capacity=keyframe_limit, **fields)


def min_frames(config: StreamConfig) -> int:
    """The shortest clip: the mirrored tail needs ``warmup_frames + 1`` (13) frames, and N is a multiple of
    the window: 16 for the original's configuration."""
    return (config.warmup_frames // config.window + 1) * config.window


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


def max_keyframe_banks(frames: int, config: StreamConfig) -> int:
    """The most reference banks an N-frame offline run can append: one per window from the first tested
    window on (``keyframe_start + 1``), at most ``config.keyframe_banks`` (the limit). What a runtime sizes its
    bank buffers for before the run starts."""
    windows = len(window_frames(frames, config))
    return min(config.keyframe_banks, max(0, windows - config.keyframe_start - 1))


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
class PreparedReference:
    """The reference portrait, prepared once (:func:`personalive_trt.filemode.offline.prepare_reference`).

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


@dataclass
class OfflineReference(Reference):
    """A :class:`~personalive_trt.runtime.reference_loop.Reference` with the reference's face crop, (1, 3, 224, 224) in
    [-1, 1]: the motion the warm-up starts from."""

    face: torch.Tensor


class OfflineAnimator(Animator):
    """The original's offline loop (reference implementation); see the module docstring.

    Args:
        models (`Models` or `Networks`): as for :class:`~personalive_trt.runtime.reference_loop.Animator`; networks must
            be built for ``config``.
        config (`StreamConfig`, *optional*): defaults to :func:`offline_config` (bank limit 20).
        noise, seed, trace: as for :class:`~personalive_trt.runtime.reference_loop.Animator`.
        keyframe_limit (`int`, *optional*): banks appended at most (``--keyframe-limit``); defaults to
            ``config.keyframe_banks``. Lower when the networks hold more banks than the run may append (engines
            built with ``build --max-keyframes K`` serve every limit up to K).

    :meth:`fuse_reference` takes a :class:`PreparedReference` and :meth:`step` / ``step_float`` /
    ``step_conditions`` an :class:`OfflineWindow` (a step returns the decoded x0 of the pile's oldest chunk; the
    first ``steps - 1`` windows' are warm-up frames); :func:`personalive_trt.filemode.offline.animate_offline` runs
    a whole prepared clip.
    """

    def __init__(self, models: Models | Networks, config: StreamConfig | None = None, noise: NoiseFn | None = None,
                 seed: int = 42, trace: dict | None = None, keyframe_limit: int | None = None) -> None:
        config = config or offline_config()
        if keyframe_limit is None:
            keyframe_limit = config.keyframe_banks
        if not 0 <= keyframe_limit <= config.keyframe_banks:
            raise ValueError(f"OfflineAnimator: keyframe_limit {keyframe_limit} is not in 0..{config.keyframe_banks} "
                             "(the banks the configuration holds)")
        self.keyframe_limit = keyframe_limit
        super().__init__(models, config, noise=noise, seed=seed, trace=trace)

    @property
    def description(self) -> str:
        return f"offline reference loop, {self.nets.description}"

    def reset(self) -> None:
        super().reset()
        # The original's add_flag: the last keyframe verdict, kept while the test does not run.
        self.add_flag = False

    @torch.no_grad()
    def encode_reference(self, image: PreparedReference, latent: torch.Tensor | None = None) -> OfflineReference:
        """Everything the loop needs from a prepared portrait; ``latent`` replaces the VAE encoding (tests)."""
        resolution = self.config.resolution
        if image.image.shape != (resolution, resolution, 3):
            raise ValueError(f"encode_reference: the reference was prepared at {image.image.shape[:2]}, "
                             f"the stream runs at {resolution}x{resolution}")
        reference = encode_prepared_reference(self.nets, image.clip_pixels, unit_range(image.image, resolution),
                                              unit_range(image.cond, COND_SIZE) / 2 + 0.5, latent)
        fields = {field.name: getattr(reference, field.name) for field in dataclasses.fields(Reference)}
        return OfflineReference(**fields, face=unit_range(image.face, FACE_SIZE).to(self.device, self.dtype))

    def _driving_images(self, window: OfflineWindow, what: str) -> OfflineWindow:
        """What :meth:`step` (and ``step_float``, ``step_conditions``) take here: one window's prepared
        inputs (:meth:`personalive_trt.filemode.offline.PreparedClip.window`), not 512 frames."""
        if not isinstance(window, OfflineWindow):
            raise TypeError(f"{what}: the offline loop takes an OfflineWindow (PreparedClip.window), "
                            f"got {type(window).__name__}")
        if self.reference is None:
            raise RuntimeError(f"{what}: no reference fused; call fuse_reference(prepared) first")
        return window

    def _advance_conditions(self, window: OfflineWindow, trace: dict | None) -> None:
        detector = self.nets.pose_encoder(window.cond)
        faces = window.faces
        if self.count == 0:
            # The original runs the detector on the first frame on its own for the translation anchor of
            # every later window (batch 1, so its rounding may differ from row 0 of the batch of 4).
            self.frame0_detector = self.nets.pose_encoder(window.cond[:1])
            faces = torch.cat([self.reference.face, faces])
        kp_draw, kps_dri = self._keypoints(detector)
        self._fill_piles(kp_draw, faces, trace)
        if trace is not None:
            trace.update(cond=window.cond, detector=detector, frame0_detector=self.frame0_detector, kps_dri=kps_dri)

    def _keyframe_wanted(self, motion_states: torch.Tensor, trace: dict | None) -> bool:
        """Does this window append a reference bank? (host decision, once per window)."""
        cfg = self.config
        tested = self.count > cfg.keyframe_start and self.motion_bank.shape[1] < cfg.motion_bank_capacity
        if tested:
            newest = motion_states[:, -cfg.window:]
            distances = torch.cdist(newest.flatten(2)[0].float(), self.motion_bank.flatten(2)[0].float())
            self.add_flag = bool(distances[0].min() > cfg.keyframe_threshold)
            if self.add_flag:
                self.motion_bank = torch.cat([self.motion_bank, newest[:, :1]], dim=1)
        if trace is not None:
            trace.update(keyframe_tested=tested, add_flag=self.add_flag)
            if tested:
                trace.update(keyframe_distances=distances)
        return self.add_flag and len(self.keyframe_banks) < self.keyframe_limit
