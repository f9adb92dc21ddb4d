"""PersonaLive's pose guider: keypoint maps -> features added to the denoising UNet's ``conv_in`` output.

A plain per-frame CNN: conv_in 3->16, then for each width step a 3x3 conv and a stride-2 3x3 conv
(16->32->96->256, three halvings = /8, the latent resolution), SiLU after every conv but the last,
and a zero-initialised ``conv_out_modify`` to 320 channels (the UNet's first block width).

The original wraps each conv in an "inflated" Conv3d (a Conv2d applied frame by frame on
(b, c, f, h, w)); every op here is per-frame, so folding frames into the batch once at the start
and unfolding at the end is the same computation. ``state_dict`` keys equal
``personalive/pose_guider.pth`` (16 keys). The module has no train/eval-dependent layers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PoseGuider(nn.Module):
    """(B,3,F,H,W) maps in [0,1] -> (B, conditioning_embedding_channels, F, H/8, W/8)."""

    def __init__(self, conditioning_embedding_channels: int = 320, conditioning_channels: int = 3,
                 block_out_channels: Sequence[int] = (16, 32, 96, 256)) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out_modify = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels,
                                         kernel_size=3, padding=1)
        # Zero-initialised like the release, so an untrained guider leaves the UNet unchanged.
        nn.init.zeros_(self.conv_out_modify.weight)
        nn.init.zeros_(self.conv_out_modify.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        _, channels, frames, height, width = maps.shape
        x = maps.transpose(1, 2).reshape(-1, channels, height, width)  # b c f h w -> (b f) c h w
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = self.conv_out_modify(x)
        return x.reshape(-1, frames, *x.shape[1:]).transpose(1, 2)  # (b f) c h w -> b c f h w
