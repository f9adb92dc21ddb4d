"""PersonaLive's denoising UNet ("UNet3D"): the SD UNet run on frames, plus motion/temporal modules.

Almost everything in the original 3-D UNet is per-frame: inflated convs and inflated GroupNorms
are 2-D ops applied frame by frame, each frame has its own timestep embedding, and the spatial
transformers attend within a frame (to its own tokens, the reference bank and the CLIP embedding).
So the whole network runs on frames folded into the batch, ``(B*F, C, H, W)`` (b-major, the
original's ``(b f)``), with stock diffusers blocks (``ResnetBlock2D``, ``Transformer2DModel``,
``Downsample2D``, ``Upsample2D``). Only two kinds of module mix information across frames or bring
the motion context, and they sit after the spatial transformer of every layer
(:mod:`personalive_trt.models.motion_module`):

    resnet -> spatial transformer (if any) -> motion module -> temporal module

(in the mid block: resnet, then per layer transformer -> motion -> temporal -> resnet).

The state_dict equals the original's (``personalive/denoising_unet.pth`` + ``temporal_module.pth``
over the SD UNet: 1820 keys at full size, including the persistent ``pos_encoder.pe`` tables).
Reference attention: every spatial ``attn1`` carries a
:class:`~personalive_trt.models.reference_attention.ReferenceReaderProcessor`; ``forward`` binds
one bank per block for the duration of the call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from personalive_trt.models.motion_module import MotionModule
from personalive_trt.models.reference_attention import (
    ReferenceReaderProcessor,
    bank_block_names,
    bound_banks,
    install_processors,
    project_bank,
)

DOWN_BLOCK_TYPES_3D = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES_3D = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
MID_BLOCK_TYPE_3D = "UNetMidBlock3DCrossAttn"


@dataclass
class FrameContext:
    """Per-call conditioning shared by all blocks, already folded to ``B*F`` rows."""

    temb: torch.Tensor  # (B*F, time_embed_dim): one timestep embedding per frame
    clip: torch.Tensor  # (B*F, 1, cross_attention_dim): CLIP image embeds repeated per frame
    motion: torch.Tensor  # (B*F, 32, 16): each frame's motion tokens
    num_frames: int


def _motion_module(channels: int, enabled: bool, kwargs: dict) -> MotionModule | None:
    return MotionModule(channels, **kwargs) if enabled else None


class _LayerStack(nn.Module):
    """Shared forward of one UNet layer: resnet -> transformer -> motion module -> temporal module."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList | None
    motion_modules: nn.ModuleList
    temporal_modules: nn.ModuleList

    def _layer(self, i: int, x: torch.Tensor, ctx: FrameContext, resnet: nn.Module) -> torch.Tensor:
        x = resnet(x, ctx.temb)
        return self._mix(i, x, ctx)

    def _mix(self, i: int, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        if self.attentions is not None:
            x = self.attentions[i](x, encoder_hidden_states=ctx.clip, return_dict=False)[0]
        if self.motion_modules[i] is not None:
            x = self.motion_modules[i](x, ctx.num_frames, ctx.motion)
        if self.temporal_modules[i] is not None:
            x = self.temporal_modules[i](x, ctx.num_frames)
        return x


def _transformer(channels: int, heads: int, cross_attention_dim: int, groups: int, use_linear_projection: bool,
                 upcast_attention: bool) -> Transformer2DModel:
    # SD1.x convention: "attention_head_dim" in the config is the number of heads.
    return Transformer2DModel(heads, channels // heads, in_channels=channels, num_layers=1,
                              cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                              use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)


class DownBlock3D(_LayerStack):
    """``CrossAttnDownBlock3D`` (with ``attentions``) or ``DownBlock3D`` (without), on folded frames."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, temb_channels: int, eps: float,
                 groups: int, act_fn: str, with_attention: bool, heads: int, cross_attention_dim: int,
                 use_linear_projection: bool, upcast_attention: bool, add_downsample: bool, downsample_padding: int,
                 use_motion: bool, motion_kwargs: dict, use_temporal: bool, temporal_kwargs: dict) -> None:
        super().__init__()
        # registration order mirrors the original (attentions, resnets, motion, temporal, downsamplers)
        self.attentions = nn.ModuleList([
            _transformer(out_channels, heads, cross_attention_dim, groups, use_linear_projection, upcast_attention)
            for _ in range(num_layers)
        ]) if with_attention else None
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=temb_channels, eps=eps, groups=groups, non_linearity=act_fn)
            for i in range(num_layers)
        ])
        self.motion_modules = nn.ModuleList([_motion_module(out_channels, use_motion, motion_kwargs)
                                             for _ in range(num_layers)])
        self.temporal_modules = nn.ModuleList([_motion_module(out_channels, use_temporal, temporal_kwargs)
                                               for _ in range(num_layers)])
        self.downsamplers = nn.ModuleList([
            Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")
        ]) if add_downsample else None

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = self._layer(i, x, ctx, resnet)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class UpBlock3D(_LayerStack):
    """``CrossAttnUpBlock3D`` (with ``attentions``) or ``UpBlock3D`` (without), on folded frames."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int,
                 temb_channels: int, eps: float, groups: int, act_fn: str, with_attention: bool, heads: int,
                 cross_attention_dim: int, use_linear_projection: bool, upcast_attention: bool, add_upsample: bool,
                 use_motion: bool, motion_kwargs: dict, use_temporal: bool, temporal_kwargs: dict) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([
            _transformer(out_channels, heads, cross_attention_dim, groups, use_linear_projection, upcast_attention)
            for _ in range(num_layers)
        ]) if with_attention else None
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock2D(in_channels=resnet_in + skip_channels, out_channels=out_channels,
                                         temb_channels=temb_channels, eps=eps, groups=groups, non_linearity=act_fn))
        self.resnets = nn.ModuleList(resnets)
        self.motion_modules = nn.ModuleList([_motion_module(out_channels, use_motion, motion_kwargs)
                                             for _ in range(num_layers)])
        self.temporal_modules = nn.ModuleList([_motion_module(out_channels, use_temporal, temporal_kwargs)
                                               for _ in range(num_layers)])
        self.upsamplers = nn.ModuleList([
            Upsample2D(out_channels, use_conv=True, out_channels=out_channels)
        ]) if add_upsample else None

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...], ctx: FrameContext,
                upsample_size: Sequence[int] | None = None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = self._layer(i, x, ctx, resnet)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class MidBlock3D(_LayerStack):
    """``UNetMidBlock3DCrossAttn``: resnet, then per layer transformer -> motion -> temporal -> resnet."""

    def __init__(self, channels: int, temb_channels: int, eps: float, groups: int, act_fn: str,
                 output_scale_factor: float, heads: int, cross_attention_dim: int, use_linear_projection: bool,
                 upcast_attention: bool, use_motion: bool, motion_kwargs: dict, use_temporal: bool,
                 temporal_kwargs: dict, num_layers: int = 1) -> None:
        super().__init__()

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=temb_channels, eps=eps,
                                 groups=groups, non_linearity=act_fn, output_scale_factor=output_scale_factor)

        self.attentions = nn.ModuleList([
            _transformer(channels, heads, cross_attention_dim, groups, use_linear_projection, upcast_attention)
            for _ in range(num_layers)
        ])
        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])
        self.motion_modules = nn.ModuleList([_motion_module(channels, use_motion, motion_kwargs)
                                             for _ in range(num_layers)])
        self.temporal_modules = nn.ModuleList([_motion_module(channels, use_temporal, temporal_kwargs)
                                               for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        x = self.resnets[0](x, ctx.temb)
        for i, resnet in enumerate(self.resnets[1:]):
            x = self._mix(i, x, ctx)
            x = resnet(x, ctx.temb)
        return x


class UNet3DConditionModel(ModelMixin, ConfigMixin):
    """PersonaLive's denoising UNet (stage-3 configuration of the release).

    Build with :meth:`from_base_config` from the SD ``unet/config.json`` and the extra kwargs of
    ``configs/unet3d.yaml``; load ``denoising_unet.pth`` and ``temporal_module.pth`` on top of the SD
    UNet weights (same key names as the original).
    """

    @register_to_config
    def __init__(  # the signature is the released config.json's keys (diffusers' register_to_config), hence its length
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = DOWN_BLOCK_TYPES_3D,
        mid_block_type: str = MID_BLOCK_TYPE_3D,
        up_block_types: Sequence[str] = UP_BLOCK_TYPES_3D,
        only_cross_attention: bool = False,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        attention_head_dim: int | Sequence[int] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        use_inflated_groupnorm: bool = True,
        use_motion_module: bool = False,
        use_temporal_module: bool = False,
        motion_module_resolutions: Sequence[int] = (1, 2, 4, 8),
        motion_module_mid_block: bool = False,
        motion_module_decoder_only: bool = False,
        motion_module_type: str | None = "Vanilla",
        temporal_module_type: str | None = "Vanilla",
        motion_module_kwargs: dict | None = None,
        temporal_module_kwargs: dict | None = None,
        unet_use_cross_frame_attention: bool | None = None,
        unet_use_temporal_attention: bool | None = None,
    ) -> None:
        super().__init__()
        self._check_supported(center_input_sample, only_cross_attention, resnet_time_scale_shift,
                              use_inflated_groupnorm, motion_module_type, temporal_module_type,
                              unet_use_cross_frame_attention, unet_use_temporal_attention, mid_block_type,
                              down_block_types, up_block_types, block_out_channels)
        motion_kwargs = dict(motion_module_kwargs or {})
        temporal_kwargs = dict(temporal_module_kwargs or {})
        levels = len(block_out_channels)
        heads = ([attention_head_dim] * levels if isinstance(attention_head_dim, int)
                 else list(attention_head_dim))
        time_embed_dim = block_out_channels[0] * 4
        common = dict(temb_channels=time_embed_dim, eps=norm_eps, groups=norm_num_groups, act_fn=act_fn,
                      cross_attention_dim=cross_attention_dim, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention, motion_kwargs=motion_kwargs,
                      temporal_kwargs=temporal_kwargs)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)

        # Which levels carry motion / temporal modules (by their downsampling factor).
        down_motion = [(2 ** i) in motion_module_resolutions and not motion_module_decoder_only for i in range(levels)]
        up_motion = [(2 ** (levels - 1 - i)) in motion_module_resolutions for i in range(levels)]
        self.down_blocks = self._down_blocks(down_block_types, block_out_channels, heads, layers_per_block,
                                             downsample_padding, [use_motion_module and m for m in down_motion],
                                             [use_temporal_module and m for m in down_motion], common)
        # up_blocks are registered before mid_block, like diffusers' and the original UNet: this fixes
        # the DFS order of the bank blocks (= bank_names) to the reference UNet's.
        self.up_blocks = self._up_blocks(up_block_types, block_out_channels, heads, layers_per_block,
                                         [use_motion_module and m for m in up_motion],
                                         [use_temporal_module and m for m in up_motion], common)

        self.mid_block = MidBlock3D(
            block_out_channels[-1], output_scale_factor=mid_block_scale_factor, heads=heads[-1],
            use_motion=use_motion_module and motion_module_mid_block,
            use_temporal=use_temporal_module and motion_module_mid_block, **common)

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups,
                                          eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

        self.bank_names: list[str] = bank_block_names(self)
        self._readers = install_processors(self, self.bank_names, ReferenceReaderProcessor)

    @staticmethod
    def _down_blocks(block_types: Sequence[str], channels: Sequence[int], heads: list[int], layers: int,
                     downsample_padding: int, motion: list[bool], temporal: list[bool], common: dict) -> nn.ModuleList:
        blocks = nn.ModuleList()
        output_channel = channels[0]
        for i, block_type in enumerate(block_types):
            input_channel, output_channel = output_channel, channels[i]
            blocks.append(DownBlock3D(
                input_channel, output_channel, layers, with_attention=block_type.startswith("CrossAttn"),
                heads=heads[i], add_downsample=i < len(channels) - 1, downsample_padding=downsample_padding,
                use_motion=motion[i], use_temporal=temporal[i], **common))
        return blocks

    @staticmethod
    def _up_blocks(block_types: Sequence[str], channels: Sequence[int], heads: list[int], layers: int,
                   motion: list[bool], temporal: list[bool], common: dict) -> nn.ModuleList:
        blocks = nn.ModuleList()
        levels = len(channels)
        reversed_channels = list(reversed(channels))
        reversed_heads = list(reversed(heads))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(block_types):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, levels - 1)]
            blocks.append(UpBlock3D(
                input_channel, prev_output_channel, output_channel, layers + 1,
                with_attention=block_type.startswith("CrossAttn"), heads=reversed_heads[i],
                add_upsample=i < levels - 1, use_motion=motion[i], use_temporal=temporal[i], **common))
        return blocks

    @staticmethod
    def _check_supported(center_input_sample, only_cross_attention, resnet_time_scale_shift,
                         use_inflated_groupnorm, motion_module_type, temporal_module_type,
                         unet_use_cross_frame_attention, unet_use_temporal_attention, mid_block_type,
                         down_block_types, up_block_types, block_out_channels) -> None:
        """Refuse original options this reimplementation does not cover (none is used by the release)."""
        problems = []
        if center_input_sample:
            problems.append("center_input_sample")
        if only_cross_attention:
            problems.append("only_cross_attention")
        if resnet_time_scale_shift != "default":
            problems.append(f"resnet_time_scale_shift={resnet_time_scale_shift!r}")
        if not use_inflated_groupnorm:
            # a plain GroupNorm on (b, c, f, h, w) would normalise across frames
            problems.append("use_inflated_groupnorm=False")
        for name, value in (("motion_module_type", motion_module_type), ("temporal_module_type", temporal_module_type)):
            if value not in (None, "Vanilla"):
                problems.append(f"{name}={value!r}")
        if unet_use_cross_frame_attention or unet_use_temporal_attention:
            problems.append("unet_use_cross_frame_attention / unet_use_temporal_attention")
        if mid_block_type != MID_BLOCK_TYPE_3D:
            problems.append(f"mid_block_type={mid_block_type!r}")
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            problems.append("block type lists must match block_out_channels")
        for block_type in list(down_block_types) + list(up_block_types):
            if block_type not in ("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"):
                problems.append(f"block type {block_type!r}")
        if problems:
            raise NotImplementedError("UNet3DConditionModel does not support: " + ", ".join(problems))

    @classmethod
    def from_base_config(cls, base_config: dict[str, Any], additional_kwargs: dict[str, Any]) -> "UNet3DConditionModel":
        """Build like the original ``from_pretrained_2d`` (without loading weights).

        ``base_config`` is the SD ``unet/config.json`` dict; its block types are replaced by the 3-D
        ones and ``additional_kwargs`` (``configs/unet3d.yaml``) is applied on top. Keys of the base
        config this class has no parameter for (``_class_name``, ...) are dropped.
        """
        config = dict(base_config)
        config.update(down_block_types=list(DOWN_BLOCK_TYPES_3D), up_block_types=list(UP_BLOCK_TYPES_3D),
                      mid_block_type=MID_BLOCK_TYPE_3D)
        config.update(additional_kwargs)
        accepted = set(cls._get_init_keys(cls)) - {"self"}
        unknown_extra = set(additional_kwargs) - accepted
        if unknown_extra:
            raise TypeError(f"unknown UNet3D kwargs: {sorted(unknown_extra)}")
        return cls(**{key: value for key, value in config.items() if key in accepted})

    def project_banks(self, banks: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each block's key/value projection of its bank (``bank_names`` order), in the model dtype.

        Projection is per token, so the pairs of several banks concatenated on the token axis equal
        the projection of the concatenated banks."""
        if len(banks) != len(self.bank_names):
            raise ValueError(f"expected {len(self.bank_names)} reference banks, got {len(banks)}")
        dtype = self.conv_in.weight.dtype
        return [project_bank(self.get_submodule(name).attn1, bank, dtype) for name, bank in zip(self.bank_names, banks)]

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor,
                motion_hidden_states: torch.Tensor, pose_cond_fea: torch.Tensor,
                reference_banks: Sequence[torch.Tensor] | None = None,
                reference_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Predict the noise of a pile of frames.

        Args:
            sample: ``(B, 4, F, h, w)`` noisy latents.
            timesteps: ``(B*F,)`` per-frame timesteps, ``(b f)`` order.
            encoder_hidden_states: ``(B, 1, 768)`` CLIP image embeds (shared by all frames).
            motion_hidden_states: ``(B, F, 32, 16)`` motion tokens per frame.
            pose_cond_fea: ``(B, 320, F, h, w)`` pose-guider features, added after ``conv_in``.
            reference_banks: one tensor per ``bank_names`` entry, ``(B, L*HW_l, C_l)`` = the reference
                bank followed by the history-keyframe banks on the token axis (any float dtype;
                cast to the activations' dtype). ``None`` runs without reference attention.
            reference_kv: instead of ``reference_banks``, the banks already projected by
                :meth:`project_banks`: one ``(key, value)`` pair per ``bank_names`` entry. The
                streaming runtime projects each reference/keyframe bank once, not on every call.

        Returns:
            ``(B, 4, F, h, w)`` noise prediction.
        """
        batch, _, frames, height, width = sample.shape
        dtype = sample.dtype

        def fold(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B*F, C, H, W)
            return x.transpose(1, 2).reshape(batch * frames, x.shape[1], x.shape[3], x.shape[4])

        temb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        ctx = FrameContext(
            temb=temb,
            clip=encoder_hidden_states.to(dtype).repeat_interleave(frames, dim=0),
            motion=motion_hidden_states.to(dtype).reshape(batch * frames, *motion_hidden_states.shape[2:]),
            num_frames=frames,
        )

        # Upsampling must be forced to the skip size when h, w are not multiples of 2^(levels-1).
        factor = 2 ** (len(self.up_blocks) - 1)
        force_upsample_size = height % factor != 0 or width % factor != 0

        with bound_banks(self._readers, reference_banks, reference_kv):
            x = self.conv_in(fold(sample)) + fold(pose_cond_fea).to(dtype)
            skips: tuple[torch.Tensor, ...] = (x,)
            for block in self.down_blocks:
                x, block_skips = block(x, ctx)
                skips += block_skips
            x = self.mid_block(x, ctx)
            for i, block in enumerate(self.up_blocks):
                count = len(block.resnets)
                block_skips, skips = skips[-count:], skips[:-count]
                is_last = i == len(self.up_blocks) - 1
                upsample_size = skips[-1].shape[2:] if force_upsample_size and not is_last else None
                x = block(x, block_skips, ctx, upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(batch, frames, x.shape[1], height, width).transpose(1, 2)
