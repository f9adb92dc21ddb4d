"""Will `build` fit in memory? Its estimated peak host memory against what this process may use.

`build` exports and verifies one network at a time, smallest component first, and drops each torch
component once its last network is traced (:func:`personalive_trt.export.onnx_export.export_all`; within a
component the network with the largest tensors goes last). While network ``n`` is exported and verified
the process holds

    resident_n = BASE + sum of the weights of the components still loaded (n's included)
    peak_n     = resident_n + WEIGHT_FACTOR[embedded|external] * weights(n's component)
                 + ACTIVATION[n] * activation_bytes(n)

``WEIGHT_FACTOR`` counts the copies of the network's weights besides the one in ``resident_n``. Embedded
weights (``model.onnx`` holds them): the traced graph held as a protobuf while the files are written and
the ONNX Runtime session. ``external`` (weights above EXTERNAL_DATA_BYTES: the full-size UNets): the
exporter writes them to files as it goes, the ONNX files are written tensor by tensor, and the torch module
is dropped before the session loads its copy, so one copy is resident at any time: fitted 0 on the
full-size denoising UNet. ``activation_bytes`` is the size of the network's tensors at its largest
verification shapes (inputs and outputs, or for the VAE its widest full-resolution feature map), and
``ACTIVATION`` how many such sizes the tracer and ONNX Runtime hold at once; for the fixed-size networks
(motion and pose encoders, CLIP) it is in effect a constant. Loading peaks at ``BASE + all weights + the
largest component`` (a state dict and its module). The build's estimate is the largest of these, times
``MARGIN``. Two things keep the measured peaks this low, and the estimate assumes them:
:func:`return_freed_memory` (glibc) and ONNX Runtime sessions without their memory arena.

The coefficients are fitted to `benchmarks/build_memory.py` runs (tiny and small synthetic weights at
128, 256 and 512 px, the full-size denoising UNet alone at 128 px, fp32; held out: small weights and the
full-size UNet at 512 px; ``--fit`` prints the fit, benchmarks/RESULTS.md the measurements, method and errors) and rounded up; ``MARGIN`` covers the largest underestimate
of a build's peak seen, held-out runs included. Nothing is loaded to estimate: every component is built on
the meta device from its config (seconds), which also gives `build` the UNet config without loading
11.5 GB of weights before the check. The fp16 export (TensorRT's default) is estimated with the same
coefficients; it was not measured separately.

Memory this process may use (:func:`memory_limit`): its resident memory plus the smallest headroom of
MemAvailable (/proc/meminfo), its cgroup's limit (v2 ``memory.max - memory.current`` at every level from
its own cgroup up; v1 ``memory.limit_in_bytes - memory.usage_in_bytes``) and RLIMIT_AS / RLIMIT_DATA.
"""
from __future__ import annotations

import resource
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from personalive_trt.choices import Decoder
from personalive_trt.export.memory import BuildMemoryError, return_freed_memory

GIB = 2**30
# ---- coefficients: `python benchmarks/build_memory.py --fit benchmarks/results/build_memory.json`, rounded up ----
BASE = int(0.6 * GIB)  # interpreter, torch, onnx, onnxruntime, and what their allocators keep (fitted 0.59)
# embedded fitted 1.57; external fitted 0.00 on the full-size denoising UNet (benchmarks/RESULTS.md): one copy of
# its weights is resident at any time (the torch module until it is traced, then the ONNX Runtime session),
# and that copy is already in ``loaded``
WEIGHT_FACTOR = {"embedded": 1.6, "external": 0.0}
ACTIVATION = {  # fitted; bank_projector and image_encoder fit 0 (their weights term covers them)
    "reference_unet": 38.0, "bank_projector": 0.0, "denoising_unet": 27.0, "motion_encoder": 173.0,
    "pose_guider": 14.0, "pose_encoder": 74.0, "vae_decoder": 5.0, "vae_encoder": 3.0, "image_encoder": 0.0,
    "vae_decoder_tiny": 5.0,  # not measured: TAESD decodes the same shapes as the VAE decoder
}
DEFAULT_ACTIVATION = max(ACTIVATION.values())  # a network added later without its own fit
MARGIN = 1.25  # the worst measured/modelled ratio of any network's peak in the fit runs is 1.21


@dataclass(frozen=True)
class Estimate:
    """Estimated peak resident memory (bytes, MARGIN included) of each phase of one build."""

    networks: dict[str, int]  # network -> peak while it is exported and verified
    load: int  # peak while the weights are loaded

    @property
    def peak(self) -> int:
        return max(self.load, *self.networks.values())

    @property
    def largest(self) -> str:
        """The phase that peaks: a network name, or ``"loading the weights"``."""
        name = max(self.networks, key=self.networks.get)
        return name if self.networks[name] >= self.load else "loading the weights"


@dataclass(frozen=True)
class MemoryLimit:
    """The peak resident memory this process may reach (bytes) and which bound set it."""

    bytes: int
    source: str


# ---- components without their weights --------------------------------------------------------------------
def meta_models(weights: str, vae: str = "full") -> types.SimpleNamespace:
    """Every component of ``weights`` built on the meta device (sizes and configs, no memory, no values)."""
    from personalive_trt.models.weights import (
        build_module,
        components,
        folder_configs,
        parse_vae,
        parse_weights_spec,
        taesd_config,
        validate_weights_folder,
    )

    vae = parse_vae(vae)
    kind, value = parse_weights_spec(weights)
    if kind == "synthetic":
        from personalive_trt.models.synthetic import CONFIGS

        configs = CONFIGS[str(value).partition(":")[0]]
    else:
        validate_weights_folder(Path(value))
        configs = folder_configs(Path(value))
        if vae is Decoder.TINY:
            configs = {**configs, "taesd": taesd_config(Path(value))}
    with torch.device("meta"):
        return types.SimpleNamespace(**{c.name: build_module(c.name, configs) for c in components(vae)})


def component_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def activation_bytes(spec, vae: torch.nn.Module | None) -> int:
    """The size of a network's tensors at its largest shapes (fp32): inputs + outputs, or for the VAE
    networks the widest full-resolution feature map (the decoder's last level, the encoder's first)."""
    def numel(shape) -> int:
        out = 1
        for size in shape:
            out *= int(size)
        return out

    io = sum(numel(t.max_shape) for t in (*spec.inputs, *spec.outputs)) * 4
    if spec.component == "vae" and vae is not None:
        frames, _, height, width = next(t.max_shape for t in (*spec.inputs, *spec.outputs) if t.name in
                                        ("frames", "image"))
        # the encoder's first level runs at full resolution; the decoder upsamples its second-widest
        # level (block_out_channels[1], reversed order) to full resolution before the last level
        channels = vae.config.block_out_channels
        width_at_full = channels[0] if spec.name == "vae_encoder" else max(channels[0], channels[1])
        return max(io, frames * height * width * width_at_full * 4)
    return io


@dataclass(frozen=True)
class Phase:
    """One network's export and verification, with the sizes the estimate reads (bytes)."""

    network: str
    kind: str  # the key of ACTIVATION (``denoising_unet`` for every ``denoising_unet_wW``)
    loaded: int  # weights of every component still loaded (this network's included)
    weights: int  # this network's component
    activation: int  # :func:`activation_bytes`
    external: bool  # exported with its weights in ``model.onnx.data`` (above EXTERNAL_DATA_BYTES)

    @property
    def weight_factor(self) -> float:
        return WEIGHT_FACTOR["external" if self.external else "embedded"]


def phases(models, shapes_list: Sequence, names: Sequence[str] | None = None) -> list[Phase]:
    """The networks `build` exports for ``shapes_list`` (default: all of them; else ``names``), in its order,
    from ``models`` (loaded or :func:`meta_models`)."""
    from personalive_trt.export.onnx_export import EXTERNAL_DATA_BYTES, all_specs, export_order

    specs = all_specs(shapes_list)
    order = export_order(models, specs, list(specs) if names is None else list(names))
    sizes = {c: component_bytes(getattr(models, c)) for c in {specs[n].component for n in order}}
    vae = getattr(models, "vae", None)
    return [Phase(network=name, kind=name if name in ACTIVATION else name.rpartition("_w")[0],
                  loaded=sum(sizes[c] for c in {specs[n].component for n in order[index:]}),
                  weights=sizes[specs[name].component], activation=activation_bytes(specs[name], vae),
                  external=sizes[specs[name].component] > EXTERNAL_DATA_BYTES)
            for index, name in enumerate(order)]


def phase_peak(phase: Phase) -> float:
    """The model of the docstring, without MARGIN."""
    return (BASE + phase.loaded + phase.weight_factor * phase.weights
            + ACTIVATION.get(phase.kind, DEFAULT_ACTIVATION) * phase.activation)


def load_peak(models) -> float:
    """Loading: every component, plus one more of the largest (its state dict while it is copied in)."""
    sizes = [component_bytes(m) for m in vars(models).values()]
    return BASE + sum(sizes) + max(sizes)


def estimate(models, shapes_list: Sequence, names: Sequence[str] | None = None) -> Estimate:
    """Estimated peaks (MARGIN included) of exporting ``names`` (default: every network of ``shapes_list``)
    from ``models`` (loaded or :func:`meta_models`), in the order `build` exports them."""
    return Estimate(networks={p.network: int(MARGIN * phase_peak(p)) for p in phases(models, shapes_list, names)},
                    load=int(MARGIN * load_peak(models)))


def estimate_for(weights: str, windows: Sequence[int], resolution: int, vae: str = "full") -> Estimate:
    """:func:`estimate` of ``build --weights weights --window ...`` at ``resolution``, nothing loaded."""
    from personalive_trt.config import StreamConfig
    from personalive_trt.shapes import StreamShapes

    models = meta_models(weights, vae)
    unet_config = models.denoising_unet.config
    return estimate(models, [StreamShapes.from_unet_config(StreamConfig(window=w, resolution=resolution, vae=vae),
                                                           unet_config) for w in windows])


# ---- what this process may use ---------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    """An integer file (cgroup ``max`` means unlimited: None); a missing file is None."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _meminfo(proc: Path) -> dict[str, int]:
    out = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if fields:
            out[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def _status_bytes(proc: Path, key: str) -> int:
    for line in (proc / "self" / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cgroup_headroom(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """The smallest ``limit - usage`` over this process's memory cgroups, or None when none is limited.

    v2 (``0::/path``): ``memory.max - memory.current`` of its own cgroup and every parent up to
    ``cgroup_root``; v1 (``N:...memory...:/path``): ``memory.limit_in_bytes - memory.usage_in_bytes`` the
    same way under ``cgroup_root/memory``. Walking up also finds the limit when the listed path does not
    exist as such (a container's cgroup namespace mounts its own cgroup as the root)."""
    best = None
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, limit_file, usage_file, label = cgroup_root, "memory.max", "memory.current", "cgroup"
        elif "memory" in controllers.split(","):
            root, limit_file, usage_file, label = (cgroup_root / "memory", "memory.limit_in_bytes",
                                                   "memory.usage_in_bytes", "cgroup v1")
        else:
            continue
        folder = root / path.lstrip("/")
        while True:
            limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
            # v1 writes "no limit" as a huge page-rounded number (2**63 - 4096 on x86_64)
            if limit is not None and usage is not None and limit < 2**60 and (best is None or limit - usage < best[0]):
                best = (limit - usage, f"{label} {folder / limit_file} = {limit / GIB:.1f} GiB, "
                                       f"{usage / GIB:.1f} GiB in use")
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return best


def memory_limit(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                 rlimits: Mapping[str, int] | None = None) -> MemoryLimit:
    """The peak resident memory this process may reach: its current RSS plus the smallest headroom of
    MemAvailable, its cgroup limits and RLIMIT_AS / RLIMIT_DATA (minus the virtual size / data already
    used). ``proc``, ``cgroup_root`` and ``rlimits`` (name -> soft limit) are for tests."""
    rss = _status_bytes(proc, "VmRSS")
    available = _meminfo(proc).get("MemAvailable")
    if available is None:
        raise BuildMemoryError(f"{proc / 'meminfo'}: no MemAvailable line; cannot check the build's memory "
                               "(--skip-memory-check skips the check)")
    bounds = [(available, f"MemAvailable {available / GIB:.1f} GiB")]
    cgroup = cgroup_headroom(proc, cgroup_root)
    if cgroup is not None:
        bounds.append(cgroup)
    if rlimits is None:
        rlimits = {"RLIMIT_AS": resource.getrlimit(resource.RLIMIT_AS)[0],
                   "RLIMIT_DATA": resource.getrlimit(resource.RLIMIT_DATA)[0]}
    used = {"RLIMIT_AS": _status_bytes(proc, "VmSize"), "RLIMIT_DATA": _status_bytes(proc, "VmData")}
    for name, soft in rlimits.items():
        if soft != resource.RLIM_INFINITY and soft >= 0:
            bounds.append((soft - used[name], f"{name} {soft / GIB:.1f} GiB"))
    headroom, source = min(bounds, key=lambda b: b[0])
    return MemoryLimit(bytes=rss + max(headroom, 0), source=source)


def check_fits(estimate: Estimate, limit: MemoryLimit) -> None:
    """Raise :class:`BuildMemoryError` (one line) when the estimated peak exceeds the limit."""
    if estimate.peak > limit.bytes:
        raise BuildMemoryError(
            f"this build would not fit in memory: estimated peak {estimate.peak / GIB:.1f} GiB (while "
            f"{estimate.largest}) > {limit.bytes / GIB:.1f} GiB this process may use ({limit.source}); free "
            "memory, build fewer --window sizes at once, or pass --skip-memory-check to try anyway")


__all__ = ["BuildMemoryError", "Estimate", "MemoryLimit", "Phase", "check_fits", "estimate", "estimate_for",
           "memory_limit", "meta_models", "phases", "return_freed_memory"]
