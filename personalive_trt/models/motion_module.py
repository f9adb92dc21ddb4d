"""Motion and temporal modules of PersonaLive's denoising UNet.

Both are AnimateDiff-style "Vanilla" modules (state_dict prefix ``temporal_transformer.``) inserted
after the spatial transformer of every UNet layer; they differ only in their attention blocks:

* motion modules (``*.motion_modules.N``): ``Spatial_Cross`` x2 -- each frame's spatial tokens
  cross-attend to that frame's 32 motion tokens (dim 16) from the motion encoder; no positional
  encoding.
* temporal modules (``*.temporal_modules.N``): ``Temporal_Self`` x2 -- the tokens of one pixel
  attend to each other across the F frames; a sinusoidal position table (buffer
  ``pos_encoder.pe``, ``(1, max_len, C)``, persistent: it is in the checkpoint) is added to the
  normed input, so queries, keys and values all see it.

Everything works on frames folded into the batch, ``(B*F, C, H, W)`` (b-major), and the number of
frames is passed explicitly. Shapes come from ``tensor.shape`` only, so the modules trace.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

SPATIAL_CROSS = "Spatial_Cross"
TEMPORAL_SELF = "Temporal_Self"


class SinusoidalPositionalEncoding(nn.Module):
    """Transformer sine/cosine table ``pe`` of shape ``(1, max_len, dim)``; adds ``pe[:, :L]``.

    Even channels hold ``sin(pos * w_i)``, odd channels ``cos(pos * w_i)`` with
    ``w_i = 10000^(-2i/dim)``. Kept as a persistent buffer because the released checkpoint stores it.
    """

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequencies = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * frequencies)
        pe[0, :, 1::2] = torch.cos(position * frequencies)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(Attention):
    """Self-attention over the frames of each spatial position (``Temporal_Self``).

    Input/output ``(B*F, HW, C)``; internally ``(B*HW, F, C)`` with the position encoding added.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, position_encoding: bool, max_len: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=dim_head, bias=False)
        self.pos_encoder = SinusoidalPositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        folded, tokens, channels = hidden_states.shape
        x = hidden_states.reshape(folded // num_frames, num_frames, tokens, channels)
        x = x.transpose(1, 2).reshape(-1, num_frames, channels)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        x = super().forward(x)
        x = x.reshape(folded // num_frames, tokens, num_frames, channels).transpose(1, 2)
        return x.reshape(folded, tokens, channels)


class MotionTransformerBlock(nn.Module):
    """Pre-norm residual attention blocks (``attention_blocks``/``norms``) then a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, attention_block_types: Sequence[str],
                 cross_attention_dim: int | None, position_encoding: bool, max_len: int) -> None:
        super().__init__()
        blocks = []
        for block_type in attention_block_types:
            if block_type == SPATIAL_CROSS:
                if cross_attention_dim is None:
                    raise ValueError(f"{SPATIAL_CROSS} needs cross_attention_dim")
                blocks.append(Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads,
                                        dim_head=dim_head, bias=False))
            elif block_type == TEMPORAL_SELF:
                blocks.append(TemporalSelfAttention(dim, heads, dim_head, position_encoding, max_len))
            else:
                raise ValueError(f"unsupported attention block type {block_type!r} "
                                 f"(supported: {SPATIAL_CROSS}, {TEMPORAL_SELF})")
        self.attention_blocks = nn.ModuleList(blocks)
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in attention_block_types])
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor, num_frames: int,
                encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            normed = norm(hidden_states)
            if isinstance(attention, TemporalSelfAttention):
                hidden_states = attention(normed, num_frames) + hidden_states
            else:
                hidden_states = attention(normed, encoder_hidden_states=encoder_hidden_states) + hidden_states
        return self.ff(self.ff_norm(hidden_states)) + hidden_states


class MotionTransformer(nn.Module):
    """GroupNorm -> token-wise ``proj_in`` -> blocks -> ``proj_out`` -> residual, on ``(B*F, C, H, W)``."""

    def __init__(self, in_channels: int, heads: int, dim_head: int, num_layers: int,
                 attention_block_types: Sequence[str], cross_attention_dim: int | None,
                 position_encoding: bool, max_len: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList([
            MotionTransformerBlock(inner_dim, heads, dim_head, attention_block_types, cross_attention_dim,
                                   position_encoding, max_len)
            for _ in range(num_layers)
        ])
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(self, hidden_states: torch.Tensor, num_frames: int,
                encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        folded, channels, height, width = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(folded, height * width, channels)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, num_frames, encoder_hidden_states)
        x = self.proj_out(x)
        x = x.reshape(folded, height, width, channels).permute(0, 3, 1, 2)
        return x + residual


class MotionModule(nn.Module):
    """One motion or temporal module (the original ``VanillaTemporalModule``).

    Args mirror the original ``*_module_kwargs``. ``proj_out`` starts at zero (as in the original),
    so a module whose weights are not loaded is an identity.

    ``forward(hidden_states (B*F, C, H, W), num_frames, encoder_hidden_states)`` where
    ``encoder_hidden_states`` is the per-frame motion context ``(B*F, 32, 16)`` for ``Spatial_Cross``
    and ignored (``None``) for purely self-attending modules.
    """

    def __init__(self, in_channels: int, num_attention_heads: int = 8, num_transformer_block: int = 2,
                 attention_block_types: Sequence[str] = (TEMPORAL_SELF, TEMPORAL_SELF),
                 cross_attention_dim: int | None = 768, temporal_position_encoding: bool = False,
                 temporal_position_encoding_max_len: int = 24, temporal_attention_dim_div: int = 1,
                 zero_initialize: bool = True) -> None:
        super().__init__()
        self.uses_context = SPATIAL_CROSS in attention_block_types
        self.temporal_transformer = MotionTransformer(
            in_channels,
            heads=num_attention_heads,
            dim_head=in_channels // num_attention_heads // temporal_attention_dim_div,
            num_layers=num_transformer_block,
            attention_block_types=tuple(attention_block_types),
            cross_attention_dim=cross_attention_dim if self.uses_context else None,
            position_encoding=temporal_position_encoding,
            max_len=temporal_position_encoding_max_len,
        )
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        return self.temporal_transformer(hidden_states, num_frames,
                                         encoder_hidden_states if self.uses_context else None)
