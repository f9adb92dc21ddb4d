"""The streaming loop's nine networks behind one interface, whatever runs them.

The loop (:class:`~personalive_trt.runtime.reference_loop.Animator`) calls networks only through
:class:`Networks`, whose methods have exactly the interface of the exported graphs
(:func:`personalive_trt.export.specs.network_specs`). Each network is an engine backend
(:mod:`personalive_trt.engines.backends`): a torch module (the reference), an ONNX Runtime
session or a TensorRT engine. Inputs are cast to the dtype each backend expects (an fp16 engine
takes half tensors, an fp32 one float) and outputs come back in the pipeline's dtype.
"""
from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from personalive_trt.choices import Decoder
from personalive_trt.config import StreamConfig
from personalive_trt.devices import canonical_device
from personalive_trt.shapes import StreamShapes, kv_names, safe_name
from personalive_trt.models.weights import Models

ROLES = ("image_encoder", "vae_encoder", "reference_unet", "bank_projector", "pose_encoder", "motion_encoder", "pose_guider",
         "denoising_unet", "vae_decoder")


def specs_by_role(shapes: StreamShapes) -> dict[str, "NetworkSpec"]:  # noqa: F821
    """Role (``"denoising_unet"``) -> the spec of this stream's network (``"denoising_unet_w4"``;
    ``"vae_decoder_tiny"`` for the ``vae_decoder`` role of ``StreamConfig(vae="tiny")``)."""
    from personalive_trt.export.specs import denoising_unet_name, network_specs, vae_decoder_name

    specs = network_specs(shapes)
    names = {"denoising_unet": denoising_unet_name(shapes.window), "vae_decoder": vae_decoder_name(shapes.config.vae)}
    return {role: specs[names.get(role, role)] for role in ROLES}


class Networks:
    """Named-tensor calls into the nine networks.

    Args:
        backends: role -> engine backend (``allocate``/``infer`` with the spec's tensor names); each must
            run on ``device``.
        shapes: the stream's shapes (the backends' specs derive from the same object).
        dtype, device: the pipeline's working precision and device (``cuda`` means the current CUDA
            device, ``cuda:N``, as tensors report it).
        clone_outputs (`bool`, defaults to True): backends return views of their preallocated
            output buffers, which the next call overwrites; the reference loop keeps outputs in its
            piles, so it takes copies. ``run(..., clone=)`` decides per call.
        stable_inputs (`Mapping[str, Collection[str]]`, *optional*): role -> inputs its caller always
            passes from buffers allocated once (see ``EngineBackend.infer``); only a loop that owns such
            buffers declares them, on its own :meth:`view`.
    """

    #: The compiled state shared by the backends of :func:`personalive_trt.runtime.compile.compile_networks`
    #: (None: nothing compiled).
    compiled = None

    def __init__(self, backends: Mapping[str, object], shapes: StreamShapes, dtype: torch.dtype,
                 device: torch.device | str, clone_outputs: bool = True, description: str = "",
                 stable_inputs: Mapping[str, Collection[str]] | None = None) -> None:
        missing = [role for role in ROLES if role not in backends]
        if missing:
            raise ValueError(f"Networks: no backend for {missing}")
        self.device = canonical_device(device)
        for role, backend in backends.items():
            if canonical_device(backend.device) != self.device:
                raise ValueError(f"Networks: the {role} backend ({type(backend).__name__}) runs on {backend.device}, "
                                 f"the networks on {self.device}")
        self.backends = dict(backends)
        self.shapes = shapes
        self.dtype = dtype
        self.clone_outputs = clone_outputs
        self.description = description
        self.stable_inputs = self._check_stable(stable_inputs or {})
        self.bank_names = [safe_name(bank.name) for bank in shapes.banks]  # reference-UNet outputs
        self.kv_names = [kv_names(bank.name) for bank in shapes.banks]  # (key, value) denoising-UNet inputs
        # The reference UNet always runs at t = 0: one constant, so no call creates a tensor.
        self.zero_timestep = torch.zeros(shapes.batch, device=self.device)
        for backend in self.backends.values():
            backend.allocate()

    def _check_stable(self, stable: Mapping[str, Collection[str]]) -> dict[str, frozenset[str]]:
        checked = {}
        for role, names in stable.items():
            if role not in self.backends:
                raise ValueError(f"Networks: stable inputs for unknown role {role!r}; roles are {list(ROLES)}")
            unknown = sorted(set(names) - set(self.backends[role].spec.input_names))
            if unknown:
                raise ValueError(f"Networks: {role} has no inputs {unknown}; it has {self.backends[role].spec.input_names}")
            checked[role] = frozenset(names)
        return checked

    def view(self, *, clone_outputs: bool | None = None,
             stable_inputs: Mapping[str, Collection[str]] | None = None) -> "Networks":
        """The same backends with other call defaults, for one loop; this object is left as it was.

        A loop that consumes outputs before the next call and owns static input buffers (the streaming
        runtime) takes a view instead of changing flags on networks another loop may share."""
        other = copy.copy(self)
        if clone_outputs is not None:
            other.clone_outputs = clone_outputs
        if stable_inputs is not None:
            other.stable_inputs = self._check_stable(stable_inputs)
        return other

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_models(cls, models: Models, config: StreamConfig) -> "Networks":
        """Torch backends over the loaded modules (the reference path)."""
        from personalive_trt.engines.backends import TorchBackend

        if config.vae is Decoder.TINY and models.taesd is None:
            from personalive_trt.models.weights import WeightsError

            raise WeightsError(f"StreamConfig(vae='tiny') needs the TAESD decoder, which {models.source} was loaded "
                               "without: load_models(..., vae='tiny')")
        shapes = StreamShapes.from_unet_config(config, models.denoising_unet.config)
        precision = "fp16" if models.dtype == torch.float16 else "fp32"
        backends = {role: TorchBackend(spec, spec.wrap(getattr(models, spec.component)), precision=precision)
                    for role, spec in specs_by_role(shapes).items()}
        return cls(backends, shapes, models.dtype, models.device, description=f"torch ({models.source})")

    @classmethod
    def from_onnx(cls, onnx_paths: Mapping[str, Path], shapes: StreamShapes, dtype: torch.dtype,
                  device: torch.device | str) -> "Networks":
        """ONNX Runtime sessions on ``device`` (its provider, or an error); ``onnx_paths``: role -> model.onnx."""
        from personalive_trt.engines.backends import OnnxRuntimeBackend

        return cls._from_files(OnnxRuntimeBackend, onnx_paths, shapes, dtype, device, "onnxruntime")

    @classmethod
    def from_engines(cls, engine_paths: Mapping[str, Path], shapes: StreamShapes, dtype: torch.dtype,
                     device: torch.device | str) -> "Networks":
        """TensorRT engines; ``engine_paths``: role -> .engine file."""
        from personalive_trt.engines.backends import TensorRTBackend

        return cls._from_files(TensorRTBackend, engine_paths, shapes, dtype, device, "tensorrt")

    @classmethod
    def _from_files(cls, backend_class, paths: Mapping[str, Path], shapes: StreamShapes, dtype: torch.dtype,
                    device: torch.device | str, description: str) -> "Networks":
        backends = {role: backend_class(spec, paths[role], device=device) for role, spec in specs_by_role(shapes).items()}
        return cls(backends, shapes, dtype, device, description=description)

    # ---- calls ---------------------------------------------------------------------------------
    def run(self, role: str, clone: bool | None = None, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One network call; inputs by spec name, outputs by spec name (pipeline dtype).

        ``clone``: copy outputs out of the backend's buffers (default: ``clone_outputs``). Inputs declared
        stable for ``role`` are passed as such only when they reach the backend unchanged (no cast made a
        temporary of them)."""
        backend = self.backends[role]
        wanted = backend.input_dtypes
        cast = {name: t.to(device=self.device, dtype=wanted[name]).contiguous() for name, t in inputs.items()}
        stable = [name for name in self.stable_inputs.get(role, ()) if name in cast and cast[name] is inputs[name]]
        outputs = backend.infer(cast, stable=stable)
        clone = self.clone_outputs if clone is None else clone
        result = {}
        for name, value in outputs.items():
            value = value.to(self.dtype) if value.is_floating_point() else value
            result[name] = value.clone() if clone and value.data_ptr() == outputs[name].data_ptr() else value
        return result

    def image_encoder(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.run("image_encoder", pixels=pixels)["clip_embeds"]

    def vae_encoder(self, image: torch.Tensor) -> torch.Tensor:
        return self.run("vae_encoder", image=image)["latent"]

    def reference_unet(self, latent: torch.Tensor, clip_embeds: torch.Tensor) -> list[torch.Tensor]:
        """The 16 banks (shapes.banks order) of a reference-UNet pass at t = 0."""
        out = self.run("reference_unet", latent=latent, timestep=self.zero_timestep[: latent.shape[0]],
                       clip_embeds=clip_embeds)
        return list(out.values())

    def bank_projector(self, banks: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The denoising UNet's (key, value) projections of one reference/keyframe's 16 banks."""
        out = self.run("bank_projector", **dict(zip(self.bank_names, banks)))
        return [(out[key], out[value]) for key, value in self.kv_names]

    def pose_encoder(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run("pose_encoder", images=images)

    def motion_encoder(self, faces: torch.Tensor) -> torch.Tensor:
        return self.run("motion_encoder", faces=faces)["motion"]

    def pose_guider(self, maps: torch.Tensor) -> torch.Tensor:
        return self.run("pose_guider", maps=maps)["pose"]

    def denoising_unet(self, sample: torch.Tensor, timesteps: torch.Tensor, clip_embeds: torch.Tensor,
                       motion: torch.Tensor, pose: torch.Tensor,
                       kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``kv``: per block, the bank keys and values of the reference and each keyframe on the token axis."""
        named = {name: t for names, pair in zip(self.kv_names, kv) for name, t in zip(names, pair)}
        return self.run("denoising_unet", sample=sample, timesteps=timesteps, clip_embeds=clip_embeds,
                        motion=motion, pose=pose, **named)["noise_pred"]

    def vae_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        """Pile latents (x0.18215 domain) -> frames (W,3,R,R) in [0,1]."""
        return self.run("vae_decoder", latents=latents)["frames"]
