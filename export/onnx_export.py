"""ONNX export of the PersonaLive networks, verified in ONNX Runtime against torch, with a manifest.

For each :class:`~personalive_trt.export.interface.NetworkSpec`:

1. the torch FP32 reference outputs are computed on the spec's sample inputs at two shapes
   (:func:`~personalive_trt.export.specs.verification_cases`);
2. ``spec.wrap(module)`` is traced once, in fp32, with the TorchScript exporter (``dynamo=False``,
   opset >= 17, symbolic axes from ``TensorSpec.dynamic_axes``);
3. the fp32 file is that graph; the fp16 file is its strongly typed float16 conversion with the
   spec's ``keep_fp32`` islands (:mod:`personalive_trt.export.fp16`);
4. every file is run in ONNX Runtime (CPU) on both cases and compared with the torch FP32 outputs;
   an fp16 file is also checked through its fp16-storage emulation (the CPU provider computes most
   fp16 ops in float32, see :mod:`~personalive_trt.export.fp16`). ONNX Runtime runs the file's
   fused-attention copy (``model.fused.onnx``, :mod:`~personalive_trt.export.attention`): the plain
   attention TensorRT fuses would make ONNX Runtime materialise every score matrix. A metric beyond
   the spec's :class:`~personalive_trt.export.interface.Tolerance` raises :class:`ExportError`;
5. only when every requested precision has passed are the exports moved into place (``out_dir/<name>.<precision>/model.onnx``, plus
   ``model.onnx.data`` when the weights exceed ``external_data_bytes``); a failed export leaves
   nothing behind and an earlier export of the same network untouched.

Memory: weights are streamed tensor by tensor from the traced file into the final file(s), so a
6.7 GB UNet is not held twice by this module (the tracer and ONNX Runtime hold their own copies);
one ONNX Runtime session exists at a time. The peak RSS and the time of each network's export and
verification are measured (:class:`~personalive_trt.export.memory.PeakRss`) and written into its manifest record (``memory``,
``export_seconds``, ``verify_seconds``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from personalive_trt.config import StreamConfig
from personalive_trt.shapes import StreamShapes

from . import fp16 as fp16_graph
from .attention import fuse_attention
from .memory import PeakRss, return_freed_memory
from .interface import ExportError, NetworkSpec
from .specs import merge_specs, network_specs, sample_inputs, verification_cases

DEFAULT_OPSET = 17
PRECISIONS = ("fp32", "fp16")
# Above this many bytes of weights the ONNX file keeps them in `model.onnx.data` (protobuf's 2 GiB cap).
EXTERNAL_DATA_BYTES = 1_800_000_000
MODEL_FILE = "model.onnx"
# The verification (and ONNX Runtime backend) copy: the same graph with fused attention, reading the
# same weights (see :mod:`personalive_trt.export.attention`). TensorRT parses MODEL_FILE.
FUSED_FILE = "model.fused.onnx"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for name in ("diffusers", "transformers"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


# ---- writing ONNX files ------------------------------------------------------------------------------------
def write_model(model, values: Callable, path: Path, external: bool) -> list[Path]:
    """Write ``model`` (initializer placeholders) to ``path``, filling each initializer from ``values``.

    With ``external`` the weights go to ``<path>.data`` one tensor at a time (64-byte aligned);
    without, into ``path`` itself, also one tensor at a time: the graph is written without its
    initializers, then each initializer as a one-tensor ``ModelProto`` -- protobuf parses concatenated
    messages as one, appending repeated fields in order. Either way at most one weight is materialised
    here at a time (building the whole proto held ~4 copies of the weights; issue 11).
    """
    import onnx
    from onnx import numpy_helper

    path.parent.mkdir(parents=True, exist_ok=True)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = list(out.graph.initializer)
    del out.graph.initializer[:]
    files = [path]
    if external:
        data_path = path.with_name(path.name + ".data")
        files.append(data_path)
        with open(data_path, "wb") as data:
            for tensor in tensors:
                array = np.ascontiguousarray(values(tensor))
                offset = data.tell()
                pad = (-offset) % 64
                data.write(b"\0" * pad)
                offset += pad
                data.write(array.tobytes())
                stored = onnx.TensorProto()
                stored.name, stored.data_type = tensor.name, tensor.data_type
                stored.dims.extend(tensor.dims)
                stored.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)),
                                   ("length", str(array.nbytes))):
                    entry = stored.external_data.add()
                    entry.key, entry.value = key, value
                out.graph.initializer.append(stored)
    with open(path, "wb") as f:
        f.write(out.SerializeToString())
        for tensor in tensors if not external else ():
            piece = onnx.ModelProto()
            piece.graph.initializer.append(numpy_helper.from_array(np.asarray(values(tensor)), tensor.name))
            f.write(piece.SerializeToString())
    return files


def _weights_bytes(model, dtypes: Callable[[object], np.dtype]) -> int:
    return sum(int(np.prod(t.dims, dtype=np.int64)) * dtypes(t).itemsize for t in model.graph.initializer)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def dead_nodes(model) -> list[str]:
    """Nodes that contribute to no graph output (e.g. work after the reference UNet's last bank)."""
    needed = {value.name for value in model.graph.output}
    alive = set()
    for index in range(len(model.graph.node) - 1, -1, -1):
        node = model.graph.node[index]
        if any(o in needed for o in node.output):
            alive.add(index)
            needed.update(name for name in node.input if name)
    return [node.name for i, node in enumerate(model.graph.node) if i not in alive]


# ---- metrics -----------------------------------------------------------------------------------------------
def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """rel = max |a - e| / max |e|, max_abs, and PSNR (dB, for values in [0, 1])."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ExportError(f"output shape {a.shape} != torch {e.shape}")
    if not np.isfinite(a).all():
        return {"rel": float("inf"), "max_abs": float("inf"), "psnr": float("-inf"), "finite": False}
    diff = np.abs(a - e)
    scale = max(float(np.abs(e).max()), 1e-12)
    mse = float((diff ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    return {"rel": float(diff.max() / scale), "max_abs": float(diff.max()), "psnr": psnr, "finite": True}


# ---- running ---------------------------------------------------------------------------------------------
def _session(path: Path, optimization: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    # No arena: a verification session runs each shape once, and the arena would keep the largest
    # activations of one case while the next allocates others (small UNet at 256²: 3.6 -> 2.6 GiB peak).
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[optimization]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, spec: NetworkSpec, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    feed = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)}
    return session.run(spec.output_names, feed)


@torch.no_grad()
def torch_reference(spec: NetworkSpec, wrapper: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    outputs = wrapper(*inputs)
    if len(outputs) != len(spec.outputs):
        raise ExportError(f"{spec.name}: wrapper returned {len(outputs)} outputs, the spec has {len(spec.outputs)}")
    for tensor, value in zip(spec.outputs, outputs):
        if not tensor.accepts(tuple(value.shape)):
            raise ExportError(f"{spec.name}: output {tensor.name} has shape {tuple(value.shape)}, outside the spec's "
                              f"{tensor.min_shape}..{tensor.max_shape}")
    return [value.float().numpy() for value in outputs]


# ---- export ------------------------------------------------------------------------------------------------
def _component_prefix(wrapper: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in wrapper.named_modules():
        if candidate is module:
            return name
    raise ExportError("the spec's wrapper does not contain the component module")


def _island_lookup(spec: NetworkSpec, wrapper: torch.nn.Module, module: torch.nn.Module) -> Callable[[str], str | None]:
    named = list(wrapper.named_modules())
    found = fp16_graph.island_modules(named, _component_prefix(wrapper, module), spec.keep_fp32)
    empty = [pattern for pattern, names in found.items() if not names]
    if empty:
        raise ExportError(f"{spec.name}: keep_fp32 pattern(s) {empty} match no module of {spec.component}")
    owner = {name: pattern for pattern, names in found.items() for name in names}
    scopes = fp16_graph.ModuleScopes(name for name, _ in named)

    def lookup(node_name: str) -> str | None:
        module_name = scopes.module_of(node_name)
        while module_name:
            if module_name in owner:
                return owner[module_name]
            module_name = module_name.rpartition(".")[0]
        return None

    return lookup


def _trace(spec: NetworkSpec, wrapper: torch.nn.Module, inputs: Sequence[torch.Tensor], path: Path, opset: int) -> None:
    dynamic_axes = {t.name: t.dynamic_axes for t in (*spec.inputs, *spec.outputs) if t.dynamic_axes}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks (intended constants)
        torch.onnx.export(wrapper, tuple(inputs), str(path), dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=dynamic_axes or None, do_constant_folding=True)


class _Candidate:
    """One precision of one network, written to a private folder until it has passed verification."""

    def __init__(self, spec: NetworkSpec, precision: str, folder: Path) -> None:
        self.spec, self.precision, self.folder = spec, precision, folder
        self.files: list[Path] = []
        self.record: dict = {}


def _io_types(spec: NetworkSpec, precision: str) -> dict[str, int]:
    from onnx import TensorProto

    return {t.name: TensorProto.FLOAT if t.export_dtype(precision) == torch.float32 else TensorProto.FLOAT16
            for t in (*spec.inputs, *spec.outputs) if t.dtype.is_floating_point}


def _build(candidate: _Candidate, traced, store, lookup, external_data_bytes: int) -> tuple[object, Callable]:
    """Write the candidate's ONNX file(s); returns (model without data, initializer values)."""
    import onnx

    spec, precision = candidate.spec, candidate.precision
    if precision == "fp32":
        model = fp16_graph.without_data(traced)
        values = lambda tensor: store.array(tensor.name)  # noqa: E731
        dtype_of = lambda tensor: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))  # noqa: E731
    else:
        try:
            converted = fp16_graph.convert_to_fp16(traced, _io_types(spec, precision), lookup)
        except fp16_graph.ConversionError as exc:
            raise ExportError(f"{spec.name} [{precision}]: {exc}") from exc
        model, values = converted.model, converted.values(store)
        dtype_of = lambda tensor: converted.initializers[tensor.name][1]  # noqa: E731
        candidate.record["keep_fp32"] = [
            {"pattern": pattern, "reason": reason, "nodes": len(converted.island_nodes.get(pattern, []))}
            for pattern, reason in spec.keep_fp32]
        candidate.record["float32_compute_nodes"] = len(fp16_graph.float32_compute_nodes(model))
        candidate.record["inserted_casts"] = converted.inserted_casts
        candidate.record["onnxruntime_cpu_fp32_ops"] = fp16_graph.ort_fp32_fallback_ops(model)
    external = _weights_bytes(model, dtype_of) > external_data_bytes
    try:
        candidate.files = write_model(model, values, candidate.folder / MODEL_FILE, external)
    except fp16_graph.ConversionError as exc:
        raise ExportError(f"{spec.name} [{precision}]: {exc}") from exc
    candidate.record["external_data"] = external
    return model, values


def _fused_copy(candidate: _Candidate, model, values, target: Path) -> int:
    """Write ``target``: the candidate's graph with fused attention; returns the attentions fused.

    A large export's copy is its ``model.onnx`` read without external data, so it keeps pointing at the same
    ``model.onnx.data`` (it must sit in the same folder). A small export's copy embeds its own weights,
    written from ``model`` (initializer placeholders) and ``values`` one tensor at a time like
    ``model.onnx`` itself, rather than by loading and re-serialising the whole file (three copies of the
    weights at once).
    """
    import onnx

    if candidate.record["external_data"]:
        fused, count = fuse_attention(onnx.load(str(candidate.folder / MODEL_FILE), load_external_data=False))
        with open(target, "wb") as f:
            f.write(fused.SerializeToString())
        return count
    fused, count = fuse_attention(model)
    write_model(fused, values, target, external=False)
    return count


def _verify(candidate: _Candidate, model, values, cases, references, scratch: Path,
            external_data_bytes: int) -> None:
    """Run the written file's fused-attention copy (and, for fp16, its storage emulation) on every case;
    raise on a miss.

    ONNX Runtime runs ``model.fused.onnx`` (kept beside ``model.onnx`` for the ONNX Runtime backend),
    not the plain graph: the plain attention would materialise every score matrix (tens of GB at 512²,
    see :mod:`~personalive_trt.export.attention`). One session exists at a time and is freed before
    the next.
    """
    spec, precision = candidate.spec, candidate.precision
    tolerance = spec.tolerance(precision)
    fused_path = candidate.folder / FUSED_FILE
    fused = _fused_copy(candidate, model, values, fused_path)
    candidate.files.append(fused_path)
    runs = {"onnxruntime": fused_path}
    emulated_fused = None
    if precision == "fp16":
        # Fuse first, then emulate: the emulation's rounding casts sit between the attention's MatMuls and its
        # Softmax, so fusing the emulated graph matched no block and its session held every score matrix
        # (32 GiB each for the released UNet at 512²). The fused node computes from the fp16-rounded q/k/v in
        # float32 and its result is rounded to fp16, as the ONNX Runtime backend's fused fp16 graph does.
        plain_types = fp16_graph.elem_types(model)
        emulated, emulated_fused = fuse_attention(model)
        emulated, dtypes = fp16_graph.emulate_fp16_storage(emulated, plain_types)
        if emulated_fused != fused:
            raise ExportError(f"{spec.name} [{precision}]: the fp16-storage emulation fused {emulated_fused} "
                              f"attention block(s), {FUSED_FILE} {fused}: the emulation would hold the others' "
                              "score matrices")
        emulated_values = lambda tensor: values(tensor).astype(dtypes[tensor.name])  # noqa: E731
        size = _weights_bytes(emulated, lambda tensor: dtypes[tensor.name])
        write_model(emulated, emulated_values, scratch / "emulate" / MODEL_FILE, size > external_data_bytes)
        runs["fp16_emulation"] = scratch / "emulate" / MODEL_FILE
    results = []
    failures = []
    for run_name, path in runs.items():
        session = _session(path, "all" if run_name == "onnxruntime" else "basic")
        for (label, which, seed), reference in zip(cases, references):
            inputs = sample_inputs(spec, which, precision, seed)
            outputs = _run(session, spec, inputs)
            per_output = {}
            for tensor, actual, expected in zip(spec.outputs, outputs, reference):
                metrics = compare(actual, expected)
                per_output[tensor.name] = metrics
                if not tolerance.passes(metrics[tolerance.metric]):
                    failures.append(f"{run_name}/{label}/{tensor.name}: {tolerance.metric} = "
                                    f"{metrics[tolerance.metric]:.4g} (limit {tolerance.limit:g})")
            worst = max(per_output.values(), key=lambda m: m["rel"])
            results.append({"run": run_name, "case": label, "shapes": {t.name: list(x.shape) for t, x in zip(spec.inputs, inputs)},
                            "outputs": per_output, "worst_rel": worst["rel"],
                            "worst_psnr": min(m["psnr"] for m in per_output.values())})
            del outputs, inputs
        del session
        gc.collect()
    candidate.record["onnx_fused"] = f"{spec.name}.{precision}/{FUSED_FILE}"
    candidate.record["verification"] = {"reference": "torch fp32 module on the same (fp16-representable) inputs",
                                        "graph": f"{FUSED_FILE}: {MODEL_FILE} with {fused} attention block(s) as "
                                                 "com.microsoft.MultiHeadAttention, every other node the same",
                                        "fused_attention": fused,
                                        **({"emulation_fused_attention": emulated_fused}
                                           if emulated_fused is not None else {}),
                                        "tolerance": tolerance.describe(), "cases": results,
                                        "passed": not failures}
    if failures:
        raise ExportError(f"{spec.name} [{precision}] failed verification: " + "; ".join(failures[:4]))


def _place(candidate: _Candidate, out_dir: Path) -> Path:
    """Move a verified candidate folder to ``out_dir/<name>.<precision>`` (replacing an older one)."""
    final = out_dir / f"{candidate.spec.name}.{candidate.precision}"
    old = None
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, old)
    os.replace(candidate.folder, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def export_precisions(spec: NetworkSpec, models, out_dir: str | Path, precisions: Sequence[str] = PRECISIONS,
                      verify: bool = True, *, opset: int = DEFAULT_OPSET,
                      external_data_bytes: int = EXTERNAL_DATA_BYTES, release: bool = False) -> dict[str, dict]:
    """Export one network in several precisions from one trace; returns precision -> manifest record.

    ``release``: once the torch outputs are computed and the graph traced, the component is dropped from
    ``models`` (``models.<component> = None``), so that the ONNX files are written and verified without
    the torch module resident (6.3 GiB for the released denoising UNet). For a caller that exports this
    component's last network and needs it no longer (``export_all(release_components=True)``).
    """
    if opset < 17:
        raise ExportError(f"opset {opset} < 17: LayerNormalization and the attention exports need opset >= 17")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {unknown}; expected some of {PRECISIONS}")
    module = getattr(models, spec.component)
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes - {torch.float32}:
        raise ExportError(f"{spec.name}: export needs the fp32 {spec.component} (got {sorted(map(str, dtypes))}); "
                          "the fp16 graph is derived from the fp32 trace")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = spec.wrap(module).eval()
    rss = PeakRss()
    reference = _reference_outputs(spec, wrapper, verify, rss)

    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=out_dir))
    records = {}
    try:
        traced = _trace_once(spec, wrapper, module, precisions, scratch, opset, rss)
        if release:  # the weights are in the trace's files now, the references computed
            setattr(models, spec.component, None)
            del module, wrapper
            gc.collect()
        candidates = [_export_candidate(spec, precision, scratch, traced, reference, verify, opset,
                                        external_data_bytes, rss) for precision in precisions]
        # Everything passed: move into place.
        for candidate in candidates:
            _place(candidate, out_dir)
            records[candidate.precision] = candidate.record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return records


@dataclasses.dataclass
class _Reference:
    """The torch fp32 outputs every precision is verified against, and what computing them cost."""

    cases: list
    outputs: list
    seconds: float
    peak: int


@dataclasses.dataclass
class _Traced:
    """The one fp32 trace every precision is derived from, and what tracing cost."""

    model: object  # onnx.ModelProto, initializers external
    store: object  # fp16_graph.TensorStore over the trace's files
    lookup: Callable | None  # node -> keep_fp32 island (fp16 only)
    seconds: float
    peak: int
    dead_nodes: int


def _reference_outputs(spec: NetworkSpec, wrapper: torch.nn.Module, verify: bool, rss: PeakRss) -> _Reference:
    cases = verification_cases(spec)
    started = time.perf_counter()
    outputs = [torch_reference(spec, wrapper, sample_inputs(spec, which, "fp32", seed))
               for _, which, seed in cases] if verify else []
    return _Reference(cases, outputs, time.perf_counter() - started, rss.peak())


def _trace_once(spec: NetworkSpec, wrapper: torch.nn.Module, module: torch.nn.Module, precisions: Sequence[str],
                scratch: Path, opset: int, rss: PeakRss) -> _Traced:
    import onnx

    rss.reset()
    started = time.perf_counter()
    trace_path = scratch / "trace" / MODEL_FILE
    try:
        _trace(spec, wrapper, sample_inputs(spec, "opt", "fp32", 0), trace_path, opset)
    except Exception as exc:  # noqa: BLE001 -- any tracer/exporter failure is an export failure
        raise ExportError(f"{spec.name}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    traced = onnx.load(str(trace_path), load_external_data=False)
    store = fp16_graph.TensorStore(traced, trace_path.parent)
    lookup = _island_lookup(spec, wrapper, module) if "fp16" in precisions else None
    return _Traced(traced, store, lookup, time.perf_counter() - started, rss.peak(), len(dead_nodes(traced)))


def _export_candidate(spec: NetworkSpec, precision: str, scratch: Path, traced: _Traced, reference: _Reference,
                      verify: bool, opset: int, external_data_bytes: int, rss: PeakRss) -> _Candidate:
    """One precision written, checked and verified in ``scratch`` (not yet in place), with its manifest record."""
    import onnx

    candidate = _Candidate(spec, precision, scratch / f"{spec.name}.{precision}")
    rss.reset()
    started = time.perf_counter()
    model, values = _build(candidate, traced.model, traced.store, traced.lookup, external_data_bytes)
    onnx.checker.check_model(str(candidate.folder / MODEL_FILE), full_check=False)
    export_seconds = time.perf_counter() - started + traced.seconds
    export_peak = max(rss.peak(), traced.peak)
    rss.reset()
    started = time.perf_counter()
    if verify:
        _verify(candidate, model, values, reference.cases, reference.outputs, scratch / precision, external_data_bytes)
    else:
        candidate.record["verification"] = {"passed": None, "skipped": True}
    verify_peak = max(rss.peak(), reference.peak) if verify else None
    candidate.record.update(
        network=spec.name, component=spec.component, precision=precision, opset=opset,
        onnx=f"{spec.name}.{precision}/{MODEL_FILE}",
        files={f"{spec.name}.{precision}/{p.name}": sha256(p) for p in candidate.files},
        bytes=sum(p.stat().st_size for p in candidate.files),
        sha256=sha256(candidate.folder / MODEL_FILE),
        spec=spec.describe(precision), dead_nodes=traced.dead_nodes,
        export_seconds=round(export_seconds, 3),
        verify_seconds=round(time.perf_counter() - started + (reference.seconds if verify else 0), 3),
        verified=verify, versions=versions(),
        # Peak RSS of this process (bytes): export = trace (shared by the precisions) + this
        # precision's conversion and write; verify = torch reference outputs or the ONNX
        # Runtime sessions of this precision, whichever is higher. See PeakRss.
        memory={"export_peak_rss_bytes": export_peak, "verify_peak_rss_bytes": verify_peak,
                "method": rss.method},
    )
    return candidate


def export_network(spec: NetworkSpec, models, out_dir: str | Path, precision: str = "fp32", verify: bool = True,
                   *, opset: int = DEFAULT_OPSET, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> dict:
    """Export and verify one network in one precision; returns its manifest record.

    Raises :class:`ExportError` (naming network, precision and metric) when the export or its
    verification fails; nothing is left in ``out_dir`` then.
    """
    return export_precisions(spec, models, out_dir, (precision,), verify, opset=opset,
                             external_data_bytes=external_data_bytes)[precision]


def all_specs(shapes: StreamShapes | Iterable[StreamShapes]) -> dict[str, NetworkSpec]:
    """Specs of one configuration, or the union over several (one denoising UNet per window)."""
    if isinstance(shapes, StreamShapes):
        return network_specs(shapes)
    return merge_specs(network_specs(s) for s in shapes)


def export_all(models, shapes: StreamShapes | int | Iterable[StreamShapes | int], out_dir: str | Path,
               precisions: Sequence[str] = PRECISIONS, networks: Iterable[str] | None = None, verify: bool = True,
               *, opset: int = DEFAULT_OPSET, external_data_bytes: int = EXTERNAL_DATA_BYTES,
               fingerprint: str | None = None, release_components: bool = False,
               log: Callable[[str], None] | None = None, on_loaded: Callable[[object], None] | None = None) -> dict:
    """Export every network (or ``networks``) of one or several configurations; writes ``manifest.json``.

    ``shapes``: a :class:`StreamShapes`, a window size (default :class:`StreamConfig` otherwise), or a
    sequence of them (one denoising UNet per window; shared networks cover every window's range).
    An existing manifest in ``out_dir`` is updated: entries of networks exported now are replaced,
    the others kept -- unless it records other weights: ``fingerprint`` (see
    :func:`personalive_trt.engines.folder.weights_fingerprint`) is written into the manifest, and a manifest
    with another (or no) fingerprint is started afresh, so one manifest never mixes exports of two
    sets of weights. Returns the manifest.

    ``release_components`` (for a caller that loaded ``models`` only for this export, as ``build``
    does): networks are exported smallest component first, and each component is dropped from
    ``models`` once its last network is traced (before that network's files are written and verified),
    so the largest (the denoising UNet, 6.7 GB at the released size) is exported with little else
    resident and verified without itself; and glibc returns freed blocks to the system
    (:func:`personalive_trt.export.memory.return_freed_memory`).

    ``on_loaded(models)`` runs once, after the arguments are checked and before the first network is exported,
    while every component is still loaded (``build`` records the engines' known answers there).
    """
    out_dir = Path(out_dir)
    items = [shapes] if isinstance(shapes, (StreamShapes, int)) else list(shapes)
    shape_list = [item if isinstance(item, StreamShapes) else
                  StreamShapes.from_unet_config(StreamConfig(window=int(item)), models.denoising_unet.config)
                  for item in items]
    specs = all_specs(shape_list)
    names = list(specs) if networks is None else list(networks)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ExportError(f"unknown network(s) {unknown}; expected some of {list(specs)}")
    if release_components:
        names = export_order(models, specs, names)
    manifest = read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else {}
    if manifest.get("weights_fingerprint") != fingerprint:
        manifest = {}  # exports of other weights: none of them may be reused
    entries = manifest.get("networks", {})
    if on_loaded is not None:
        on_loaded(models)
    if release_components:
        return_freed_memory()
    for index, name in enumerate(names):
        if log:
            log(f"exporting {name} ({', '.join(precisions)})")
        last_of_component = all(specs[n].component != specs[name].component for n in names[index + 1:])
        records = export_precisions(specs[name], models, out_dir, precisions, verify, opset=opset,
                                    external_data_bytes=external_data_bytes,
                                    release=release_components and last_of_component)
        entry = entries.get(name, {})
        entry.update(spec=specs[name].describe(), component=specs[name].component)
        entry.setdefault("precisions", {}).update(records)
        entries[name] = entry
        if log:
            for precision, record in records.items():
                log(measured_line(name, record))
        manifest = {
            "format": MANIFEST_FORMAT,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "weights": getattr(models, "source", "?"), "synthetic": bool(getattr(models, "synthetic", False)),
            "weights_fingerprint": fingerprint,
            "configs": [s.config.as_dict() | {"batch": s.batch} for s in shape_list],
            "versions": versions(), "networks": entries,
        }
        _write_json(out_dir / MANIFEST, manifest)  # after every network: a crash keeps what is done
    return manifest


def export_order(models, specs: dict[str, NetworkSpec], names: list[str]) -> list[str]:
    """``names`` in `build`'s order: components by size, and within one component the network with the
    largest tensors last (the bank projector before the denoising UNet, the VAE encoder before its decoder):
    a component is dropped once its last network is traced, so that network, the largest, is verified
    without the torch module resident."""
    def size(component: str) -> int:
        return sum(t.numel() * t.element_size() for t in getattr(models, component).state_dict().values())

    def io_elements(name: str) -> int:
        return sum(math.prod(t.max_shape) for t in (*specs[name].inputs, *specs[name].outputs))

    sizes = {component: size(component) for component in {specs[n].component for n in names}}
    return sorted(names, key=lambda n: (sizes[specs[n].component], specs[n].component, io_elements(n), names.index(n)))


def measured_line(name: str, record: dict) -> str:
    """One line of a network's measured export/verification time and peak memory (``build`` prints it)."""
    memory = record.get("memory", {})

    def gib(value) -> str:
        return "?" if value is None else f"{value / 2**30:.2f} GiB"

    verify = (f"verify {record['verify_seconds']:.1f} s, peak {gib(memory.get('verify_peak_rss_bytes'))}"
              if record.get("verified") else "not verified")
    return (f"  {name} [{record['precision']}]: export {record['export_seconds']:.1f} s, peak "
            f"{gib(memory.get('export_peak_rss_bytes'))}; {verify}")


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read export manifest ({exc})") from exc


def _json_safe(value):
    """Strict JSON: non-finite floats (an exact match's infinite PSNR) become strings."""
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
