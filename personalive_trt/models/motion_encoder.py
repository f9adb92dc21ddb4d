"""PersonaLive's implicit face-motion encoder (``MotEncoder`` = FAN_SA + ``final_proj`` + ``pe``).

A 224x224 face crop is turned into 32 motion tokens of width 16, which the denoising UNet's
motion modules cross-attend to. The backbone is a single-stack FAN (face-alignment network:
bottleneck ``ConvBlock``s and a depth-4 hourglass) whose 68-channel landmark heat-map is squeezed
by a stride-2 conv to one 28x28 map, flattened and projected to 512 values. Three patchified
self-attention blocks (``att_1..3``) are inserted into the FAN trunk.

Everything here is fixed-size in the release (identical in the SMALL and FULL configs) and its
``state_dict`` matches ``personalive/motion_encoder.pth`` key for key (403 keys, BatchNorm
statistics and the ``pe`` buffer included). One width is a parameter, for the tiny synthetic weights
only: the attention blocks' token width (``attention_width``, released 1024 = 8 heads x 128), whose
linear layers are two thirds of the encoder's CPU time; the keys stay the same, their shapes follow
it. The three ``att_*.pos_embed.pos_embed`` sin-cos tables are recomputed at init and are
non-persistent, exactly as in the release.

Inference only: the original is always used in ``.eval()`` mode, so BatchNorm here *always*
normalises with the running statistics and the hourglass' Dropout(0.5) -- an identity in eval --
is left out. The module therefore gives the released behaviour whatever ``train()``/``eval()``
state it is in, and traces to ONNX as a pure feed-forward graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed
from torch import nn

FACE_SIZE = 224
"""Side of the square face crops the encoder expects (the fc layer is tied to it: 224 -> 28x28)."""
MOTION_TOKENS = 32
MOTION_TOKEN_DIM = 16
MOTION_DIM = MOTION_TOKENS * MOTION_TOKEN_DIM  # 512
ATTENTION_HEADS = 8
RELEASED_ATTENTION_WIDTH = ATTENTION_HEADS * 128
#: The attention blocks' conv that patchifies the feature map: its output channels are the token width.
ATTENTION_WIDTH_KEY = "model.att_1.pos_embed.proj.weight"


def sincos_1d_table(dim: int, num_positions: int) -> torch.Tensor:
    """MAE-style 1-D sin-cos table (positions 0..num_positions-1), computed in float64.

    Layout ``[sin(p * w_0..w_{d/2-1}), cos(...)]`` with ``w_i = 10000^(-2i/dim)``. Float64 then a
    float32 cast is how the release computed its ``pe`` buffer (numpy in diffusers 0.27).
    Returns (num_positions, dim) float32.
    """
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = torch.outer(torch.arange(num_positions, dtype=torch.float64), omega)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class InferenceBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters/buffers/keys) that always uses the running statistics.

    The release only ever runs the encoder in eval mode; hard-wiring that here means a stray
    ``.train()`` cannot silently switch to batch statistics, and the traced graph is the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """FAN bottleneck: three pre-activated 3x3 convs (out/2, out/4, out/4 channels) whose outputs
    are concatenated to ``out`` channels and added to the (projected) input.

    The channel-changing shortcut is BN(eps=1e-4) -> ReLU -> 1x1 conv; note the eps differs from
    the 1e-5 of the other BatchNorms (a quirk of the FAN code, kept for exactness).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.bn1 = InferenceBatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, half)
        self.bn2 = InferenceBatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = InferenceBatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                InferenceBatchNorm2d(in_channels, eps=1e-4),
                nn.ReLU(),
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1 = self.conv1(F.relu(self.bn1(x)))
        branch2 = self.conv2(F.relu(self.bn2(branch1)))
        branch3 = self.conv3(F.relu(self.bn3(branch2)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat((branch1, branch2, branch3), dim=1) + shortcut


class HourGlass(nn.Module):
    """Recursive 256-channel hourglass of ``depth`` levels (FAN naming ``b1_L, b2_L, b2_plus_1, b3_L``).

    Each level: skip branch ``b1`` at full resolution; lower branch max-pool 2 -> ``b2`` -> next
    level (or ``b2_plus_1`` at the bottom) -> ``b3`` -> bilinear resize (align_corners=False) back
    to the skip's size -- at 56x56 input the bottom is 7 -> 3 -> 7, a non-integer scale, so the
    resize must be by size, not by factor.
    """

    def __init__(self, depth: int = 4, channels: int = 256) -> None:
        super().__init__()
        self.depth = depth
        self._add_level(depth, channels)

    def _add_level(self, level: int, channels: int) -> None:
        # Registration order (b1, b2, deeper levels, b2_plus, b3) reproduces the checkpoint's key order.
        self.add_module(f"b1_{level}", ConvBlock(channels, channels))
        self.add_module(f"b2_{level}", ConvBlock(channels, channels))
        if level > 1:
            self._add_level(level - 1, channels)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(channels, channels))
        self.add_module(f"b3_{level}", ConvBlock(channels, channels))

    def _run_level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        skip = getattr(self, f"b1_{level}")(x)
        low = getattr(self, f"b2_{level}")(F.max_pool2d(x, 2, stride=2))
        low = self._run_level(level - 1, low) if level > 1 else getattr(self, f"b2_plus_{level}")(low)
        low = getattr(self, f"b3_{level}")(low)
        return skip + F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run_level(self.depth, x)


class SpatialSelfAttentionLayer(nn.Module):
    """Pre-LayerNorm self-attention + pre-LayerNorm GEGLU feed-forward, both residual.

    Key names follow the original ``TemporalTransformerBlock`` with one ``Spatial_Self`` block
    (``attention_blocks.0``, ``norms.0``, ``ff``, ``ff_norm``). "Spatial" mode with one frame is
    plain self-attention over the tokens of an image, so diffusers' ``Attention`` (SDPA) is used.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim)])
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.attention_blocks[0](self.norms[0](tokens)) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class PatchSelfAttention(nn.Module):
    """Residual patchified self-attention over a feature map (the original ``att_1..3``).

    GroupNorm(32, eps 1e-6) -> ``PatchEmbed`` (p x p stride conv to 1024-d tokens at the released width + fixed
    2-D sin-cos table of the 28x28 grid, a non-persistent buffer) -> one attention layer -> un-patchify: each
    1024-d token is read as p*p sub-vectors of 1024/p^2 values, ``proj_out`` maps every sub-vector
    to C channels, and the sub-vectors are put back at their pixel inside the patch. Output is the
    input plus that (``proj_out`` is zero-initialised, so a fresh block is the identity).
    The original wraps this in a (b, c, f, h, w) video API but FAN_SA always calls it with f = 1.
    """

    def __init__(self, channels: int, sample_size: int, patch_size: int, heads: int = ATTENTION_HEADS,
                 head_dim: int = RELEASED_ATTENTION_WIDTH // ATTENTION_HEADS,
                 norm_groups: int = 32) -> None:
        super().__init__()
        inner_dim = heads * head_dim
        self.patch_size = patch_size
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.transformer_blocks = nn.ModuleList([SpatialSelfAttentionLayer(inner_dim, heads, head_dim)])
        self.proj_out = nn.Linear(inner_dim // patch_size**2, channels)
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=channels, embed_dim=inner_dim, interpolation_scale=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        tokens = self.pos_embed(self.norm(x))  # (n, (h/p)*(w/p), 1024), row-major patches
        for layer in self.transformer_blocks:
            tokens = layer(tokens)
        sub = self.proj_out(tokens.reshape(n, h // p, w // p, p, p, -1))  # (n, gh, gw, p, q, c)
        return x + sub.permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)


class FanSA(nn.Module):
    """FAN with self-attention (``FAN_SA``): (N,3,224,224) face -> (N,512) motion code.

    Resolutions: conv1/2 -> 112 (``att_1``, patch 4) -> max-pool -> 56 (``att_2``, patch 2) ->
    hourglass -> ``att_3`` (patch 2) -> 68 heat-maps -> stride-2 conv to one 28x28 map -> fc 784->512.
    """

    def __init__(self, attention_width: int = RELEASED_ATTENTION_WIDTH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = InferenceBatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.m0 = HourGlass(depth=4, channels=256)
        self.top_m_0 = ConvBlock(256, 256)
        self.conv_last0 = nn.Conv2d(256, 256, kernel_size=1)
        self.l0 = nn.Conv2d(256, 68, kernel_size=1)
        self.bn_end0 = InferenceBatchNorm2d(256)
        self.conv6 = nn.Conv2d(68, 1, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(28 * 28, MOTION_DIM)
        self.bn5 = InferenceBatchNorm2d(68)
        head_dim = attention_width // ATTENTION_HEADS
        self.att_1 = PatchSelfAttention(128, sample_size=112, patch_size=4, heads=ATTENTION_HEADS, head_dim=head_dim)
        self.att_2 = PatchSelfAttention(256, sample_size=56, patch_size=2, heads=ATTENTION_HEADS, head_dim=head_dim)
        self.att_3 = PatchSelfAttention(256, sample_size=56, patch_size=2, heads=ATTENTION_HEADS, head_dim=head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))                 # (N, 64, 112, 112)
        x = self.att_1(self.conv2(x))                       # (N, 128, 112, 112)
        x = F.max_pool2d(x, 2)                              # 56x56
        x = self.att_2(self.conv4(self.conv3(x)))           # (N, 256, 56, 56)
        x = self.top_m_0(self.m0(x))
        x = self.att_3(self.bn_end0(self.conv_last0(x)))
        heatmaps = F.relu(self.bn5(self.l0(F.relu(x))))     # (N, 68, 56, 56)
        squeezed = self.conv6(heatmaps).flatten(1)          # (N, 784)
        return self.fc(F.relu(squeezed))


class MotionEncoder(nn.Module):
    """Face crops (B,3,F,224,224) in [-1,1] -> motion states (B,F,32,16).

    FAN_SA code (512) -> ``final_proj`` -> 32 tokens x 16 + ``pe`` (a persistent buffer, the 1-D
    sin-cos table of the 32 token indices; loaded from the checkpoint, recomputed here only so a
    fresh module matches it). Frames are processed independently ((b f) batch, b-major).
    """

    def __init__(self, attention_width: int = RELEASED_ATTENTION_WIDTH) -> None:
        super().__init__()
        if attention_width % (ATTENTION_HEADS * 16):  # 8 heads; att_1 reads each token as 4x4 sub-vectors
            raise ValueError(f"attention_width {attention_width}: expected a multiple of {ATTENTION_HEADS * 16}")
        self.model = FanSA(attention_width)
        self.register_buffer("pe", sincos_1d_table(MOTION_TOKEN_DIM, MOTION_TOKENS).unsqueeze(0))
        self.final_proj = nn.Linear(MOTION_DIM, MOTION_DIM)
        self.eval()  # documentation of intent; BatchNorm/Dropout behaviour does not depend on it here

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        _, channels, frames, height, width = faces.shape
        faces = faces.to(self.final_proj.weight.dtype)
        per_frame = faces.transpose(1, 2).reshape(-1, channels, height, width)  # b c f h w -> (b f) c h w
        code = self.final_proj(self.model(per_frame))
        states = code.reshape(-1, MOTION_TOKENS, MOTION_TOKEN_DIM) + self.pe
        return states.reshape(-1, frames, MOTION_TOKENS, MOTION_TOKEN_DIM)
