"""The reference streaming pipeline: PersonaLive's online loop in plain PyTorch.

This is the behaviour every faster backend must reproduce, and the fallback for users without
TensorRT. It follows the original online loop (``src/wrapper.py``) step for step:

* ``fuse_reference`` encodes the portrait once: CLIP embedding, VAE latent, the 16 reference
  attention banks, the reference keypoints, and a 12-frame warm-up pile noised to t = 0/333/666.
* each ``step`` takes ``window`` (4) driving frames: keypoints -> keypoint maps -> pose
  features, face crops -> motion states, appends a fresh t=999 chunk, runs the 3D UNet once on
  the whole 16-frame pile (per-frame timesteps), takes one DDIM step, and decodes the oldest
  chunk, which is now clean. A driving frame therefore leaves the pipeline ``steps - 1`` calls
  after it entered; the first ``steps - 1`` outputs are the warm-up frames morphing from the
  reference pose to the first driving pose.
* from the ``keyframe_start + 1``-th call on, a pile frame whose motion is far from every
  motion seen so far becomes a history keyframe: its clean latent goes through the reference
  UNet and the banks are extended (at most ``max_keyframes``), from the next call on.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from personalive_trt.models import keypoints as kp
from personalive_trt.config import CLIP_SIZE, COND_SIZE, LATENT_SCALE, StreamConfig
from personalive_trt.engines.networks import Networks
from personalive_trt.models.scheduler import DDIMSchedule
from personalive_trt.models.weights import Models

NoiseFn = Callable[[torch.Tensor], object]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class NonFiniteError(RuntimeError):
    """A step produced NaN or Inf (e.g. fp16 overflow); nothing was emitted."""


def check_frames(frames: object, window: int, resolution: int, what: str = "frames") -> np.ndarray:
    """Validate a chunk of driving frames: (window, R, R, 3) uint8 RGB."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{what}: expected a numpy uint8 array of shape ({window}, {resolution}, {resolution}, 3), "
                        f"got {type(frames).__name__}")
    expected = (window, resolution, resolution, 3)
    if frames.shape != expected or frames.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 array of shape {expected}, got {frames.dtype} {frames.shape}")
    return frames


def check_image(image: object, resolution: int, what: str = "reference image") -> np.ndarray:
    """Validate a reference image: (R, R, 3) uint8 RGB."""
    expected = (resolution, resolution, 3)
    if not isinstance(image, np.ndarray) or image.shape != expected or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what}: expected a uint8 RGB array of shape {expected}, got {got}")
    return image


def clip_pixels(image: np.ndarray) -> torch.Tensor:
    """CLIPImageProcessor's library defaults: shortest side -> 224 (bicubic), centre crop, normalise."""
    pil = Image.fromarray(image)
    w, h = pil.size
    scale = CLIP_SIZE / min(w, h)
    size = (max(CLIP_SIZE, round(w * scale)), max(CLIP_SIZE, round(h * scale)))
    pil = pil.resize(size, Image.BICUBIC)
    left, top = (size[0] - CLIP_SIZE) // 2, (size[1] - CLIP_SIZE) // 2
    pil = pil.crop((left, top, left + CLIP_SIZE, top + CLIP_SIZE))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) * np.float32(1 / 255)).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """PIL Lanczos resize to ``size`` x ``size`` (aspect not kept), uint8 in and out."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def unit_range(image: np.ndarray, size: int) -> torch.Tensor:
    """PIL Lanczos resize to size x size, then [0,1] -> [-1,1], as (1,3,size,size) float32."""
    if image.shape[:2] != (size, size):
        image = lanczos(image, size)
    x = torch.from_numpy(image.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1).unsqueeze(0)
    return x * 2 - 1


def frames_to_tensor(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (F,H,W,3) -> (F,3,H,W) in [-1,1] (the web app's /255, *2-1)."""
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()
    return (x / 255.0 * 2 - 1).to(dtype)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[0,1] float (F,H,W,3) -> uint8 by truncation, as the original web app does."""
    return (video.float().cpu().numpy() * 255).astype(np.uint8)


@dataclass
class Reference:
    """Everything derived once from one reference portrait."""

    clip_embeds: torch.Tensor  # (1,1,768)
    latent: torch.Tensor  # (1,4,h,w), x LATENT_SCALE
    image: torch.Tensor  # (3,R,R) in [-1,1]: source of the reference face crop
    cond: torch.Tensor  # (1,3,256,256) in [0,1]: motion-extractor input
    detector: dict[str, torch.Tensor]  # motion-extractor output on `cond`
    banks: list[torch.Tensor]  # 16 x (1,HW,C) fp16 reference-attention banks
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # their key/value projections by the denoising UNet


def write_banks(nets: Networks, latent: torch.Tensor, clip_embeds: torch.Tensor) -> list[torch.Tensor]:
    """Reference-UNet pass at t=0; banks are kept in fp16 like the original's reader."""
    return [bank.half() for bank in nets.reference_unet(latent, clip_embeds)]


@torch.no_grad()
def encode_reference(nets: Networks, config: StreamConfig, image: np.ndarray,
                     latent: torch.Tensor | None = None) -> Reference:
    """Everything a stream needs from one portrait ((R,R,3) uint8 RGB): CLIP embedding, VAE latent,
    motion-extractor output, the 16 banks and their key/value projections.

    ``latent`` replaces the VAE encoding (tests start from a stored latent, because the
    random-weight VAE encoder is the most rounding-sensitive block).
    """
    check_image(image, config.resolution)
    return encode_prepared_reference(nets, clip_pixels(image), unit_range(image, config.resolution),
                                     unit_range(image, COND_SIZE) / 2 + 0.5, latent)


@torch.no_grad()
def encode_prepared_reference(nets: Networks, pixels: torch.Tensor, image: torch.Tensor, cond: torch.Tensor,
                              latent: torch.Tensor | None = None) -> Reference:
    """:func:`encode_reference` from the network inputs a caller prepared: CLIP ``pixels`` (1,3,224,224),
    ``image`` (1,3,R,R) in [-1,1] (VAE input), ``cond`` (1,3,256,256) in [0,1] (motion-extractor input)."""
    dev, dt = nets.device, nets.dtype
    clip_embeds = nets.image_encoder(pixels.to(dev, dt))
    image_tensor = image.to(dev, dt)
    if latent is None:
        latent = nets.vae_encoder(image_tensor)
    latent = latent.to(dev, dt)
    cond = cond.to(dev, dt)
    banks = write_banks(nets, latent, clip_embeds)
    return Reference(
        clip_embeds=clip_embeds,
        latent=latent,
        image=image_tensor[0],
        cond=cond,
        detector=nets.pose_encoder(cond),
        banks=banks,
        kv=nets.bank_projector(banks),
    )


class Animator:
    """PersonaLive's online streaming loop (reference implementation).

    Args:
        models (`Models` or `Networks`): the networks: loaded modules (see ``load_models``), run as
            the torch reference, or any :class:`~personalive_trt.engines.networks.Networks` (ONNX Runtime,
            TensorRT engines).
        config (`StreamConfig`, *optional*): stream parameters; defaults to the original's.
        noise (`callable`, *optional*): fills a given tensor in place with the diffusion noise
            (e.g. ``lambda t: t.zero_()``); defaults to a normal draw from a generator seeded with ``seed``.
        seed (`int`, defaults to 42): seed of the default noise generator.
        trace (`dict`, *optional*): when given, every step stores its intermediate tensors in it
            (``trace["calls"]`` list), for parity tests and debugging.
    """

    def __init__(
        self,
        models: Models | Networks,
        config: StreamConfig | None = None,
        noise: NoiseFn | None = None,
        seed: int = 42,
        trace: dict | None = None,
    ) -> None:
        self.config = config or StreamConfig()
        self.nets = models if isinstance(models, Networks) else Networks.from_models(models, self.config)
        if self.nets.shapes.config != self.config:
            raise ValueError(f"Animator: networks were built for {self.nets.shapes.config}, not {self.config}")
        self.device = self.nets.device
        self.dtype = self.nets.dtype
        self.schedule = DDIMSchedule(self.config.step_length, device=self.device)
        self.seed = seed
        if noise is None:
            generator = torch.Generator(self.device).manual_seed(seed)
            noise = lambda t: t.normal_(generator=generator)  # noqa: E731
        self.noise = noise
        self.trace = trace
        self.pile_timesteps = torch.tensor(self.config.pile_timesteps, dtype=torch.int64, device=self.device)
        self.reference: Reference | None = None
        self.reset()

    @property
    def description(self) -> str:
        """Which backend runs the networks (for logs and reports)."""
        return f"reference loop, {self.nets.description}"

    # ---- session state -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the reference and the stream; ``fuse_reference`` must be called again."""
        self.reference = None
        self.count = 0
        self.frame0_detector: dict[str, torch.Tensor] | None = None
        self.latent_pile: list[torch.Tensor] = []
        self.pose_pile: list[torch.Tensor] = []
        self.motion_pile: list[torch.Tensor] = []
        self.motion_bank: torch.Tensor | None = None
        self.keyframe_banks: list[list[torch.Tensor]] = []
        self.keyframe_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def swap_reference(self, image: np.ndarray) -> None:
        """Switch to another portrait mid-session (reset + fuse, as the original web app does)."""
        self.reset()
        self.fuse_reference(image)

    def _noise_like(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(x)
        self.noise(noise)
        return noise

    # ---- reference -----------------------------------------------------------------------------
    @torch.no_grad()
    def fuse_reference(self, image: np.ndarray) -> None:
        """Encode a reference portrait ((R,R,3) uint8 RGB) and prime the warm-up pile."""
        if self.reference is not None:
            raise RuntimeError("fuse_reference: a reference is already fused; call reset() or swap_reference()")
        self.fuse_encoded(self.encode_reference(image))

    @torch.no_grad()
    def encode_reference(self, image: np.ndarray, latent: torch.Tensor | None = None) -> Reference:
        """Everything the stream needs from a portrait (no stream state is touched); see
        :func:`encode_reference`."""
        return encode_reference(self.nets, self.config, image, latent)

    @torch.no_grad()
    def fuse_encoded(self, reference: Reference) -> None:
        """Start a stream on an encoded reference: the warm-up pile noised to t = 0/333/666."""
        cfg = self.config
        self.reference = reference
        warm = reference.latent.unsqueeze(2).repeat(1, 1, cfg.warmup_frames, 1, 1)
        noisy = self.schedule.add_noise(warm, self._noise_like(warm), self.pile_timesteps[: cfg.warmup_frames])
        self.latent_pile = list(noisy.to(self.dtype).split(cfg.window, dim=2))
        if self.trace is not None:
            self.trace.update(fuse={"reference": reference, "latent_pile": list(self.latent_pile)})
            self.trace.setdefault("calls", [])

    def reader_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block: the bank key/value of the reference followed by each history keyframe's, on the
        token axis (the projection is per token, so this equals projecting the concatenated banks)."""
        assert self.reference is not None
        if not self.keyframe_kv:
            return self.reference.kv
        return [tuple(torch.cat([ref[j], *(kf[i][j] for kf in self.keyframe_kv)], dim=1) for j in range(2))
                for i, ref in enumerate(self.reference.kv)]

    # ---- streaming ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, frames: np.ndarray) -> np.ndarray:
        """Feed ``window`` driving frames ((W,R,R,3) uint8 RGB); returns ``window`` output frames."""
        return to_uint8(self.step_float(frames))

    @torch.no_grad()
    def step_float(self, frames: np.ndarray) -> torch.Tensor:
        """As ``step`` but returns the decoded frames as float (W,R,R,3) in [0,1]."""
        images = self._driving_images(frames, "step")
        trace = {} if self.trace is not None else None
        self._advance_conditions(images, trace)
        video = self._denoise_and_decode(trace)
        self._end_call(trace)
        return video

    @torch.no_grad()
    def step_conditions(self, frames: np.ndarray) -> None:
        """One call's conditioning alone: keypoints, keypoint maps, face crops, pose features, motion
        states and the keyframe decision, as :meth:`step` computes them, without the denoising UNet and
        the decoder (parity tests check the conditioning of a long stream in seconds this way).

        The piles of pose features and motion states move on as in ``step``; the latent pile does not
        (the call's fresh chunk is dropped), so the latents are stale afterwards: a test that goes on
        with ``step`` sets them with :meth:`set_latent_pile`. A keyframe this call's decision takes joins
        the motion bank but gets no reference banks (they are written from the denoised latent).
        """
        images = self._driving_images(frames, "step_conditions")
        trace = {} if self.trace is not None else None
        self._advance_conditions(images, trace)
        motion_states = torch.cat(self.motion_pile, dim=1)
        self._keyframe_wanted(motion_states, trace)
        self.latent_pile.pop()
        self.pose_pile.pop(0)
        self.motion_pile.pop(0)
        if trace is not None:
            trace.update(motion_states=motion_states, motion_bank=self.motion_bank,
                         num_keyframes=len(self.keyframe_banks))
        self._end_call(trace)

    def set_latent_pile(self, latents: torch.Tensor) -> None:
        """State injection: the latent pile the next call's UNet starts from (before its fresh chunk),
        ``(1, 4, pile - window, h, w)`` in the x0.18215 domain, e.g. the state a golden stream stores at
        one of its calls, so that a test runs the UNet from there without running every call before it."""
        cfg = self.config
        if self.reference is None:
            raise RuntimeError("set_latent_pile: no reference fused; call fuse_reference(image) first")
        expected = (1, 4, cfg.pile - cfg.window, *self.reference.latent.shape[-2:])
        if tuple(latents.shape) != expected:
            raise ValueError(f"set_latent_pile: expected shape {expected}, got {tuple(latents.shape)}")
        self.latent_pile = list(latents.to(self.device, self.dtype).split(cfg.window, dim=2))

    def _driving_images(self, frames: np.ndarray, what: str) -> torch.Tensor:
        cfg = self.config
        check_frames(frames, cfg.window, cfg.resolution)
        if self.reference is None:
            raise RuntimeError(f"{what}: no reference fused; call fuse_reference(image) first")
        return frames_to_tensor(frames, self.device, self.dtype)

    def _end_call(self, trace: dict | None) -> None:
        if trace is not None:
            self.trace["calls"].append(trace)
        self.count += 1

    def _advance_conditions(self, images: torch.Tensor, trace: dict | None) -> None:
        """Keypoints, pose features and motion states of the new frames; fills the piles."""
        cfg, ref = self.config, self.reference
        first = self.count == 0
        cond = F.interpolate(images, size=(COND_SIZE, COND_SIZE), mode="bilinear", align_corners=False) / 2 + 0.5
        detector = self.nets.pose_encoder(cond)
        if first:
            self.frame0_detector = {k: v[:1] for k, v in detector.items()}
        kp_draw, kps_dri = self._keypoints(detector)
        boxes = kp.face_boxes(kps_dri, size=cfg.resolution)
        faces = kp.crop_faces(images, boxes)
        if first:
            ref_box = kp.face_boxes(kp_draw[:1], size=cfg.resolution)
            faces = torch.cat([kp.crop_faces(ref.image.unsqueeze(0), ref_box), faces])
        self._fill_piles(kp_draw, faces, trace)
        if trace is not None:
            trace.update(kps_dri=kps_dri, boxes=boxes)

    def _keypoints(self, detector: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``kp_draw`` (the warm-up glide on the first call) and ``kps_dri`` of the new frames' detector output."""
        cfg, ref = self.config, self.reference
        if self.count == 0:
            kp_draw, kps_dri = kp.warmup_keypoints(ref.detector, self.frame0_detector, detector,
                                                   num_interp=cfg.warmup_frames + 1)
        else:
            kp_draw, kps_dri = kp.transfer_keypoints(ref.detector, self.frame0_detector, detector)
        if not bool(torch.isfinite(kp_draw).all() & torch.isfinite(kps_dri).all()):  # a host read: the reference loop
            raise NonFiniteError(f"step {self.count}: the pose encoder's keypoints contain NaN/Inf (dtype {self.dtype})")
        return kp_draw, kps_dri

    def _fill_piles(self, kp_draw: torch.Tensor, faces: torch.Tensor, trace: dict | None) -> None:
        """Pose features of the drawn keypoints and motion states of the face crops (on the first call the
        reference face first, then the warm-up glide from its motion) join their piles; a fresh t=999
        latent chunk joins the latent pile."""
        cfg, nets, ref = self.config, self.nets, self.reference
        first = self.count == 0
        maps = kp.draw_keypoints(kp_draw, size=cfg.resolution)
        motion = nets.motion_encoder(faces.transpose(0, 1).unsqueeze(0))  # (1, F, 32, 16)
        pose = nets.pose_guider(maps.to(self.dtype).transpose(0, 1).unsqueeze(0))  # (1, 320, F, h, w)
        if first:
            ref_motion, driving_motion = motion[:, :1], motion[:, 1:]
            alphas = torch.linspace(0, 1, cfg.warmup_frames + 1, device=motion.device, dtype=motion.dtype)
            alphas = alphas.view(1, -1, 1, 1)
            warm = ((1 - alphas) * ref_motion + alphas * driving_motion[:, :1])[:, :-1]
            self.motion_pile = [*warm.split(cfg.window, dim=1), driving_motion]
            self.motion_bank = ref_motion
            self.pose_pile = list(pose.split(cfg.window, dim=2))
        else:
            self.motion_pile.append(motion)
            self.pose_pile.append(pose)
        fresh = ref.latent.unsqueeze(2).repeat(1, 1, cfg.window, 1, 1)
        fresh = self.schedule.add_noise(fresh, self._noise_like(fresh), self.pile_timesteps[-1:])
        self.latent_pile.append(fresh.to(self.dtype))
        if trace is not None:
            trace.update(kp_draw=kp_draw, maps=maps, faces=faces, motion_encoder_out=motion, pose_fea=pose)

    def _keyframe_wanted(self, motion_states: torch.Tensor, trace: dict | None) -> bool:
        """Is the pile's first frame a new history keyframe? (host decision, once per call)."""
        cfg = self.config
        if self.count <= cfg.keyframe_start or len(self.keyframe_banks) >= cfg.online_keyframes:
            # With all keyframes taken the original still grows its motion bank, but nothing
            # reads it any more, so skipping the test changes no output.
            return False
        candidate = motion_states[:, :1].flatten(1).float()
        bank = self.motion_bank.flatten(2)[0].float()
        distances = torch.cdist(candidate, bank)[0]
        wanted = bool(distances.min() > cfg.keyframe_threshold)
        if wanted:
            self.motion_bank = torch.cat([self.motion_bank, motion_states[:, :1]], dim=1)
        if trace is not None:
            trace.update(keyframe_distances=distances, keyframe_added=wanted)
        return wanted

    def _denoise_and_decode(self, trace: dict | None) -> torch.Tensor:
        cfg, nets, ref = self.config, self.nets, self.reference
        motion_states = torch.cat(self.motion_pile, dim=1)
        pose = torch.cat(self.pose_pile, dim=2)
        add_keyframe = self._keyframe_wanted(motion_states, trace)
        latents = torch.cat(self.latent_pile, dim=2)
        noise_pred = nets.denoising_unet(
            latents, self.pile_timesteps, ref.clip_embeds, motion_states, pose, self.reader_kv()
        )
        fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (1,C,F,h,w) -> (F,C,h,w)
        prev, clean = self.schedule.step(fold(noise_pred).float(), self.pile_timesteps, fold(latents).float())
        stepped = torch.cat([clean[: cfg.window], prev[cfg.window:]]).to(self.dtype)
        if not bool(torch.isfinite(stepped).all()):
            raise NonFiniteError(f"step {self.count}: the denoised latents contain NaN/Inf (dtype {self.dtype})")
        if add_keyframe:
            banks = write_banks(self.nets, clean[:1].to(self.dtype), ref.clip_embeds)
            self.keyframe_banks.append(banks)
            self.keyframe_kv.append(self.nets.bank_projector(banks))
        chunks = stepped.unsqueeze(0).transpose(1, 2).split(cfg.window, dim=2)
        self.latent_pile = list(chunks[1:])
        self.pose_pile.pop(0)
        self.motion_pile.pop(0)
        out_latents = chunks[0][0].transpose(0, 1)  # (W,4,h,w)
        video = nets.vae_decoder(out_latents).permute(0, 2, 3, 1)
        if not bool(torch.isfinite(video).all()):
            raise NonFiniteError(f"step {self.count}: the decoded frames contain NaN/Inf (dtype {self.dtype})")
        if trace is not None:
            trace.update(latents_in=latents, noise_pred=noise_pred, timesteps=self.pile_timesteps,
                         motion_states=motion_states, pose_cond=pose, prev_sample=prev, pred_original=clean,
                         vae_decode_in=out_latents / LATENT_SCALE, video=video,
                         num_keyframes=len(self.keyframe_banks), motion_bank=self.motion_bank)
        return video
