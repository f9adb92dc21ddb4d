"""The exported networks: one :class:`NetworkSpec` per network, every size read from :class:`StreamShapes`.

=====================  ==================  =====================================================================
network                component           interface (W = window, P = pile, R = resolution, h = latent)
=====================  ==================  =====================================================================
``reference_unet``     reference_unet      latent (1,4,h,h), timestep (1,), clip_embeds (1,1,D) -> 16 banks
``denoising_unet_wW``  denoising_unet      sample (1,4,P,h,h), timesteps (P,) int64, clip_embeds, motion
                                           (1,P,32,16), pose (1,C0,P,h,h), 16 x bank key + value
                                           (1, L*tokens, C), L in 1..1+max_keyframes -> noise_pred (1,4,P,h,h)
``bank_projector``     denoising_unet      16 banks (1, tokens, C) of one reference/keyframe -> their 32 key and
                                           value projections (the UNet's inputs), once per reference/keyframe
``motion_encoder``     motion_encoder      faces (1,3,F,224,224), F in [W, W+1] -> motion (1,F,32,16)
``pose_guider``        pose_guider         maps (1,3,F,R,R), F in [W, P] -> pose (1,C0,F,h,h)
``pose_encoder``       motion_extractor    images (N,3,256,256), N in [1, W] -> pitch, yaw, roll, t, scale, kp
``vae_decoder``        vae                 latents (W,4,h,h) (x0.18215) -> frames (W,3,R,R) in [0,1]
``vae_decoder_tiny``   taesd               the same interface, decoded by TAESD (``StreamConfig.vae == "tiny"``)
``vae_encoder``        vae                 image (1,3,R,R) in [-1,1] -> latent (1,4,h,h) (posterior mean x0.18215)
``image_encoder``      image_encoder       pixels (1,3,224,224) -> clip_embeds (1,1,D)
=====================  ==================  =====================================================================

The first call of a stream is the largest: it encodes the reference face with the window (F = W + 1)
and draws pose maps for the whole pile (F = P); steady-state calls use F = W, the optimisation point.
Each spec's ``wrap(module)`` is a small traceable ``nn.Module`` with positional inputs and a tuple of
outputs in spec order; scaling and post-processing the pipeline does around a network (latent
scale, ``/2 + 0.5`` and clamp of decoded frames) are fused into the wrapper so they run on device.

``keep_fp32`` of every spec lists the parts that stay float32 in the fp16 export, with the reason:
the parts the modules compute in float32 by design, plus what measurement flagged. Measured with
:func:`personalive_trt.export.fp16.activation_survey` (max |x| of every fp32 intermediate vs 65504)
on the SMALL golden-config synthetic weights with the bundled portrait as input, window 2, 256x256:
every activation of every network stays >= 1800x below the float16 limit except the GRN sums of
squares of the pose encoder (3.2e3, 20x headroom at stage 0, growing with the square of the
activations), and every fp16 export passes its fp16-storage emulation. The released weights were not
available here: re-run the survey on them (a few minutes per network) before trusting new islands.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from personalive_trt.choices import Decoder
from personalive_trt.config import LATENT_SCALE
from personalive_trt.shapes import StreamShapes, kv_names, safe_name

from .interface import DEFAULT_TOLERANCES, NetworkSpec, TensorSpec, Tolerance

# CLIP image normalisation (CLIPImageProcessor defaults), for realistic encoder samples.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
POSE_ENCODER_OUTPUTS = ("pitch", "yaw", "roll", "t", "scale", "kp")
NUM_POSE_BINS = 66
KEYPOINT_DIMS = 63

# ---- keep_fp32 decisions (reasons end up in the manifest) -----------------------------------------------
_TIMESTEP_FEATURES = ("time_proj", "sinusoidal timestep features: t reaches 999 where float16 spacing is 0.5, "
                      "so sin/cos(t * w) would be wrong; diffusers computes them in float32 in a half model too")
_FP32_LAYER_NORMS = ("class:Fp32LayerNorm", "ConvNeXtV2 layer norms: the module itself normalises in float32 with "
                     "float32 affine parameters (as the original LivePortrait does under .half())")
_GRN = ("class:GlobalResponseNorm", "GRN's L2 norm sums x^2 over all spatial positions (64x64 = 4096 at stage 0): "
        "the sum leaves the float16 range (65504) once the RMS activation exceeds ~4, and ONNX ReduceL2 carries no "
        "accumulator type")

FP16_UNET_TOLERANCE = Tolerance("rel", 5e-2)
FP16_FRAMES_TOLERANCE = Tolerance("psnr", 30.0)


# ---- wrappers: positional inputs -> tuple of outputs -----------------------------------------------------
class ReferenceBanks(nn.Module):
    """Reference UNet write pass: only the 16 banks; the graph ends at the last bank written.

    The release's reference UNet keeps computing after its last bank (the rest of that transformer
    block); nothing consumes it, so tracing drops it (dead-code elimination) and the exported graph
    ends where the last bank is produced.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, clip_embeds: torch.Tensor):
        return tuple(self.unet(latent, timestep, clip_embeds))


class BankProjector(nn.Module):
    """The denoising UNet's key/value projections of 16 banks: (key, value) per bank, flattened.

    Run once per reference or keyframe; the denoising UNet then takes the projections instead of
    reprojecting the same bank for every frame of every call."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, *banks):
        return tuple(t for pair in self.unet.project_banks(list(banks)) for t in pair)


class DenoisingStep(nn.Module):
    """Denoising UNet on the whole pile; each block's bank key and value are separate positional inputs."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timesteps, clip_embeds, motion, pose, *kv):
        pairs = [(kv[i], kv[i + 1]) for i in range(0, len(kv), 2)]
        return (self.unet(sample, timesteps, clip_embeds, motion, pose, reference_kv=pairs),)


class SingleOutput(nn.Module):
    """A module returning one tensor, as a one-element tuple."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor):
        return (self.module(x),)


class PoseEncoder(nn.Module):
    """LivePortrait motion extractor: its output dict as a tuple in ``POSE_ENCODER_OUTPUTS`` order."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor):
        out = self.extractor(images)
        return tuple(out[name] for name in POSE_ENCODER_OUTPUTS)


class VaeDecoder(nn.Module):
    """Pile latents (x LATENT_SCALE) -> frames in [0, 1]: scale and post-processing fused."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor):
        decoded = self.vae.decode(latents / LATENT_SCALE).sample
        return ((decoded / 2 + 0.5).clamp(0, 1),)


class TinyVaeDecoder(nn.Module):
    """Pile latents (x LATENT_SCALE) -> frames in [0, 1] by TAESD: post-processing fused.

    TAESD was distilled to decode SD's scaled latents as they are (its scaling factor is 1, checked when
    its config is read), so unlike :class:`VaeDecoder` nothing divides by LATENT_SCALE. diffusers'
    ``decode`` returns [-1, 1] (it maps the decoder's [0, 1] output there); ``/2 + 0.5`` and the clamp
    undo that exactly as for the full decoder, so both decoders give the same output range.
    """

    def __init__(self, taesd: nn.Module) -> None:
        super().__init__()
        self.taesd = taesd

    def forward(self, latents: torch.Tensor):
        decoded = self.taesd.decode(latents).sample
        return ((decoded / 2 + 0.5).clamp(0, 1),)


class VaeEncoder(nn.Module):
    """Image in [-1, 1] -> posterior mean x LATENT_SCALE (the pipeline's reference latent)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor):
        return (self.vae.encode(image).latent_dist.mean * LATENT_SCALE,)


class ImageEncoder(nn.Module):
    """CLIP vision tower + projection -> (B, 1, D) image embeds (the UNets' cross-attention context)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor):
        return (self.clip(pixel_values=pixels).image_embeds.unsqueeze(1),)


# ---- specs -------------------------------------------------------------------------------------------------
def _ranged(name: str, shape_of, lo: int, opt: int, hi: int, **extra) -> TensorSpec:
    return TensorSpec(name, tuple(shape_of(lo)), tuple(shape_of(opt)), tuple(shape_of(hi)), **extra)


def kv_inputs(shapes: StreamShapes) -> tuple[TensorSpec, ...]:
    """The 32 bank key/value inputs of the denoising UNet (key then value per bank):
    L (reference + keyframes) in 1..max_bank_length, opt 1."""
    return tuple(
        _ranged(name, lambda length, i=i: shapes.bank(i, length), 1, 1, shapes.max_bank_length)
        for i, bank in enumerate(shapes.banks) for name in kv_names(bank.name))


def denoising_unet_name(window: int) -> str:
    return f"denoising_unet_w{window}"


def vae_decoder_name(vae: Decoder | str) -> str:
    """The decoder network of ``StreamConfig.vae``: its own export, engine and cache key per decoder."""
    vae = Decoder(vae)
    return "vae_decoder" if vae is Decoder.FULL else f"vae_decoder_{vae}"


def vae_decoder_spec(shapes: StreamShapes) -> NetworkSpec:
    """The per-step decoder of ``shapes.config.vae``: the full SD VAE decoder or TAESD, one interface."""
    frames = shapes.batch * shapes.window
    interface = dict(inputs=(TensorSpec.fixed("latents", shapes.latent_frames(frames)),),
                     outputs=(TensorSpec.fixed("frames", shapes.frames(frames)),),
                     tolerances={"fp32": DEFAULT_TOLERANCES["fp32"], "fp16": FP16_FRAMES_TOLERANCE})
    if shapes.config.vae is Decoder.TINY:
        return NetworkSpec(vae_decoder_name(Decoder.TINY), "taesd", wrap=TinyVaeDecoder, **interface,
                           description="clean pile latents (x0.18215, decoded as they are) -> frames in [0,1] "
                                       "by TAESD (/2+0.5 and clamp fused)")
    return NetworkSpec(vae_decoder_name(Decoder.FULL), "vae", wrap=VaeDecoder, **interface,
                       description="clean pile latents (x0.18215) -> frames in [0,1] (scale, /2+0.5 and clamp fused)")


def network_specs(shapes: StreamShapes) -> dict[str, NetworkSpec]:
    """Every exported network of one streaming configuration, keyed by name (export order)."""
    specs = [
        _reference_unet_spec(shapes),
        _denoising_unet_spec(shapes),
        _bank_projector_spec(shapes),
        _motion_encoder_spec(shapes),
        _pose_guider_spec(shapes),
        _pose_encoder_spec(shapes),
        vae_decoder_spec(shapes),
        _vae_encoder_spec(shapes),
        _image_encoder_spec(shapes),
    ]
    return {spec.name: spec for spec in specs}


def _reference_unet_spec(shapes: StreamShapes) -> NetworkSpec:
    """The reference UNet's write pass: the 16 banks a reference (or keyframe) gives the denoising UNet."""
    B = shapes.batch
    banks_out = tuple(TensorSpec.fixed(safe_name(bank.name), shapes.bank(i)) for i, bank in enumerate(shapes.banks))
    clip = TensorSpec.fixed("clip_embeds", shapes.clip_embeds())
    return NetworkSpec(
        "reference_unet", "reference_unet",
        inputs=(TensorSpec.fixed("latent", shapes.latent_frames(B)),
                TensorSpec.fixed("timestep", (B,), sample="zeros"),
                clip),
        outputs=banks_out,
        wrap=ReferenceBanks,
        keep_fp32=(_TIMESTEP_FEATURES,),
        description="reference UNet write pass at t=0 -> 16 reference-attention banks",
    )


def _denoising_unet_spec(shapes: StreamShapes) -> NetworkSpec:
    """The denoising UNet on the whole pile, with the bank keys/values of the reference and keyframes."""
    W, P, B = shapes.window, shapes.pile, shapes.batch
    clip = TensorSpec.fixed("clip_embeds", shapes.clip_embeds())
    return NetworkSpec(
        denoising_unet_name(W), "denoising_unet",
        inputs=(TensorSpec.fixed("sample", shapes.latent_pile()),
                TensorSpec.fixed("timesteps", (B * P,), dtype=torch.int64, sample="values",
                                 values=tuple(shapes.config.pile_timesteps) * B),
                clip,
                TensorSpec.fixed("motion", shapes.motion_states(P)),
                TensorSpec.fixed("pose", shapes.pose_features(P)),
                *kv_inputs(shapes)),
        outputs=(TensorSpec.fixed("noise_pred", shapes.latent_pile()),),
        wrap=DenoisingStep,
        keep_fp32=(_TIMESTEP_FEATURES,),
        tolerances={"fp32": DEFAULT_TOLERANCES["fp32"], "fp16": FP16_UNET_TOLERANCE},
        description=f"denoising UNet on the {P}-frame pile (window {W}), bank keys/values with up to "
                    f"{shapes.max_bank_length - 1} history keyframes",
    )


def _bank_projector_spec(shapes: StreamShapes) -> NetworkSpec:
    """The denoising UNet's key/value projections of one reference's banks (once per reference)."""
    return NetworkSpec(
        "bank_projector", "denoising_unet",
        inputs=tuple(TensorSpec.fixed(safe_name(bank.name), shapes.bank(i)) for i, bank in enumerate(shapes.banks)),
        outputs=tuple(TensorSpec.fixed(name, shapes.bank(i))
                      for i, bank in enumerate(shapes.banks) for name in kv_names(bank.name)),
        wrap=BankProjector,
        description="one reference/keyframe's 16 banks -> the denoising UNet's 32 key/value projections",
    )


def _motion_encoder_spec(shapes: StreamShapes) -> NetworkSpec:
    """Face crops -> motion tokens."""
    W = shapes.window
    return NetworkSpec(
        "motion_encoder", "motion_encoder",
        inputs=(_ranged("faces", shapes.faces, W, W, W + 1, sample="image_pm1"),),
        outputs=(_ranged("motion", shapes.motion_states, W, W, W + 1),),
        wrap=SingleOutput,
        description="face crops in [-1,1] -> motion tokens (first call adds the reference face)",
    )


def _pose_guider_spec(shapes: StreamShapes) -> NetworkSpec:
    """Keypoint maps -> pose features."""
    W, P = shapes.window, shapes.pile
    return NetworkSpec(
        "pose_guider", "pose_guider",
        inputs=(_ranged("maps", shapes.keypoint_maps, W, W, P, sample="keypoint_maps"),),
        outputs=(_ranged("pose", shapes.pose_features, W, W, P),),
        wrap=SingleOutput,
        description="keypoint maps -> pose features (first call draws the whole pile)",
    )


def _pose_encoder_spec(shapes: StreamShapes) -> NetworkSpec:
    """The motion extractor (LivePortrait) on the driving frames."""
    W, B = shapes.window, shapes.batch
    return NetworkSpec(
        "pose_encoder", "motion_extractor",
        inputs=(_ranged("images", shapes.cond_frames, B, B * W, B * W, sample="image01"),),
        outputs=(
            *(_ranged(name, lambda n: (n, NUM_POSE_BINS), B, B * W, B * W) for name in ("pitch", "yaw", "roll")),
            _ranged("t", lambda n: (n, 3), B, B * W, B * W),
            _ranged("scale", lambda n: (n, 1), B, B * W, B * W),
            _ranged("kp", lambda n: (n, KEYPOINT_DIMS), B, B * W, B * W),
        ),
        wrap=PoseEncoder,
        keep_fp32=(_FP32_LAYER_NORMS, _GRN),
        description="LivePortrait motion extractor: 256x256 frames in [0,1] -> pose bins, t, scale, keypoints",
    )


def _vae_encoder_spec(shapes: StreamShapes) -> NetworkSpec:
    """The reference image -> its latent."""
    B = shapes.batch
    return NetworkSpec(
        "vae_encoder", "vae",
        inputs=(TensorSpec.fixed("image", shapes.frames(B), sample="image_pm1"),),
        outputs=(TensorSpec.fixed("latent", shapes.latent_frames(B)),),
        wrap=VaeEncoder,
        # The random-weight VAE encoder is the most rounding-sensitive block (shared README section 8).
        tolerances={"fp32": Tolerance("rel", 1e-3), "fp16": DEFAULT_TOLERANCES["fp16"]},
        description="reference image in [-1,1] -> posterior-mean latent x0.18215",
    )


def _image_encoder_spec(shapes: StreamShapes) -> NetworkSpec:
    """The reference image -> its CLIP embedding."""
    clip = TensorSpec.fixed("clip_embeds", shapes.clip_embeds())
    return NetworkSpec(
        "image_encoder", "image_encoder",
        inputs=(TensorSpec.fixed("pixels", shapes.clip_pixels(), sample="clip_pixels"),),
        outputs=(clip,),
        wrap=ImageEncoder,
        description="CLIP-normalised 224x224 reference -> image embeds (1,1,D)",
    )


def merge_specs(groups: Iterable[dict[str, NetworkSpec]]) -> dict[str, NetworkSpec]:
    """Union of the specs of several configurations (e.g. windows 2 and 4).

    Networks whose name does not depend on the window (motion encoder, pose guider, ...) get one
    export whose dynamic ranges cover every configuration (the first one's opt shape is kept).
    """
    merged: dict[str, NetworkSpec] = {}
    for specs in groups:
        for name, spec in specs.items():
            merged[name] = spec if name not in merged else _widen(merged[name], spec)
    return merged


def _widen(a: NetworkSpec, b: NetworkSpec) -> NetworkSpec:
    def tensors(x: Sequence[TensorSpec], y: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        if [t.name for t in x] != [t.name for t in y]:
            raise ValueError(f"{a.name}: tensors differ between configurations")
        out = []
        for s, t in zip(x, y):
            if len(s.min_shape) != len(t.min_shape) or s.dtype != t.dtype or s.values != t.values:
                raise ValueError(f"{a.name}.{s.name}: rank/dtype/values differ between configurations")
            lo = tuple(map(min, s.min_shape, t.min_shape))
            hi = tuple(map(max, s.max_shape, t.max_shape))
            out.append(TensorSpec(s.name, lo, s.opt_shape, hi, s.dtype, s.keep_fp32, s.sample, s.values))
        return tuple(out)

    return NetworkSpec(a.name, a.component, tensors(a.inputs, b.inputs), tensors(a.outputs, b.outputs), a.wrap,
                       a.keep_fp32, a.tolerances, a.description)


# ---- sample inputs -----------------------------------------------------------------------------------------
def _smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, size, size) smooth random images in (0, 1): low-frequency colour fields, like photos
    rather than white noise (which would drive conv features far outside their natural range)."""
    coarse = torch.randn(count, 3, max(2, size // 16), max(2, size // 16), generator=generator)
    fine = torch.randn(count, 3, max(2, size // 4), max(2, size // 4), generator=generator) * 0.25
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    field = field + F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(1.5 * field)


def _keypoint_maps(frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(frames, 3, size, size) sparse maps: dark canvas with small blobs of 85/255-step colours,
    like the drawn keypoints (most pixels 0, the rest in {85, 170, 255}/255 per channel)."""
    maps = torch.zeros(frames, 3, size, size)
    radius = max(1, size // 128)
    levels = torch.tensor([0.0, 85 / 255, 170 / 255, 1.0])
    for f in range(frames):
        centres = torch.randint(radius, size - radius, (21, 2), generator=generator)
        colours = levels[torch.randint(0, 4, (21, 3), generator=generator)]
        colours[colours.sum(1) == 0, 0] = 1.0
        for (y, x), colour in zip(centres.tolist(), colours):
            maps[f, :, y - radius:y + radius + 1, x - radius:x + radius + 1] = colour.view(3, 1, 1)
    return maps


def _sample_tensor(tensor: TensorSpec, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    kind = tensor.sample
    if kind == "values":
        count = math.prod(shape)
        if len(tensor.values) != count:
            raise ValueError(f"{tensor.name}: {len(tensor.values)} fixed values for shape {shape}")
        return torch.tensor(tensor.values, dtype=torch.float64).reshape(shape)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "normal":
        return torch.randn(shape, generator=generator)
    if kind == "keypoint_maps":  # (B, 3, F, R, R)
        b, _, f, r, _ = shape
        return _keypoint_maps(b * f, r, generator).reshape(b, f, 3, r, r).transpose(1, 2)
    if kind in ("image01", "image_pm1", "clip_pixels"):
        if len(shape) == 5:  # (B, 3, F, S, S) video
            b, _, f, s, _ = shape
            images = _smooth_images(b * f, s, generator).reshape(b, f, 3, s, s).transpose(1, 2)
        else:
            images = _smooth_images(shape[0], shape[-1], generator)
        if kind == "image_pm1":
            return images * 2 - 1
        if kind == "clip_pixels":
            mean = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
            return (images - mean) / std
        return images
    raise ValueError(f"{tensor.name}: unknown sample kind {kind!r}")


def sample_inputs(spec: NetworkSpec, which: str = "opt", precision: str = "fp32",
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Realistic inputs for ``spec`` at its ``which`` (``"min"``/``"opt"``/``"max"``) shapes.

    Values are rounded to float16-representable numbers whatever ``precision`` is, so the fp32 and
    the fp16 export are checked on identical values (the fp16 error then measures the export, not
    the input rounding). Dtypes are the tensors' export dtypes for ``precision``.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for tensor in spec.inputs:
        value = _sample_tensor(tensor, tensor.shape(which), generator)
        if tensor.dtype.is_floating_point:
            value = value.to(torch.float16).to(torch.float32)
        inputs.append(value.to(tensor.export_dtype(precision)).contiguous())
    return tuple(inputs)


def verification_cases(spec: NetworkSpec) -> list[tuple[str, str, int]]:
    """(label, which shapes, seed) of the two checks every export passes.

    The optimisation point, then the far end of the dynamic range (``max``, or ``min`` when opt is the
    max); a network without dynamic axes is checked a second time on other values.
    """
    dynamic = any(t.dynamic_axes for t in spec.inputs)
    if not dynamic:
        return [("opt", "opt", 0), ("opt_seed1", "opt", 1)]
    opt_is_max = all(t.opt_shape == t.max_shape for t in spec.inputs)
    return [("opt", "opt", 0), ("min", "min", 1) if opt_is_max else ("max", "max", 1)]
