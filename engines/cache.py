"""The engine cache: one folder, one engine per network, reused only when everything it was built from matches.

A TensorRT engine is only valid for the exact ONNX graph and weights, optimisation profile, precision,
TensorRT version and GPU it was built for, and loading a stale one either fails late or silently computes
something else. So each engine is stored together with an :class:`EngineKey` that records all of those,
in ``manifest.json``::

    engines/
      manifest.json                            # network -> {engine file, key fields, digest, size, build time}
      denoising_unet_w4-3f9a0c1d2e4b5a69.engine
      timing_cache.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.9.bin

Engine files are named after their key's digest and written atomically (temporary file + ``os.replace``);
the manifest is updated atomically after the engine is complete, and only then is the engine it replaced
deleted. An interrupted build therefore leaves the previous, still-valid state, never a half-written engine
the manifest points at.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("personalive_trt.engines")

MANIFEST = "manifest.json"
_DIGESTS = "onnx_digests.json"  # memo of ONNX hashes, keyed by path + size + mtime of every file
_LOCK = ".lock"
_CHUNK = 8 << 20


class EngineError(RuntimeError):
    """An engine could not be built, loaded or run; the message carries the backend's own words."""


class StaleEngineError(EngineError):
    """The cached engine does not match what was asked for, and building is switched off."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for: engines are specific to the device model and compute capability."""

    name: str
    capability: tuple[int, int]

    @classmethod
    def current(cls, device: int | str | None = None) -> "GpuInfo":
        """The current (or given) CUDA device, as torch sees it."""
        import torch

        if not torch.cuda.is_available():
            raise EngineError("TensorRT engines are built for a CUDA GPU, and torch sees none "
                              "(torch.cuda.is_available() is False)")
        index = None if device is None else torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        return cls(torch.cuda.get_device_name(index), (major, minor))

    @classmethod
    def target(cls, trt: Any) -> "GpuInfo":
        """What engines of this ``tensorrt`` module are built for: the current CUDA device, or the host for a
        module that declares ``EXECUTES_ON_HOST`` (the tests' stand-in, whose engines run on the CPU)."""
        if getattr(trt, "EXECUTES_ON_HOST", False):
            return cls("host (tensorrt stand-in)", (0, 0))
        return cls.current()

    @property
    def slug(self) -> str:
        """File-name-safe identity, e.g. ``nvidia-h100-80gb-hbm3.sm90``."""
        name = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{name}.sm{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys with equal :attr:`digest` build interchangeable engines.

    Args:
        network (`str`): the network (= engine) name, ``NetworkSpec.name``.
        onnx_sha256 (`str`): :func:`onnx_digest` of the ONNX file the engine is built from.
        profile (`Mapping[str, (min, opt, max)]`): the optimisation profile, ``NetworkSpec.profile()``.
        precision (`str`): ``"fp16"`` or ``"fp32"``.
        tensorrt_version (`str`): ``tensorrt.__version__`` of the builder.
        gpu (`GpuInfo`): the device built for.
        builder (`Mapping[str, Any]`): builder settings that change the engine (typing mode, workspace,
            optimisation level); JSON-serialisable values.
    """

    network: str
    onnx_sha256: str
    profile: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    precision: str
    tensorrt_version: str
    gpu: GpuInfo
    builder: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        """The key as plain JSON data (what the manifest records)."""
        return {
            "network": self.network,
            "onnx_sha256": self.onnx_sha256,
            "profile": {name: [list(s) for s in shapes] for name, shapes in self.profile.items()},
            "precision": self.precision,
            "tensorrt_version": self.tensorrt_version,
            "gpu": {"name": self.gpu.name, "compute_capability": f"{self.gpu.capability[0]}.{self.gpu.capability[1]}"},
            "builder": dict(sorted(self.builder.items())),
        }

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """``"field: recorded -> wanted"`` for every leaf field that differs from a manifest record."""
        return [f"{path}: {_short(old)} -> {_short(new)}" for path, old, new in _diff(recorded, self.fields())]


def _diff(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in sorted(set(old) | set(new), key=str):
            yield from _diff(old.get(name), new.get(name), f"{path}.{name}" if path else str(name))
    elif old != new:
        yield path, old, new


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:12] if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else text


# ---- files ---------------------------------------------------------------------------------------------

def atomic_write(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace`` it into place.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def external_data_files(onnx_path: Path) -> list[str]:
    """Locations (relative to the model's folder) of the external-data files an ONNX model uses."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except DecodeError as exc:
        raise EngineError(f"{onnx_path}: not a valid ONNX file ({exc})") from exc
    locations: set[str] = set()

    def visit_tensor(tensor: "onnx.TensorProto") -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")

    def visit_graph(graph: "onnx.GraphProto") -> None:
        for tensor in graph.initializer:
            visit_tensor(tensor)
        for sparse in graph.sparse_initializer:
            visit_tensor(sparse.values)
            visit_tensor(sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    visit_tensor(attr.t)
                for tensor in attr.tensors:
                    visit_tensor(tensor)
                if attr.HasField("g"):
                    visit_graph(attr.g)
                for sub in attr.graphs:
                    visit_graph(sub)

    visit_graph(model.graph)
    return sorted(locations)


def onnx_digest(onnx_path: Path) -> str:
    """sha256 over the ONNX file and, in name order, every external-data file it references."""
    return _digest(Path(onnx_path))[0]


def _digest(onnx_path: Path) -> tuple[str, list[str]]:
    h = hashlib.sha256()
    _hash_file(h, onnx_path)
    locations = external_data_files(onnx_path)
    for location in locations:
        data = onnx_path.parent / location
        if not data.is_file():
            raise FileNotFoundError(f"{onnx_path}: external data file {location!r} not found next to the model")
        h.update(b"\0external:" + location.encode() + b"\0")
        _hash_file(h, data)
    return h.hexdigest(), locations


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


# ---- the cache -----------------------------------------------------------------------------------------

class EngineCache:
    """Engines of one folder, looked up by :class:`EngineKey`.

    Args:
        folder (`str | Path`): the cache folder (created on first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    # -- manifest --
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict[str, dict[str, Any]]:
        """network name -> entry (``engine``, ``digest``, ``key``, ``bytes``, ``built``, ``build_seconds``)."""
        return self._read_json(self.manifest_path).get("engines", {})

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EngineError(f"{path}: unreadable ({exc}); delete it to rebuild") from exc
        if not isinstance(data, dict):
            raise EngineError(f"{path}: not a JSON object; delete it to rebuild")
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise manifest read-modify-write between processes building into the same folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: builds into one folder must not run concurrently
            yield
            return
        with open(self.folder / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- lookup --
    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.network}-{key.digest[:16]}.engine"

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key``, or ``None`` if there is none or it is stale (see :meth:`stale_reason`)."""
        return None if self.stale_reason(key) else self.engine_path(key)

    def stale_reason(self, key: EngineKey) -> str | None:
        """Why the cached engine of ``key.network`` cannot be used for ``key`` (``None`` when it can)."""
        try:
            entry = self.manifest().get(key.network)
        except EngineError as exc:
            return str(exc)
        if entry is None:
            return "no engine built yet"
        if entry.get("digest") != key.digest:
            changes = key.differences(entry.get("key", {}))
            return "built for different inputs: " + ("; ".join(changes) if changes else "key format changed")
        path = self.folder / entry.get("engine", "")
        if entry.get("engine") != self.engine_path(key).name or not path.is_file():
            return f"engine file {path.name} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"engine file {path.name} has {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        return None

    # -- store --
    def store(self, key: EngineKey, engine: bytes | bytearray | memoryview, *, build_seconds: float) -> Path:
        """Write ``engine`` for ``key`` atomically, record it in the manifest and drop the engine it replaces."""
        path = self.engine_path(key)
        data = memoryview(engine).cast("B")
        atomic_write(path, data)
        with self._locked():
            try:
                manifest = self._read_json(self.manifest_path)
            except EngineError as exc:  # the engines it listed are unusable anyway: start a new manifest
                log.warning("%s; writing a new one", exc)
                manifest = {}
            engines = manifest.setdefault("engines", {})
            previous = engines.get(key.network, {}).get("engine")
            engines[key.network] = {
                "engine": path.name,
                "digest": key.digest,
                "key": key.fields(),
                "bytes": data.nbytes,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(build_seconds, 3),
            }
            manifest["format"] = 1
            atomic_write(self.manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        if previous and previous != path.name:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / previous).unlink()
        return path

    # -- timing cache --
    def timing_cache_path(self, gpu: GpuInfo, tensorrt_version: str) -> Path:
        """One timing cache per GPU model and TensorRT version (TensorRT rejects caches from other ones)."""
        return self.folder / f"timing_cache.{gpu.slug}.trt{tensorrt_version}.bin"

    # -- ONNX hashes --
    def onnx_digest(self, onnx_path: str | Path) -> str:
        """:func:`onnx_digest`, memoised in the folder by path, size and mtime of the model and its data files.

        Hashing a multi-GB UNet export takes seconds; the memo makes an up-to-date check cost a few ``stat``s.
        """
        onnx_path = Path(onnx_path).resolve()
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: ONNX file not found")
        entry = self._digest_memo().get(str(onnx_path))
        if entry and entry.get("stat") == _stat(onnx_path) and all(
                (onnx_path.parent / name).is_file() and _stat(onnx_path.parent / name) == st
                for name, st in entry.get("external", {}).items()):
            return entry["sha256"]
        digest, locations = _digest(onnx_path)
        external = {name: _stat(onnx_path.parent / name) for name in locations}
        try:
            with self._locked():
                memo = self._digest_memo()
                memo[str(onnx_path)] = {"stat": _stat(onnx_path), "external": external, "sha256": digest}
                atomic_write(self.folder / _DIGESTS, (json.dumps(memo, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:  # a read-only engines folder still serves its engines; only the memo is lost
            log.debug("ONNX digest memo not written: %s", exc)
        return digest

    def _digest_memo(self) -> dict[str, Any]:
        try:  # only a memo: an unreadable one is recomputed, never trusted
            return self._read_json(self.folder / _DIGESTS)
        except EngineError:
            return {}
