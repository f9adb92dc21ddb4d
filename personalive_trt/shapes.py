"""Every tensor shape of the streaming loop, derived once from the stream config and the UNet config.

Export specs (input/output shapes, dynamic axes, sample inputs), TensorRT optimisation profiles and
the runtime's preallocated buffers all read :class:`StreamShapes`; nothing else hard-codes window,
pile, canvas, latent or bank sizes.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from personalive_trt.config import (
    CLIP_SIZE,
    COND_SIZE,
    FACE_SIZE,
    LATENT_CHANNELS,
    MOTION_DIM,
    MOTION_TOKENS,
    NUM_KEYPOINTS,
    VAE_DOWNSCALE,
    StreamConfig,
)


@dataclass(frozen=True)
class Bank:
    """One reference-attention bank: the post-norm1 tokens of one spatial transformer block."""

    name: str  # module path, identical in the reference UNet and the denoising UNet
    tokens: int  # tokens of ONE bank (reference or one keyframe): (latent / 2**level) ** 2
    channels: int


def bank_layout(unet_config: Mapping, latent: int) -> tuple[Bank, ...]:
    """The banks of an SD-style UNet config, in the models' canonical ``bank_names`` order.

    Canonical order = module-definition order: down blocks with attention, up blocks with
    attention, then the mid block (diffusers registers ``up_blocks`` before ``mid_block``).
    """
    channels = list(unet_config["block_out_channels"])
    levels = len(channels)
    per_down = unet_config["layers_per_block"]
    banks = []
    for i, kind in enumerate(unet_config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            banks += [Bank(f"down_blocks.{i}.attentions.{j}.transformer_blocks.0", (latent >> i) ** 2, channels[i])
                      for j in range(per_down)]
    for i, kind in enumerate(unet_config["up_block_types"]):
        level = levels - 1 - i
        if kind.startswith("CrossAttn"):
            banks += [Bank(f"up_blocks.{i}.attentions.{j}.transformer_blocks.0", (latent >> level) ** 2,
                           channels[level]) for j in range(per_down + 1)]
    banks.append(Bank("mid_block.attentions.0.transformer_blocks.0", (latent >> (levels - 1)) ** 2, channels[-1]))
    return tuple(banks)


def kv_names(bank_name: str) -> tuple[str, str]:
    """Tensor names of a bank's key and value projections (denoising-UNet inputs)."""
    name = safe_name(bank_name)
    return f"{name}_key", f"{name}_value"


def safe_name(bank_name: str) -> str:
    """A bank's tensor name in exported graphs: ``bank_down_blocks_0_attentions_0``."""
    return "bank_" + re.sub(r"\.transformer_blocks\.0$", "", bank_name).replace(".", "_")


@dataclass(frozen=True)
class StreamShapes:
    """All sizes of one streaming configuration.

    Args:
        config (`StreamConfig`): window, steps, canvas, keyframe cap.
        banks (`tuple[Bank]`): reference-attention banks (see :func:`bank_layout`).
        pose_channels (`int`): pose-guider output = first UNet level width.
        clip_dim (`int`): CLIP projection width = UNet cross-attention width.
        batch (`int`, defaults to 1): streams processed together.
    """

    config: StreamConfig
    banks: tuple[Bank, ...]
    pose_channels: int
    clip_dim: int
    batch: int = 1

    @classmethod
    def from_unet_config(cls, config: StreamConfig, unet_config: Mapping, batch: int = 1) -> "StreamShapes":
        latent = config.resolution // VAE_DOWNSCALE
        return cls(config=config, banks=bank_layout(unet_config, latent),
                   pose_channels=unet_config["block_out_channels"][0],
                   clip_dim=unet_config["cross_attention_dim"], batch=batch)

    # ---- stream sizes (see StreamConfig) -------------------------------------------------------
    @property
    def window(self) -> int:
        return self.config.window

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def pile(self) -> int:
        return self.config.pile

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def latent(self) -> int:
        return self.config.latent_size

    @property
    def max_bank_length(self) -> int:
        """Banks per block: the reference plus up to ``config.keyframe_banks`` history keyframes."""
        return 1 + self.config.keyframe_banks

    # ---- tensor shapes ---------------------------------------------------------------------------
    def latent_pile(self) -> tuple[int, ...]:
        return self.latent_chunk(self.pile)

    def latent_chunk(self, frames: int) -> tuple[int, ...]:
        """``frames`` consecutive pile frames, frames on axis 2 like the pile."""
        return (self.batch, LATENT_CHANNELS, frames, self.latent, self.latent)

    def latent_frames(self, frames: int) -> tuple[int, ...]:
        return (frames, LATENT_CHANNELS, self.latent, self.latent)

    def pose_features(self, frames: int) -> tuple[int, ...]:
        return (self.batch, self.pose_channels, frames, self.latent, self.latent)

    def keypoint_maps(self, frames: int) -> tuple[int, ...]:
        return (self.batch, 3, frames, self.resolution, self.resolution)

    def motion_states(self, frames: int) -> tuple[int, ...]:
        return (self.batch, frames, MOTION_TOKENS, MOTION_DIM)

    def faces(self, frames: int) -> tuple[int, ...]:
        return (self.batch, 3, frames, FACE_SIZE, FACE_SIZE)

    def frames(self, frames: int) -> tuple[int, ...]:
        return (frames, 3, self.resolution, self.resolution)

    def cond_frames(self, frames: int) -> tuple[int, ...]:
        return (frames, 3, COND_SIZE, COND_SIZE)

    def clip_pixels(self) -> tuple[int, ...]:
        return (self.batch, 3, CLIP_SIZE, CLIP_SIZE)

    def clip_embeds(self) -> tuple[int, ...]:
        return (self.batch, 1, self.clip_dim)

    def bank(self, index: int, length: int = 1) -> tuple[int, ...]:
        """Bank ``index`` holding ``length`` banks (reference + keyframes) on the token axis."""
        bank = self.banks[index]
        return (self.batch, length * bank.tokens, bank.channels)

    def keypoints(self, frames: int) -> tuple[int, ...]:
        return (frames, NUM_KEYPOINTS, 3)
