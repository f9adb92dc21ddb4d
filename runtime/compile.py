"""``torch.compile`` for the torch backend: compiled networks that run inside the runtime's own CUDA graphs.

Where TensorRT cannot be built, the torch backend is the engine. :func:`compile_networks` returns a new
:class:`~personalive_trt.engines.networks.Networks` whose per-step networks (denoising UNet, VAE decoder, motion
encoder, pose encoder, pose guider, and the keyframe path's reference UNet and bank projector) run compiled
code; the image encoder and VAE encoder, called once per reference, stay eager. What it costs and why:

* **Regional compilation.** The UNets and the VAE decoder are compiled region by region: every element of a
  ``resnets``, ``attentions``, ``motion_modules`` or ``temporal_modules`` list (the repeated blocks) is
  compiled with ``dynamic=False``; the glue between them (embeddings, up/down samplers, conv in/out) runs
  eagerly. Dynamo inlines ``nn.Module`` calls and treats parameters as inputs, so blocks of one class and one
  shape share one compiled graph: start-up grows with the number of distinct block shapes, not blocks. A
  whole-UNet graph would fuse across block boundaries, but costs minutes of compile per bank length; under
  CUDA graphs the eager glue costs no launch latency, so regions lose little. The small networks (motion
  encoder, pose encoder, pose guider, bank projector) are compiled whole (so is TAESD, which has no such lists).
* **Static shapes, compiled at warm-up, frozen after.** Every shape the stream uses is compiled before the
  stream starts (``StreamRuntime`` warms every kind of call, and the reference encoding, then calls
  :meth:`CompiledNetworks.freeze`); after that a recompilation raises ``RecompileError``
  (``error_on_recompile``) instead of stalling a live stream for seconds, and hitting dynamo's recompile
  limit raises instead of falling back to eager code silently.
* **Inside the runtime's graphs.** The compiled code is inductor's default mode (not ``reduce-overhead``,
  which would capture its own CUDA graphs); the runtime captures the whole call, compiled kernels included,
  in its graphs after the warm-up.
* **The caller's modules are untouched.** The compiled networks run on a structural copy of each module
  tree that shares the caller's parameter tensors (no weights are copied); ``channels_last`` gives the copy
  its own channels-last convolution weights (the caller's keep their layout), at the price of a second copy
  of those weights.
* **Cache.** Inductor's FX graph and AOT autograd caches live in ``<engines cache>/torch_compile/inductor``;
  after a warm-up the artefacts of this configuration are bundled (``torch.compiler.save_cache_artifacts``)
  into ``<key digest>.bin`` with a ``.json`` record, and loaded before the next compile of the same key.
  A key covers torch, the device, dtype, stream shapes, the UNet config and the options; ``--compile auto``
  compiles only where that bundle exists (a warm start), so a start never compiles for minutes by surprise.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personalive_trt.choices import Backend, CompileMode, Loop
from personalive_trt.engines.backends import TorchBackend
from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR

#: The roles compiled; the others (run once per reference) stay eager.
COMPILED_ROLES = ("denoising_unet", "vae_decoder", "motion_encoder", "pose_encoder", "pose_guider",
                  "reference_unet", "bank_projector")
#: The roles compiled by region (their forward runs through the repeated blocks); the others whole.
REGIONAL_ROLES = ("denoising_unet", "reference_unet", "vae_decoder")
#: ModuleList names whose elements are compiled as regions.
REGION_LISTS = ("resnets", "attentions", "motion_modules", "temporal_modules")
ATTENTION_KERNELS = ("auto", "flash", "efficient", "cudnn", "math")
COMPILE_MODES = tuple(mode.value for mode in CompileMode)
CACHE_SUBDIR = "torch_compile"
# Distinct shapes one region may be compiled for (bank lengths x block shapes); beyond it dynamo raises
# (fail_on_recompile_limit_hit) instead of running the region eagerly.
RECOMPILE_LIMIT = 64


#: The torch APIs this module uses that older releases lack (all in torch 2.7; the package allows torch >= 2.4).
COMPILE_TORCH = "2.7"
_NEEDED_APIS = (("torch.compiler", "save_cache_artifacts"), ("torch.compiler", "load_cache_artifacts"),
                ("torch._dynamo.config", "recompile_limit"), ("torch._dynamo.config", "accumulated_recompile_limit"),
                ("torch._dynamo.config", "fail_on_recompile_limit_hit"))


class CompileError(RuntimeError):
    """torch.compile cannot run here (a torch older than 2.7, no Triton on CUDA, no C++ compiler on the CPU): one
    line."""


def require_compile_api() -> None:
    """Raise :class:`CompileError` in one line when this torch lacks an API the compiled path uses (checked by
    feature, not by version string, so nightly and vendor builds pass on what they have)."""
    import importlib

    missing = [f"{module}.{name}" for module, name in _NEEDED_APIS
               if not hasattr(importlib.import_module(module), name)]
    if missing:
        raise CompileError(f"--compile needs torch >= {COMPILE_TORCH} ({missing[0]} is missing in torch "
                           f"{torch.__version__}): upgrade torch, or run with --compile off")


@dataclass(frozen=True)
class CompileOptions:
    """How the torch backend is compiled (every field is part of the cache key).

    Args:
        channels_last (`bool`, defaults to False): the copy's 4-D convolution weights in channels-last layout.
        attention (`str`, defaults to ``"auto"``): the scaled-dot-product-attention kernel the compiled
            graphs are traced with: ``auto`` (torch's choice), ``flash``, ``efficient``, ``cudnn`` or ``math``.
        cache_dir (`Path`, *optional*): the compile cache folder (default ``engines_cache/torch_compile``).
    """

    channels_last: bool = False
    attention: str = "auto"
    cache_dir: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {self.attention!r}: expected one of {', '.join(ATTENTION_KERNELS)}")

    def folder(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(DEFAULT_ENGINES_DIR) / CACHE_SUBDIR


def require_compiler(device: torch.device) -> None:
    """Raise :class:`CompileError` in one line where this torch or inductor cannot compile for ``device``."""
    require_compile_api()
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            raise CompileError(f"--compile on {device} needs Triton, which failed to import ({exc}): install "
                               "the triton build that matches torch, or run without --compile") from None
    elif device.type == "cpu":
        from torch._inductor import cpp_builder

        compiler = os.environ.get("CXX") or cpp_builder.get_cpp_compiler()
        if shutil.which(compiler) is None:
            raise CompileError(f"--compile on the CPU needs a C++ compiler ({compiler!r} is not on PATH): install "
                               "gcc or clang, or run without --compile")
    else:
        raise CompileError(f"--compile: device {device} is not supported; expected cpu or cuda[:N]")


def cache_key(networks, options: CompileOptions) -> dict:
    """Everything the compiled artefacts depend on (see the module docstring)."""
    device = networks.device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    capability = ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else None
    unet = networks.backends["denoising_unet"].module
    unet_config = dict(getattr(getattr(unet, "unet", unet), "config", {}))
    return {"torch": torch.__version__, "device": gpu, "capability": capability,
            "dtype": str(networks.dtype).removeprefix("torch."),
            "config": networks.shapes.config.as_dict(), "unet_config": json.loads(json.dumps(unet_config, default=str)),
            "options": {"channels_last": options.channels_last, "attention": options.attention},
            "roles": list(COMPILED_ROLES), "regional": list(REGIONAL_ROLES), "regions": list(REGION_LISTS)}


def key_digest(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class CompileCache:
    """The compile cache folder: inductor's own caches plus one artefact bundle per configuration key."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def bundle(self, digest: str) -> Path:
        return self.folder / f"{digest}.bin"

    def is_warm(self, digest: str) -> bool:
        return self.bundle(digest).is_file() and self.bundle(digest).with_suffix(".json").is_file()

    def activate(self) -> None:
        """Point inductor's on-disk caches into this folder: ``TORCHINDUCTOR_CACHE_DIR`` is set for the process
        (inductor reads it at each lookup; a value set earlier is replaced, the folder is chosen by ``--engines``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((self.folder / "inductor").resolve())

    def load(self, digest: str) -> bool:
        """Pre-populate inductor's caches from the bundle of ``digest``; False where there is none."""
        if not self.is_warm(digest):
            return False
        torch.compiler.load_cache_artifacts(self.bundle(digest).read_bytes())
        return True

    def save(self, digest: str, key: Mapping, compile_s: Mapping) -> None:
        from personalive_trt.engines.cache import atomic_write

        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise CompileError("torch.compiler.save_cache_artifacts() returned nothing after the warm-up: "
                               "inductor's caches are off (TORCHINDUCTOR_FX_GRAPH_CACHE=0?)")
        atomic_write(self.bundle(digest), saved[0])
        record = {"key": key, "compile_s": dict(compile_s), "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write(self.bundle(digest).with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())


# ---- the module copy ------------------------------------------------------------------------------------

def structural_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose every module is a new object and whose parameters and buffers are the
    caller's tensors: replacing a child or a parameter in the copy leaves the original as it was."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: None if child is None else structural_copy(child)
                      for name, child in module._modules.items()}
    return clone


def _channels_last(module: torch.nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            sub._parameters["weight"] = torch.nn.Parameter(
                sub.weight.detach().contiguous(memory_format=torch.channels_last), requires_grad=False)


def compile_regions(module: torch.nn.Module) -> int:
    """Replace, in place in ``module`` (a structural copy), each element of the :data:`REGION_LISTS` lists by
    its compiled form; returns how many were. A region's own sub-lists are inside it, not compiled again."""
    count = 0
    for sub in list(module.modules()):
        for name in REGION_LISTS:
            blocks = sub._modules.get(name)
            if isinstance(blocks, torch.nn.ModuleList):
                for index, block in enumerate(blocks):
                    if not isinstance(block, torch._dynamo.eval_frame.OptimizedModule):
                        blocks[index] = torch.compile(block, dynamic=False)
                        count += 1
    return count


def compiled_module(module: torch.nn.Module, options: CompileOptions, regional: bool) -> tuple[torch.nn.Module, str]:
    """The compiled copy of one network's wrapper and how it was compiled (``regions:N`` or ``whole``).

    ``regional``: compile the blocks of :data:`REGION_LISTS` (a wrapper without any is compiled whole); else
    the whole wrapper (the bank projector wraps the denoising UNet but runs only its projections)."""
    clone = structural_copy(module)
    if options.channels_last:
        _channels_last(clone)
    regions = compile_regions(clone) if regional else 0
    if regions:
        return clone, f"regions:{regions}"
    return torch.compile(clone, dynamic=False), "whole"


# ---- the backend and the networks ---------------------------------------------------------------------------

_SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


class CompiledState:
    """What the compiled backends of one :class:`Networks` share: frozen or not, and the compile times."""

    def __init__(self, options: CompileOptions, digest: str, key: dict, cache: CompileCache, warm: bool) -> None:
        self.options, self.digest, self.key, self.cache = options, digest, key, cache
        self.cache_state = "warm" if warm else "cold"
        self.frozen = False
        self.compile_s: dict[str, float] = {}  # role -> seconds of its warm-up calls (trace + compile + run)

    @contextlib.contextmanager
    def calling(self, role: str) -> Iterator[None]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = (sdpa_kernel(getattr(SDPBackend, _SDPA[self.options.attention]))
                  if self.options.attention != "auto" else contextlib.nullcontext())
        if self.frozen:
            with torch._dynamo.config.patch(error_on_recompile=True, fail_on_recompile_limit_hit=True), kernel:
                yield
            return
        start = time.perf_counter()
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=4096,
                                        fail_on_recompile_limit_hit=True), kernel:
            yield
        self.compile_s[role] = self.compile_s.get(role, 0.0) + time.perf_counter() - start

    def freeze(self) -> None:
        """Every shape is compiled: bundle the artefacts (cold start) and make any recompilation an error."""
        if self.frozen:
            return
        if self.cache_state == "cold":
            self.cache.save(self.digest, self.key, self.compile_s)
        self.frozen = True

    def report(self) -> dict:
        """``{"cache": "cold"|"warm", "per_network": {role: s}, "total": s, "digest", "folder"}``."""
        return {"cache": self.cache_state, "per_network": {r: round(s, 3) for r, s in self.compile_s.items()},
                "total": round(sum(self.compile_s.values()), 3), "digest": self.digest,
                "folder": str(self.cache.folder)}


def compile_networks(networks, options: CompileOptions | None = None):
    """A new :class:`Networks` whose :data:`COMPILED_ROLES` run compiled copies (see the module docstring);
    ``networks`` (torch backends) and its modules are left as they were. Compilation itself happens at the
    first call of each shape; ``StreamRuntime`` makes those calls at construction, then freezes."""
    from personalive_trt.engines.networks import Networks

    options = options or CompileOptions()
    not_torch = sorted(role for role in COMPILED_ROLES if type(networks.backends[role]) is not TorchBackend)
    if not_torch:
        raise ValueError(f"compile: only torch backends can be compiled; {', '.join(not_torch)} are not")
    require_compiler(networks.device)
    cache = CompileCache(options.folder())
    cache.activate()
    key = cache_key(networks, options)
    digest = key_digest(key)
    state = CompiledState(options, digest, key, cache, warm=cache.load(digest))
    backends = dict(networks.backends)
    for role in COMPILED_ROLES:
        eager = networks.backends[role]
        module, how = compiled_module(eager.module, options, regional=role in REGIONAL_ROLES)
        backends[role] = CompiledBackend(eager, module, state, role, how)
    compiled = Networks(backends, networks.shapes, networks.dtype, networks.device,
                        clone_outputs=networks.clone_outputs,
                        description=f"{networks.description}, torch.compile ({state.cache_state} cache)")
    compiled.compiled = state
    return compiled


def compile_is_warm(networks, options: CompileOptions | None = None) -> bool:
    """Would :func:`compile_networks` start from a warm cache (``--compile auto``)?"""
    options = options or CompileOptions()
    return CompileCache(options.folder()).is_warm(key_digest(cache_key(networks, options)))


class CompiledBackend(TorchBackend):
    """A torch backend running a compiled copy of another backend's module (same spec and dtypes)."""

    def __init__(self, eager: TorchBackend, module: torch.nn.Module, state: CompiledState, role: str,
                 how: str) -> None:
        super().__init__(eager.spec, module)
        self.input_dtypes, self.output_dtypes = dict(eager.input_dtypes), dict(eager.output_dtypes)
        self.device = eager.device
        self.state, self.role, self.how = state, role, how

    def _run(self, inputs, shapes, **kwargs):
        with self.state.calling(self.role):
            return super()._run(inputs, shapes, **kwargs)


def resolve_compile(mode: CompileMode | str, backend: Backend | str, engines: Path | None = None, networks=None,
                    loop: Loop | str = Loop.RUNTIME) -> CompileOptions | None:
    """``--compile auto|on|off`` -> the options to compile with, or None.

    ``on`` compiles (torch backend, streaming runtime only; refused in one line otherwise); ``auto`` compiles
    only where the cache of this exact configuration is warm (``networks`` decide the key), so a default start
    never compiles for minutes; ``off`` never does."""
    mode = CompileMode.parse(mode, "--compile")
    backend, loop = Backend.parse(backend, "--backend"), Loop.parse(loop, "--loop")
    if mode is CompileMode.OFF:
        return None
    if mode is CompileMode.ON:
        if backend is not Backend.TORCH:
            raise ValueError(f"--compile on: only the torch backend is compiled (--backend {backend} runs engines)")
        if loop is not Loop.RUNTIME:
            raise ValueError("--compile on: compiles the streaming runtime's networks, not --reference-loop's")
    elif backend is not Backend.TORCH or loop is not Loop.RUNTIME or networks is None:
        return None
    options = CompileOptions(cache_dir=Path(engines or DEFAULT_ENGINES_DIR) / CACHE_SUBDIR)
    if mode is CompileMode.AUTO and not compile_is_warm(networks, options):
        return None
    return options
