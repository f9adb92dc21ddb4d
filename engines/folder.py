"""A built engines folder: what ``build`` records in it, and the networks it holds, checked before they run.

Layout::

    engines_dir/build.json              what was built: weights fingerprint, stream configs, UNet config, decoder
    engines_dir/onnx/manifest.json      export manifest (shapes, hashes, verification errors)
    engines_dir/onnx/<network>.<precision>/model.onnx
    engines_dir/tensorrt/               engine cache (keyed by ONNX hash, profile, precision, TRT, GPU)

``build`` (:mod:`personalive_trt.build.driver`) writes it; :func:`load_networks` reads it back for ``run
--backend onnxruntime|tensorrt --engines DIR`` (through :func:`personalive_trt.runtime.open.open_networks`).
Engines built from other weights or another stream configuration are refused, never used silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from personalive_trt.choices import Backend, Decoder
from personalive_trt.config import StreamConfig
from personalive_trt.engines.networks import Networks, specs_by_role
from personalive_trt.models.weights import TAESD_DIR, parse_weights_spec
from personalive_trt.shapes import StreamShapes

BUILD_FILE = "build.json"
DEFAULT_ENGINES_DIR = Path("engines_cache")

class BuildError(RuntimeError):
    """An engines folder that is missing, stale or built for something else."""


def require_onnx() -> None:
    """Export and the ONNX Runtime backend need the `onnx` extra; say so in one line."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise BuildError(f"{' and '.join(missing)} not installed: pip install \"personalive-trt[onnx]\"")


def weights_fingerprint(weights: str, seed: int = 0, vae: str = "full") -> str:
    """Identifies the weights an engine was built from, without loading them.

    Synthetic weights: their spec and seed. A folder: sha256 over every file's relative path,
    size and modification time; ``taesd/`` counts only for ``vae="tiny"``, so adding it to a folder
    leaves the engines built for the full decoder valid.
    """
    kind, value = parse_weights_spec(weights)
    if kind == "synthetic":
        return f"synthetic:{value}:seed{seed}"
    root = Path(value)
    digest = hashlib.sha256()
    used = (lambda rel: True) if Decoder(vae) is Decoder.TINY else (lambda rel: rel.parts[0] != TAESD_DIR)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".download" not in p.parts
                       and used(p.relative_to(root))):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return f"folder:{digest.hexdigest()[:32]}"


@dataclass
class BuildRecord:
    """``build.json``: what an engines folder holds."""

    weights: str
    fingerprint: str
    unet_config: dict
    configs: list[dict]
    precisions: list[str]
    backend: str
    overrides: dict = dataclasses.field(default_factory=dict)  # network/component -> precision
    seconds: float = 0.0
    vae: str = "full"  # the per-step decoder (StreamConfig.vae); records written before it existed: "full"
    # The base precision (--precision): every network not in ``overrides`` is built in it. Records
    # written before this field existed (None) were built with fp16 as the base whenever fp16 was
    # among ``precisions`` (what engine_paths did then), which is what ``base_precision`` returns.
    precision: str | None = None

    @property
    def base_precision(self) -> str:
        if self.precision is not None:
            return self.precision
        return "fp16" if "fp16" in self.precisions else "fp32"

    def keyframe_banks(self, config: StreamConfig) -> int | None:
        """The history banks the engines built for ``config``'s stream hold (``build --max-keyframes K``: K;
        default 3), whatever ``config``'s own bank capacity; ``None`` when no build matches the rest of it."""
        def rest(fields: dict) -> dict:
            return {k: v for k, v in fields.items() if k not in ("max_keyframes", "bank_capacity")}

        built = [StreamConfig(**{"vae": self.vae, **c}) for c in self.configs]
        banks = [c.keyframe_banks for c in built if rest(c.engine_fields()) == rest(config.engine_fields())]
        return max(banks) if banks else None

    def shapes(self, config: StreamConfig) -> StreamShapes:
        if config.vae != self.vae:
            raise BuildError(f"the engines were built for --vae {self.vae}, not --vae {config.vae}; rebuild with "
                             f"`personalive-trt build --vae {config.vae}` (another --engines folder keeps both)")
        built = [StreamConfig(**{"vae": self.vae, **c}).engine_fields() for c in self.configs]  # older: no "vae"
        if config.engine_fields() not in built:
            windows = sorted({c["window"] for c in self.configs})
            raise BuildError(f"the engines were built for window(s) {windows} and configs {self.configs}, "
                             f"not {config}; rebuild with `personalive-trt build --window {config.window}`")
        return StreamShapes.from_unet_config(config, self.unet_config)


def read_build(engines_dir: Path) -> BuildRecord:
    path = engines_dir / BUILD_FILE
    if not path.is_file():
        raise BuildError(f"{engines_dir}: no engines built here (missing {BUILD_FILE}); run `personalive-trt build "
                         f"--engines {engines_dir}` first")
    try:
        return BuildRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BuildError(f"{path}: unreadable build record ({exc}); rebuild with --force") from exc


def write_build(engines_dir: Path, record: BuildRecord) -> None:
    tmp = engines_dir / f".{BUILD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(record), indent=2))
    os.replace(tmp, engines_dir / BUILD_FILE)


def onnx_paths(engines_dir: Path, shapes: StreamShapes, precision: str, for_tensorrt: bool = False) -> dict[str, Path]:
    """Role -> exported ONNX for this stream configuration and precision.

    ONNX Runtime gets the fused-attention copy the build verified (``model.fused.onnx``: same weights,
    attention as one ``MultiHeadAttention`` node; on the CPU ~5x faster than the plain graph and
    without its score matrices, see :mod:`personalive_trt.export.attention`); exports written before
    the copy existed fall back to ``model.onnx``. TensorRT (``for_tensorrt``) parses ``model.onnx``,
    whose plain attention it fuses itself.
    """
    from personalive_trt.export.onnx_export import read_manifest

    onnx_dir = engines_dir / "onnx"
    entries = read_manifest(onnx_dir).get("networks", {})
    paths = {}
    for role, spec in specs_by_role(shapes).items():
        record = entries.get(spec.name, {}).get("precisions", {}).get(precision)
        if record is None:
            raise BuildError(f"{onnx_dir}: no {precision} export of {spec.name}; run `personalive-trt build "
                             f"--engines {engines_dir}`")
        paths[role] = onnx_dir / (record["onnx"] if for_tensorrt else record.get("onnx_fused", record["onnx"]))
    return paths


def engine_paths(record: BuildRecord, engines_dir: Path, shapes_list: Sequence[StreamShapes],
                 overrides: Mapping[str, str], allow_build: bool, log: Callable[[str], None] = print
                 ) -> dict[str, Path]:
    """Role -> TensorRT engine of the last configuration; builds (or refuses) stale ones."""
    from personalive_trt.engines.builder import build_engines

    paths: dict[str, Path] = {}
    for shapes in shapes_list:
        by_role = specs_by_role(shapes)
        fp32_paths = onnx_paths(engines_dir, shapes, "fp32", for_tensorrt=True) if "fp32" in record.precisions else {}
        fp16_paths = onnx_paths(engines_dir, shapes, "fp16", for_tensorrt=True) if "fp16" in record.precisions else {}
        by_name = {spec.name: role for role, spec in by_role.items()}

        def onnx_for(spec, precision, _fp32=fp32_paths, _fp16=fp16_paths, _roles=by_name):
            source = _fp16 if precision == "fp16" else _fp32
            if _roles[spec.name] not in source:
                raise BuildError(f"no {precision} ONNX export of {spec.name}; rebuild with that precision")
            return source[_roles[spec.name]]

        built = build_engines(list(by_role.values()), onnx_for, engines_dir / "tensorrt",
                              precision=record.base_precision,
                              precision_overrides=dict(overrides) or None, allow_build=allow_build, progress=log)
        paths = {role: built[spec.name] for role, spec in by_role.items()}
    return paths


def load_networks(engines_dir: Path, backend: str, weights: str, config: StreamConfig, device: torch.device | str,
                  seed: int = 0, dtype: torch.dtype | None = None) -> Networks:
    """The networks of a built engines folder, checked against the requested weights, config, device and dtype.

    ``dtype`` (``torch.float16``/``torch.float32``) is the precision to run: the fp16 or fp32 ONNX export
    for ONNX Runtime, the engines' base precision for TensorRT (per-network overrides recorded at build
    time stay as built). ``None`` runs what was built. A precision that was not built is refused in one
    line naming what was, never swapped for another. ``device`` is where every backend runs (ONNX Runtime
    on that device's provider; TensorRT on CUDA only).
    """
    from personalive_trt.devices import DTYPE_NAMES, DTYPES, canonical_device

    engines_dir = Path(engines_dir)
    device = canonical_device(device)
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype}: expected one of {', '.join(str(d) for d in DTYPE_NAMES)}")
    wanted = DTYPE_NAMES[dtype] if dtype is not None else None
    backend = Backend.parse(backend, "--backend")
    if backend is Backend.TENSORRT:
        from personalive_trt.engines.backends import check_tensorrt_device, require_tensorrt

        check_tensorrt_device(require_tensorrt(), device, "--backend tensorrt")
    record = read_build(engines_dir)
    # taesd/ counts as the record's decoder says; a decoder mismatch is refused by record.shapes below.
    fingerprint = weights_fingerprint(weights, seed, vae=record.vae)
    if record.fingerprint != fingerprint:
        raise BuildError(f"{engines_dir} was built from weights {record.weights!r}, not {weights!r}; run "
                         f"`personalive-trt build --weights {weights} --engines {engines_dir}`")
    shapes = record.shapes(config)
    if backend is Backend.ONNXRUNTIME:
        require_onnx()
        built = record.precisions
        precision = wanted or ("fp32" if "fp32" in built else built[0])
        if precision not in built:
            raise BuildError(f"{engines_dir}: --dtype {precision} asked, but its ONNX exports are {', '.join(built)}; "
                             f"rebuild with `personalive-trt build --backend onnxruntime --precision {precision} "
                             f"--engines {engines_dir}` or run with --dtype {built[0]}")
        return Networks.from_onnx(onnx_paths(engines_dir, shapes, precision), shapes, DTYPES[precision], device)
    if backend is Backend.TENSORRT:
        base = record.base_precision  # what engine_paths builds every network not overridden in
        precision = wanted or base
        if precision != base:
            raise BuildError(f"{engines_dir}: --dtype {precision} asked, but its TensorRT engines were built {base}; "
                             f"rebuild with `personalive-trt build --precision {precision} --engines {engines_dir}` "
                             f"or run with --dtype {base}")
        paths = engine_paths(record, engines_dir, [shapes], record.overrides, allow_build=False)
        return Networks.from_engines(paths, shapes, DTYPES[precision], device)
    raise ValueError(f"--backend {backend!r}: expected torch, onnxruntime or tensorrt")


__all__ = ["BUILD_FILE", "BuildError", "BuildRecord", "DEFAULT_ENGINES_DIR", "engine_paths", "load_networks",
           "onnx_paths", "read_build", "require_onnx", "weights_fingerprint", "write_build"]
