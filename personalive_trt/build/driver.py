"""`personalive-trt build`: export every network to ONNX, verify it, and build TensorRT engines.

It fills an engines folder (layout and reading it back: :mod:`personalive_trt.engines.folder`); before an
export starts, its peak memory is estimated (:mod:`.memory`) and a build that would not fit is refused.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from personalive_trt.build import memory as buildmem
from personalive_trt.choices import Backend, Decoder
from personalive_trt.config import StreamConfig
from personalive_trt.engines.folder import (
    BUILD_FILE,
    BuildError,
    BuildRecord,
    engine_paths,
    read_build,
    require_onnx,
    weights_fingerprint,
    write_build,
)
from personalive_trt.engines.known_answers import forget_answers, read_record, record_build_answers
from personalive_trt.engines.networks import specs_by_role
from personalive_trt.models.weights import SYNTHETIC_NOTICE, load_models, parse_weights_spec, require_taesd
from personalive_trt.shapes import StreamShapes

# precision each backend runs by default: TensorRT fp16 (from the fp16 ONNX: TRT 11 is strongly typed);
# ONNX Runtime's CPU provider has no fp16 arithmetic kernels, so fp32.
DEFAULT_PRECISION = {Backend.ONNXRUNTIME: "fp32", Backend.TENSORRT: "fp16"}


def _export_is_current(onnx_dir: Path, names: Sequence[str], precisions: Sequence[str], fingerprint: str) -> bool:
    """Every export is there, and the manifest says it was exported from these weights (a manifest
    of other weights, or one written before manifests carried the fingerprint, is not current:
    build.json alone cannot tell, since a build may stop between the export and build.json)."""
    from personalive_trt.export.onnx_export import MANIFEST, read_manifest

    if not (onnx_dir / MANIFEST).is_file():
        return False
    manifest = read_manifest(onnx_dir)
    if manifest.get("weights_fingerprint") != fingerprint:
        return False
    entries = manifest.get("networks", {})
    return all(
        precision in entries.get(name, {}).get("precisions", {})
        and (onnx_dir / entries[name]["precisions"][precision]["onnx"]).is_file()
        for name in names for precision in precisions
    )


def build(
    weights: str,
    engines_dir: Path,
    backend: str = "tensorrt",
    windows: Sequence[int] = (4,),
    resolution: int = StreamConfig.resolution,
    precision: str | None = None,
    precision_overrides: Mapping[str, str] | None = None,
    force: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
    vae: str = "full",
    memory_check: bool = True,
    max_keyframes: int | None = None,
) -> BuildRecord:
    """Export (and for TensorRT, build) everything ``run --backend <backend>`` needs.

    Before an export starts, its estimated peak host memory is compared with what this process may use
    (:mod:`personalive_trt.build.memory`); a build that would not fit raises :class:`BuildError` in one line
    and writes nothing (not even ``engines_dir``). ``memory_check=False`` skips that check.

    ``max_keyframes`` (``--max-keyframes K``): the history banks the engines hold, the bank-length profile's max
    1 + K (default: the online loop's 3); an offline run (``run --mode offline``) needs up to its
    ``--keyframe-limit``. Recorded in build.json's configs (``bank_capacity``) only when it differs from 3.
    """
    if backend not in DEFAULT_PRECISION:
        raise ValueError(f"--backend {backend!r}: expected one of {sorted(DEFAULT_PRECISION)}")
    backend = Backend(backend)
    require_onnx()
    if backend is Backend.TENSORRT:
        from personalive_trt.engines import require_tensorrt

        require_tensorrt()  # fail before minutes of export
    precision = precision or DEFAULT_PRECISION[backend]
    overrides = dict(precision_overrides or {})
    precisions = sorted({precision, *overrides.values()})
    engines_dir = Path(engines_dir)
    started = time.perf_counter()
    vae = StreamConfig(vae=vae).vae  # a Decoder from here on (a bad value: StreamConfig's one-line error)
    if max_keyframes is not None and (not isinstance(max_keyframes, int) or max_keyframes < 0):
        raise ValueError(f"--max-keyframes {max_keyframes!r}: expected 0 or more history banks")
    configs = [StreamConfig(window=w, resolution=resolution, vae=vae, bank_capacity=max_keyframes) for w in windows]
    kind, location = parse_weights_spec(weights)
    if kind == "synthetic":
        log(SYNTHETIC_NOTICE.format(spec=weights))  # the notice `run` prints, also for --weights auto
    if vae is Decoder.TINY and kind == "dir":
        require_taesd(Path(location))  # one line, before minutes of export
    fingerprint = weights_fingerprint(weights, seed, vae=vae)

    previous = None if force else _previous_build(engines_dir, vae, fingerprint)
    onnx_dir = engines_dir / "onnx"
    unet_config = previous.unet_config if previous else None
    meta = None
    if unet_config is None:  # the UNet's config without loading its weights
        meta = buildmem.meta_models(weights, vae)
        unet_config = dict(meta.denoising_unet.config)
    shapes_list = [StreamShapes.from_unet_config(c, unet_config) for c in configs]
    names = sorted({spec.name for s in shapes_list for spec in specs_by_role(s).values()})
    export = force or not _export_is_current(onnx_dir, names, precisions, fingerprint)
    if export and memory_check:
        _check_memory(meta or buildmem.meta_models(weights, vae), shapes_list, names, precisions, log)
    del meta
    if export:
        try:
            log(buildmem.return_freed_memory())  # before loading: the state dicts' copies are given back too
        except buildmem.BuildMemoryError as exc:
            raise BuildError(str(exc)) from exc
    engines_dir.mkdir(parents=True, exist_ok=True)
    if export:
        forget_answers(engines_dir)  # they belong to the exports being replaced
        _export(weights, seed, vae, configs, shapes_list, engines_dir, precisions, names, fingerprint, log)
    else:
        _report_current_exports(onnx_dir, names, precisions, log)
        if read_record(engines_dir) is None:
            log(f"{engines_dir}: no known answers stored (exported before build stored them): the self-check "
                "cannot check these engines; build --force to store them")

    record = BuildRecord(weights=str(weights), fingerprint=fingerprint, unet_config=_plain(unet_config),
                         configs=[c.as_dict() for c in configs], precisions=precisions, backend=backend,
                         overrides=overrides, vae=vae, precision=precision)
    if backend is Backend.TENSORRT:
        engine_paths(record, engines_dir, shapes_list, overrides, allow_build=True, log=log)
    record.seconds = round(time.perf_counter() - started, 1)
    write_build(engines_dir, record)
    log(f"build done in {record.seconds:.1f} s: {engines_dir}")
    return record


def _previous_build(engines_dir: Path, vae: Decoder, fingerprint: str) -> BuildRecord | None:
    """The record of what ``engines_dir`` holds (None: nothing yet), refused when it was built for another decoder
    or other weights: a build never mixes two sets of engines in one folder."""
    if not (engines_dir / BUILD_FILE).is_file():
        return None
    previous = read_build(engines_dir)
    if previous.vae != vae:
        raise BuildError(f"{engines_dir} holds engines built for --vae {previous.vae}; use another --engines "
                         f"folder for --vae {vae}, or --force to replace them")
    if previous.fingerprint != fingerprint:
        raise BuildError(f"{engines_dir} holds engines of other weights ({previous.weights}); "
                         "use another --engines folder or --force to replace them")
    return previous


def _check_memory(meta, shapes_list: Sequence[StreamShapes], names: Sequence[str], precisions: Sequence[str],
                  log: Callable[[str], None]) -> None:
    """Refuse (one line) an export whose estimated peak exceeds what this process may use; log the margin."""
    estimate = buildmem.estimate(meta, shapes_list, names, precisions)
    try:
        limit = buildmem.memory_limit()
        buildmem.check_fits(estimate, limit)
    except buildmem.BuildMemoryError as exc:
        raise BuildError(str(exc)) from exc
    log(f"estimated peak memory {estimate.peak / buildmem.GIB:.1f} GiB (while {estimate.largest}); this "
        f"process may use {limit.bytes / buildmem.GIB:.1f} GiB ({limit.source})")


def _export(weights: str, seed: int, vae: Decoder, configs: Sequence[StreamConfig],
            shapes_list: Sequence[StreamShapes], engines_dir: Path, precisions: Sequence[str], names: Sequence[str],
            fingerprint: str, log: Callable[[str], None]) -> None:
    """Load the weights, store the known answers of the self-check (:mod:`personalive_trt.engines.known_answers`:
    one forward per network at its smallest shapes, before the export releases any module) and export (and
    verify) every network; the models are dropped when this returns, before any engine is built."""
    from personalive_trt.export.onnx_export import export_all

    models = load_models(weights, seed=seed, vae=vae)
    export_all(models, shapes_list, engines_dir / "onnx", precisions=precisions, networks=names,
               fingerprint=fingerprint, release_components=True, log=log,
               on_loaded=lambda loaded: record_build_answers(loaded, configs, engines_dir))


def _report_current_exports(onnx_dir: Path, names: Sequence[str], precisions: Sequence[str],
                            log: Callable[[str], None]) -> None:
    from personalive_trt.export.onnx_export import measured_line, read_manifest

    log(f"ONNX exports in {onnx_dir} are up to date ({len(names)} networks, {', '.join(precisions)}); measured "
        "when exported:")
    entries = read_manifest(onnx_dir)["networks"]
    for name in names:
        for p in precisions:
            log(measured_line(name, entries[name]["precisions"][p]))


def _plain(config: Mapping) -> dict:
    return json.loads(json.dumps(dict(config), default=list))


__all__ = ["DEFAULT_PRECISION", "build"]
