"""Deterministic synthetic weights, for running and benchmarking without the released files.

The output of synthetic weights is NOT a real animation: the networks are random. They exist
so the whole product (CLI, export, engines, runtime, benchmarks) runs anywhere, and so tests
have exactly reproducible models.

Every tensor has its own random stream, seeded by ``"{seed}/{namespace}/{key}"`` only (the
namespace is the released file the key belongs to), so a value never depends on which other
keys exist. The value rules (uniform, fan-in scaled, row-centred matrices, tamed LivePortrait
heads so keypoints stay on the canvas, canonical values for computed buffers) follow the
project's reference weight design, so ``synthetic`` with seed 0 and the small config gives the
same tensors as the reference data's synthesized weights.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable

import numpy as np
import torch

# ---- model configurations --------------------------------------------------------------------
# FULL: the released configuration (SD1.x UNet of sd-image-variations, CLIP ViT-L/14 vision tower
# with 768-d projection, sd-vae-ft-mse). SMALL: same topology and 16 reference banks, narrow
# widths, for fast CPU runs. The first UNet level stays 320 wide: the pose guider adds 320
# channels after conv_in.
SD_UNET_FULL = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
CLIP_FULL = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "image_size": 224,
    "num_channels": 3,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
}
VAE_FULL = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# TAESD (madebyollin/taesd): diffusers' AutoencoderTiny defaults, which are that repository's config.json.
TAESD_FULL = {
    "act_fn": "relu",
    "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64],
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3],
    "out_channels": 3,
    "scaling_factor": 1.0,
    "upsampling_scaling_factor": 2,
}
_CLIP_SMALL = dict(CLIP_FULL, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
_VAE_SMALL = dict(VAE_FULL, block_out_channels=[32, 32, 64, 64], layers_per_block=1)
# Narrowed like _VAE_SMALL (16 wide: 1/16 of the released decoder's FLOPs), so that with the small and tiny
# weights the tiny decoder stays cheaper than the narrowed full one, as it is at the released sizes.
_TAESD_SMALL = dict(TAESD_FULL, decoder_block_out_channels=[16] * 4, encoder_block_out_channels=[16] * 4)
CONFIGS = {
    # the released sizes (benchmarks)
    "full": {"sd_unet": SD_UNET_FULL, "image_encoder": CLIP_FULL, "vae": VAE_FULL, "taesd": TAESD_FULL},
    # the reference data's SMALL config: released layout for the fixed-size networks, exactly the
    # golden weights with seed 0. Its first UNet level keeps 320 channels (the released pose guider's
    # width), so a step still costs ~80 s on 2 CPU cores.
    "small": {"sd_unet": dict(SD_UNET_FULL, block_out_channels=[320, 64, 128, 128]),
              "image_encoder": _CLIP_SMALL, "vae": _VAE_SMALL, "taesd": _TAESD_SMALL},
    # the default of `--weights synthetic`: fast on CPU (a few seconds per step). The pose guider is
    # built as wide as the first UNet level (32), so its tensors are not the released shape.
    # One attention head (`attention_head_dim` is the head count in SD1 configs): CPU attention kernels
    # run ~8x faster on 32-wide heads than on 8 heads of width 4.
    # The motion encoder's attention blocks are 128 wide, not 1024 (8.3 M parameters, not 61.6 M): at
    # the released width it was ~6 of the ~7 CPU-seconds of a tiny step at 128², in every tiny stream.
    "tiny": {"sd_unet": dict(SD_UNET_FULL, block_out_channels=[32, 32, 64, 64], attention_head_dim=1),
             "image_encoder": _CLIP_SMALL, "vae": _VAE_SMALL, "taesd": _TAESD_SMALL,
             "motion_encoder": {"attention_width": 128}},
}
DEFAULT_SYNTHETIC = "tiny"

# ---- value rules ------------------------------------------------------------------------------
# (pattern, rule): ("fanin", k) -> std k/sqrt(fan_in), rows centred; ("const", mean, std).
_RULES = [
    (re.compile(r"detector\.fc_kp\.weight$"), ("fanin", 0.3)),
    (re.compile(r"detector\.fc_t\.weight$"), ("fanin", 0.1)),
    (re.compile(r"detector\.fc_scale\.weight$"), ("fanin", 0.05)),
    (re.compile(r"detector\.fc_scale\.bias$"), ("const", 1.0, 0.02)),
    (re.compile(r"grn\.(gamma|beta)$"), ("const", 0.0, 0.1)),
    (re.compile(r"running_mean$"), ("const", 0.0, 0.1)),
    (re.compile(r"running_var$"), ("const", 1.0, 0.5 / math.sqrt(3.0))),
    # TAESD's decoder maps to [0, 1] through plain convolutions: biases around 0.5 (first and last
    # convolution; the others have none) put random-weight frames mid-grey instead of half clamped at 0.
    (re.compile(r"^decoder\.layers\.\d+\.bias$"), ("const", 0.5, 0.1)),
]


def _uniform_pm1(seed: int, namespace: str, key: str, n: int) -> np.ndarray:
    """n float64 values uniform in (-1, 1) from the key's own PCG64 stream (24-bit resolution)."""
    digest = hashlib.sha256(f"{seed}/{namespace}/{key}".encode()).digest()
    bits = np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))
    top24 = (bits.random_raw(n) >> np.uint64(40)).astype(np.float64)
    return (top24 + 0.5) / float(1 << 23) - 1.0


def _sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) interleaved sin/cos table of the temporal position encoders (float32 math)."""
    pos = torch.arange(length).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(pos * freq)
    table[0, :, 1::2] = torch.cos(pos * freq)
    return table


def _sincos_halves(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) [sin | cos] table of the motion encoder's token positions (float64 math)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.arange(length, dtype=np.float64), omega)
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)).float().unsqueeze(0)


def _fixed_value(namespace: str, key: str, shape: list[int]) -> torch.Tensor | None:
    """Canonical values of buffers the modules compute themselves (None for learned tensors)."""
    if key.endswith("pos_encoder.pe"):
        return _sinusoid_table(shape[1], shape[2])
    if namespace == "motion_encoder" and key == "pe":
        return _sincos_halves(shape[1], shape[2])
    if key.endswith("idx_tensor"):
        return torch.arange(shape[0], dtype=torch.float32)
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    return None


def _value_rule(key: str, shape: list[int]) -> tuple[float, float, bool]:
    """(mean, std, centre rows) of a learned tensor: the value rules above."""
    fan_in = math.prod(shape[1:]) if len(shape) >= 2 else 1
    rule = next((r for pattern, r in _RULES if pattern.search(key)), None)
    if rule is not None and rule[0] == "fanin":
        return 0.0, rule[1] / math.sqrt(fan_in), True
    if rule is not None:
        return rule[1], rule[2], False
    if len(shape) >= 2:
        return 0.0, 1.0 / math.sqrt(fan_in), True
    if len(shape) == 1 and key.endswith("weight"):
        return 1.0, 0.1, False
    if len(shape) == 1 and key.endswith("bias"):
        return 0.0, 0.02, False
    return 0.0, 0.1, False


def synth_tensor(seed: int, namespace: str, key: str, shape: Iterable[int]) -> torch.Tensor:
    """The synthetic value of one checkpoint tensor (float32, or int64 for integer buffers)."""
    shape = [int(s) for s in shape]
    fixed = _fixed_value(namespace, key, shape)
    if fixed is not None:
        return fixed.reshape(shape)
    mean, std, centre = _value_rule(key, shape)
    n = math.prod(shape)
    values = _uniform_pm1(seed, namespace, key, n)
    if centre and len(shape) >= 2 and n // shape[0] > 1:
        rows = values.reshape(shape[0], -1)
        values = (rows - rows.mean(axis=1, keepdims=True)).reshape(-1)
    return torch.from_numpy((mean + values * (math.sqrt(3.0) * std)).astype(np.float32)).reshape(shape)


def synth_state_dict(module: torch.nn.Module, seed: int, namespace_of) -> dict[str, torch.Tensor]:
    """Synthetic values for every entry of ``module.state_dict()``.

    ``namespace_of(key)`` names the released file a key lives in (its random-stream namespace).
    """
    out = {}
    for key, ref in module.state_dict().items():
        value = synth_tensor(seed, namespace_of(key), key, ref.shape)
        out[key] = value if value.dtype == torch.int64 else value.to(ref.dtype)
    return out


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256[:16] of a tensor's raw bytes (the reference weights manifest's digest)."""
    return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


# ---- filled in place, on the module's own device ------------------------------------------------
# ``synthetic:SIZE:device`` (e.g. ``synthetic:full:device``): the released sizes are 3.0 B numbers; through
# numpy on the host (above) that is minutes and three full-size copies. Here every module is built on the
# meta device (no memory, no init), cast there, given uninitialised storage on the target device with
# ``to_empty`` and filled in place, chunk by chunk, on that device: the model exists once, plus one chunk of
# temporaries (FILL_CHUNK elements, ~0.5 GB of int64 at 2**24).
#
# Values: element ``i`` of a tensor is an integer hash of ``i`` and a 32-bit per-tensor seed (sha256 of
# ``"device/{seed}/{namespace}/{key}"``), mapped exactly to 23-bit odd multiples of 2**-23 in (-1, 1), then
# scaled by ``sqrt(3) * std`` and shifted by ``mean`` of the same value rules as above (fan-in scaled
# matrices, the tamed LivePortrait heads, ...): the same magnitudes as :func:`synth_tensor`, so fp16 stays
# finite where those weights do. Differences, on purpose: other numbers (a new fingerprint,
# ``synthetic:SIZE:device``), and matrix rows are NOT centred: a row mean is a reduction whose float order
# differs between devices, while the hash, the int->float conversion and the two scalar operations are exact
# or correctly rounded, so a tensor gets the same bits on every device. Computed buffers (position tables,
# ``idx_tensor``, BatchNorm counters) get their canonical values; non-persistent buffers, which ``to_empty``
# leaves uninitialised and no state_dict carries, are recomputed (:data:`_RECOMPUTED`), and an unknown one
# is an error rather than garbage.
FILL_CHUNK = 1 << 24
_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**59, so int64 never overflows


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of int64 values in [0, 2**32), in place."""
    x ^= x >> 16
    x.mul_(_HASH_MUL).bitwise_and_(_MASK32)
    x ^= x >> 16
    x.mul_(_HASH_MUL).bitwise_and_(_MASK32)
    x ^= x >> 16
    return x


def _tensor_seed(seed: int, namespace: str, key: str) -> int:
    digest = hashlib.sha256(f"device/{seed}/{namespace}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def hash_fill_(tensor: torch.Tensor, seed32: int, mean: float, std: float, chunk: int = FILL_CHUNK) -> torch.Tensor:
    """Fill ``tensor`` in place with ``mean + sqrt(3) std u``, ``u`` uniform in (-1, 1) from the hash of each
    element's flat index and ``seed32``; computed on the tensor's device, ``chunk`` elements at a time (the
    result does not depend on ``chunk``)."""
    flat = tensor.view(-1)
    scale = math.sqrt(3.0) * std / float(1 << 23)
    for start in range(0, flat.numel(), chunk):
        stop = min(start + chunk, flat.numel())
        x = torch.arange(start, stop, dtype=torch.int64, device=tensor.device)
        x ^= seed32
        _mix32(x)
        # top 23 bits -> odd integer in [-(2**23 - 1), 2**23 - 1]: exact in float32
        x >>= 9
        x.mul_(2).sub_((1 << 23) - 1)
        values = x.to(torch.float32).mul_(scale).add_(mean)
        flat[start:stop].copy_(values)
    return tensor


def _patch_embed_table(owner: torch.nn.Module, buffer: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    grid = owner.pos_embed_max_size or int(math.isqrt(owner.height * owner.width))
    table = get_2d_sincos_pos_embed(buffer.shape[-1], grid, base_size=owner.base_size,
                                    interpolation_scale=owner.interpolation_scale, output_type="pt")
    return table.float().unsqueeze(0)


#: Non-persistent buffers (absent from every checkpoint): suffix -> (owning module, buffer) -> value.
_RECOMPUTED = {
    "position_ids": lambda owner, buffer: torch.arange(buffer.shape[-1], dtype=torch.int64).reshape(buffer.shape),
    "pos_embed.pos_embed": _patch_embed_table,  # diffusers PatchEmbed (the motion encoder's att_*)
}


def fill_module_(module: torch.nn.Module, seed: int, namespace_of, chunk: int = FILL_CHUNK) -> list[str]:
    """Give every parameter and buffer of ``module`` its synthetic value in place, on its own device.

    ``module`` has storage (e.g. after ``to_empty``) in its final dtype; values are computed in float32 and
    rounded once into it. Returns the state_dict keys filled (every one: the caller checks them against the
    layout). Raises ``ValueError`` naming a non-persistent buffer it does not know how to recompute."""
    state = module.state_dict(keep_vars=True)  # the module's own tensors, not copies
    with torch.no_grad():
        for key, tensor in state.items():
            shape = list(tensor.shape)
            fixed = _fixed_value(namespace_of(key), key, shape)
            if fixed is not None:
                tensor.copy_(fixed.reshape(shape))
                continue
            mean, std, _ = _value_rule(key, shape)
            if tensor.dtype == torch.float32:
                hash_fill_(tensor, _tensor_seed(seed, namespace_of(key), key), mean, std, chunk)
            else:  # fp16/bf16 storage: fill a float32 copy of this one tensor, round it once
                tensor.copy_(hash_fill_(torch.empty(shape, device=tensor.device),
                                        _tensor_seed(seed, namespace_of(key), key), mean, std, chunk))
        modules = dict(module.named_modules())
        for name, buffer in module.named_buffers():
            if name in state:
                continue
            rule = next((r for suffix, r in _RECOMPUTED.items() if name == suffix or name.endswith("." + suffix)),
                        None)
            if rule is None:
                raise ValueError(f"fill_module_: no rule recomputes the non-persistent buffer {name!r}")
            owner = modules[name.rpartition(".")[0]]
            buffer.copy_(rule(owner, buffer).reshape(buffer.shape))
    return list(state)
