"""Streaming configuration: the one source of truth for the shapes of the streaming loop.

Every size the loop, the exporters, the engine profiles and the runtime buffers use
(window, denoising steps, pile length, canvas, latent size, timesteps, bank capacity)
is a field or a derived property of :class:`StreamConfig`.

Two numbers bound the keyframes, and they differ in the offline mode: ``max_keyframes`` is how many history
keyframes the keyframe *test* takes (the original's 3, online and offline), ``bank_capacity`` how many history
banks the reference banks can hold (what the denoising UNet's bank axis, a built engine's profile and the
runtime's buffers are sized for). Online they are the same number; the offline loop's sticky flag keeps
appending banks after its 3 tested keyframes, up to ``--keyframe-limit`` (``bank_capacity``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from personalive_trt.choices import Decoder

# Constants of the released model (not tunable without retraining).
LATENT_SCALE = 0.18215  # SD1.x latent scaling; hard-coded for encode and decode in the original
VAE_DOWNSCALE = 8  # pixel -> latent
LATENT_CHANNELS = 4
MOTION_TOKENS = 32  # motion encoder: 32 tokens of 16 dims per frame
MOTION_DIM = 16
NUM_KEYPOINTS = 21
POSE_CANVAS = 512  # draw_keypoints / get_boxes assume a 512 x 512 canvas
FACE_SIZE = 224  # motion-encoder face crops
COND_SIZE = 256  # motion-extractor input size
CLIP_SIZE = 224
# Per-step VAE decoders (personalive_trt.choices.Decoder): "full" = the released SD VAE (sd-vae-ft-mse) decoder;
# "tiny" = TAESD (madebyollin/taesd, diffusers' AutoencoderTiny), which decodes the x0.18215 latents directly.
VAE_DECODERS = tuple(decoder.value for decoder in Decoder)
VAE_HELP = ("Per-step decoder: full (the SD VAE decoder) or tiny (TAESD: ~1/18 of the full decoder's FLOPs, a "
            "distilled, slightly blurrier decode; needs taesd/ in the weights folder, see `weights download`).")
COMPILE_HELP = ("torch backend: torch.compile the per-step networks (static shapes, inside the CUDA graphs). auto: "
                "only where the compile cache for this configuration is warm (filled by `build --backend torch "
                "--compile`); on: compile now (a cold start takes minutes on a GPU); off: eager modules.")


@dataclass(frozen=True)
class StreamConfig:
    """Parameters of the online streaming loop (defaults = the original online config).

    Args:
        window (`int`, defaults to 4): frames per chunk; one denoising-UNet call per
            ``window`` new driving frames (``temporal_window_size``).
        steps (`int`, defaults to 4): denoising steps, which is also the number of windows
            in the latent pile (``temporal_adaptive_step`` / ``num_inference_steps``).
        step_length (`int`, defaults to 333): DDIM timestep stride; timesteps are
            ``step_length * (steps-1) ... step_length * 0``.
        resolution (`int`, defaults to 512): square canvas of frames. 512 is the model's
            canvas and the only size checked against the golden data; smaller multiples of 64
            run (keypoint canvas scaled) for fast tests.
        keyframe_threshold (`float`, defaults to 17.0): motion distance above which the first
            frame of the pile becomes a history keyframe.
        keyframe_start (`int`, defaults to 8): keyframes are checked once more than this many
            calls have finished (i.e. from the 10th call on with the default).
        max_keyframes (`int`, defaults to 3): history keyframes the keyframe test takes (the online loop's cap;
            the offline loop's tested keyframes).
        vae (`Decoder` or its string, defaults to ``"full"``): the decoder of every step's frames: ``"full"`` (the released
            SD VAE decoder, ~10 of the ~35 TFLOP of a full-size step) or ``"tiny"`` (TAESD: ~0.6 TFLOP,
            a distilled approximation of the same decode; needs ``taesd/`` in the weights folder). The
            reference is always encoded by the full VAE encoder: it runs once per reference, and the
            reference UNet was trained on that encoder's latents.
        bank_capacity (`int`, *optional*): history banks the reference banks hold (the bank axis is
            ``1 + bank_capacity`` long at most). ``None`` (and a value equal to ``max_keyframes``, which is
            stored as ``None``): ``max_keyframes``, the online loop's. Left out of :meth:`as_dict` while
            ``None``, so that records written before the field existed (build.json, engine and compile keys)
            stay byte for byte the same.
    """

    window: int = 4
    steps: int = 4
    step_length: int = 333
    resolution: int = 512
    keyframe_threshold: float = 17.0
    keyframe_start: int = 8
    max_keyframes: int = 3
    vae: Decoder = Decoder.FULL
    bank_capacity: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae", Decoder.parse(self.vae, "StreamConfig.vae"))  # "tiny" -> Decoder.TINY
        if self.bank_capacity is not None:
            if not isinstance(self.bank_capacity, int) or self.bank_capacity < 0:
                raise ValueError(f"StreamConfig.bank_capacity must be an integer >= 0, got {self.bank_capacity!r}")
            if self.bank_capacity == self.max_keyframes:  # one spelling per configuration (equal keys)
                object.__setattr__(self, "bank_capacity", None)
        for name in ("window", "steps", "step_length", "resolution"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StreamConfig.{name} must be a positive integer, got {value!r}")
        if self.resolution % 64:
            raise ValueError(f"StreamConfig.resolution must be a multiple of 64, got {self.resolution}")
        if self.step_length * (self.steps - 1) > 999:
            raise ValueError(
                f"StreamConfig: step_length*(steps-1) = {self.step_length * (self.steps - 1)} exceeds the "
                "1000-step training schedule"
            )
        if self.max_keyframes < 0 or self.keyframe_start < 0:
            raise ValueError("StreamConfig.max_keyframes and keyframe_start must be >= 0")

    # ---- derived sizes -------------------------------------------------------------------
    def as_dict(self) -> dict:
        """The fields as plain data, what records store (``bank_capacity`` only when set, see above)."""
        fields = dataclasses.asdict(self)
        if fields["bank_capacity"] is None:
            del fields["bank_capacity"]
        return fields

    def engine_fields(self) -> dict:
        """The fields a built engine depends on: every field but the keyframe decision's threshold
        and start call, which the loop reads at run time (a bench ``--keyframes K`` or a test that
        forces keyframes runs on engines built with the defaults). ``max_keyframes`` stays: it
        sizes the reference banks unless ``bank_capacity`` is set."""
        fields = self.as_dict()
        for name in ("keyframe_threshold", "keyframe_start"):
            fields.pop(name)
        return fields

    @property
    def keyframe_banks(self) -> int:
        """History banks the reference banks hold: ``bank_capacity``, or ``max_keyframes`` when unset."""
        return self.max_keyframes if self.bank_capacity is None else self.bank_capacity

    @property
    def online_keyframes(self) -> int:
        """Keyframes the online loops take: ``max_keyframes``, never more than the banks hold."""
        return min(self.max_keyframes, self.keyframe_banks)

    @property
    def pile(self) -> int:
        """Frames in the latent pile denoised by one UNet call (window * steps)."""
        return self.window * self.steps

    @property
    def warmup_frames(self) -> int:
        """Interpolated reference->first-frame frames emitted before the first driving frame."""
        return self.window * (self.steps - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // VAE_DOWNSCALE

    @property
    def timesteps(self) -> tuple[int, ...]:
        """Per-window timesteps, oldest window (cleanest) last: e.g. (999, 666, 333, 0)."""
        return tuple(self.step_length * i for i in reversed(range(self.steps)))

    @property
    def pile_timesteps(self) -> tuple[int, ...]:
        """Per-frame timesteps of the pile, oldest window first: [0]*W + [333]*W + ... ."""
        return tuple(t for t in reversed(self.timesteps) for _ in range(self.window))

    @property
    def motion_bank_capacity(self) -> int:
        """Motion states kept for the keyframe test.

        The bank starts with the reference motion and grows by one entry exactly when a
        keyframe is added, as long as fewer than ``max_keyframes`` exist; entries added after
        that can never change a decision (no more keyframes are taken), so 1 + max_keyframes
        entries reproduce the original's unbounded bank exactly.
        """
        return 1 + self.max_keyframes

    # ---- YAML ----------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "StreamConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read stream config: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "StreamConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of StreamConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown StreamConfig key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data)
