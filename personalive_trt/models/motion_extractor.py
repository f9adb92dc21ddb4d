"""LivePortrait motion extractor ("pose encoder" of PersonaLive): a ConvNeXtV2-tiny regressor.

From a 256x256 face image in [0, 1] it predicts, per image, head-pose bin logits (pitch, yaw,
roll; 66 bins of 3 degrees), a translation, a scale and 21 canonical 3-D keypoints. The
geometry that turns these raw head outputs into posed keypoints lives in
:mod:`personalive_trt.models.keypoints` (pure tensor functions), so this module is only the network.

State-dict layout (213 keys) equals the released ``personalive/motion_extractor.pth``:
``idx_tensor`` (the bin centres 0..65, a persistent buffer) and ``detector.*``. The released
checkpoint also carries ``detector.fc_exp`` (expression deltas); PersonaLive never uses it, so it
is kept as a parameter for loading but never evaluated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_POSE_BINS = 66
CONVNEXTV2_TINY_DEPTHS = (3, 3, 9, 3)
CONVNEXTV2_TINY_DIMS = (96, 192, 384, 768)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in float32 with float32 affine parameters.

    The original ConvNeXtV2 layer norms (stem, downsampling and block norms, not the final pooled
    norm) upcast their input and refuse to convert their weight/bias to half precision when the
    model is cast with ``.half()``/``.to(dtype)``; the result is cast back to the input dtype.
    This keeps half-precision runs of the extractor close to fp32 ones, so we reproduce it.

    Args:
        num_channels (`int`): size of the normalised channel dimension.
        eps (`float`, defaults to 1e-6): variance epsilon.
        channels_first (`bool`, defaults to False): input is (N, C, H, W) instead of (..., C).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, channels_first: bool = False) -> None:
        super().__init__(num_channels, eps=eps)
        self.channels_first = channels_first

    def _apply(self, fn, recurse: bool = True):
        # Keep the fp32 originals of the affine parameters when a cast would make them half.
        originals = {name: p.data for name, p in self._parameters.items() if p is not None}
        super()._apply(fn, recurse)
        for name, param in self._parameters.items():
            if param is None:
                continue
            original = originals[name]
            if param.dtype in _HALF_DTYPES and original.dtype == torch.float32:
                param.data = original.to(device=param.device, dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x.float()
        if self.channels_first:
            y = y.permute(0, 2, 3, 1)
        y = F.layer_norm(y, self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        if self.channels_first:
            y = y.permute(0, 3, 1, 2)
        return y.to(dtype)


class GlobalResponseNorm(nn.Module):
    """ConvNeXtV2 GRN on channels-last input (N, H, W, C).

    Each channel is rescaled by its spatial L2 norm relative to the mean norm over channels, with
    a learnt residual gain (``gamma``) and bias (``beta``), both stored as (1, 1, 1, C).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        relative = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * relative) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> MLP (x4, GELU, GRN) -> residual (no drop-path at inference)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = Fp32LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels-last for the per-pixel MLP
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2Detector(nn.Module):
    """ConvNeXtV2 backbone + the LivePortrait regression heads (keys ``detector.*``)."""

    def __init__(
        self,
        num_kp: int = 21,
        depths: tuple[int, ...] = CONVNEXTV2_TINY_DEPTHS,
        dims: tuple[int, ...] = CONVNEXTV2_TINY_DIMS,
        in_channels: int = 3,
        num_bins: int = NUM_POSE_BINS,
    ) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
            Fp32LayerNorm(dims[0], eps=1e-6, channels_first=True),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    Fp32LayerNorm(dims[i], eps=1e-6, channels_first=True),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtV2Block(dim) for _ in range(depth)]) for depth, dim in zip(depths, dims)
        )
        # The pooled-feature norm is a plain LayerNorm in the original (it does follow .half()).
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

        width = dims[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)  # in the checkpoint, unused by PersonaLive

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        features = self.norm(x.mean(dim=(-2, -1)))  # global average pooling
        return {
            "pitch": self.fc_pitch(features),
            "yaw": self.fc_yaw(features),
            "roll": self.fc_roll(features),
            "t": self.fc_t(features),
            "scale": self.fc_scale(features),
            "kp": self.fc_kp(features),
        }


class MotionExtractor(nn.Module):
    """PersonaLive's pose encoder: LivePortrait ``MotionExtractor(num_kp=21)`` with ConvNeXtV2-tiny.

    ``forward`` returns the raw head outputs (the original ``detector`` call); turn them into
    keypoints with :func:`personalive_trt.models.keypoints.detector_keypoints` and friends.

    Args:
        num_kp (`int`, defaults to 21): number of implicit keypoints.
    """

    def __init__(self, num_kp: int = 21) -> None:
        super().__init__()
        self.detector = ConvNeXtV2Detector(num_kp=num_kp)
        # Persistent because the released checkpoint stores it (bin centres for the soft-argmax).
        self.register_buffer("idx_tensor", torch.arange(NUM_POSE_BINS, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, 256, 256) in [0, 1] -> dict of ``pitch``/``yaw``/``roll`` (N, 66) logits,
        ``t`` (N, 3), ``scale`` (N, 1), ``kp`` (N, 63)."""
        return self.detector(x)
