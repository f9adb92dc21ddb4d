"""personalive_trt.engines: cache keys, the TensorRT 10/11 build paths, and backend parity.

The TensorRT path runs against ``tests/tensorrt_stub`` -- a CPU stand-in of the ``tensorrt`` module (NOT
TensorRT) that records what the builder was asked and executes engines with onnxruntime through the bound
host addresses. It checks our use of the API; tests marked ``tensorrt`` check the real library on a GPU.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import relative_error
from personalive_trt import StreamConfig
from personalive_trt.engines import (
    TENSORRT_INSTALL_HINT,
    BuildOptions,
    EngineBackend,
    EngineCache,
    EngineError,
    EngineKey,
    GpuInfo,
    OnnxRuntimeBackend,
    StaleEngineError,
    TensorRTBackend,
    TensorRTNotAvailableError,
    TorchBackend,
    build_engines,
    ensure_engine,
    onnx_digest,
    require_tensorrt,
)
from personalive_trt.engines.backends import trt_logger
from personalive_trt.export.interface import NetworkSpec, TensorSpec
from personalive_trt.shapes import StreamShapes, safe_name
from personalive_trt.models.synthetic import CONFIGS

STUB_DIR = Path(__file__).parent / "tensorrt_stub"
GPU = GpuInfo("Stand-in GPU", (9, 0))
FP32_TOL = 1e-5  # fp32 parity: max |a - b| / max |reference|
FP16_TOL = 2e-2  # an fp16 graph against the fp32 module
TF32_TOL = 5e-3  # fp32 on CUDA where TF32 may be on (10-bit mantissa)

# Real TensorRT: decided at collection, before any test can put the stand-in on sys.path.
HAS_REAL_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


# ---- a tiny network shaped like the denoising UNet's interface -----------------------------------------

class ToyDenoiser(nn.Module):
    """Per-frame conv over the latent pile plus attention over a reference bank with a dynamic token axis."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.query = nn.Linear(4, channels)
        self.proj = nn.Linear(channels, 4)
        self.scale = channels ** -0.5

    def forward(self, latents: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, f, h, w = latents.shape
        x = torch.nn.functional.silu(self.conv(latents.transpose(1, 2).reshape(-1, c, h, w)))
        x = x.reshape(b, f, c, h, w).transpose(1, 2)
        query = self.query(latents.mean(dim=(2, 3, 4)))  # (b, channels)
        scores = torch.softmax(bank @ query[:, :, None] * self.scale, dim=1)[..., 0]  # (b, tokens)
        context = (scores[..., None] * bank).sum(dim=1)
        return x + self.proj(context)[:, :, None, None, None], scores


SHAPES = StreamShapes.from_unet_config(StreamConfig(window=2, steps=2, resolution=64), CONFIGS["tiny"]["sd_unet"])
BANK = safe_name(SHAPES.banks[0].name)
TOKENS = SHAPES.banks[0].tokens  # one bank; the input holds 1 (reference) .. 4 (+3 keyframes) of them


def toy_spec(name: str = "toy_unet", component: str = "toy") -> NetworkSpec:
    lengths = (1, 2, SHAPES.max_bank_length)
    bank = TensorSpec(BANK, *(SHAPES.bank(0, n) for n in lengths))
    scores = TensorSpec("bank_scores", *((1, SHAPES.bank(0, n)[1]) for n in lengths))
    return NetworkSpec(name=name, component=component,
                       inputs=(TensorSpec.fixed("latents", SHAPES.latent_pile()), bank),
                       outputs=(TensorSpec.fixed("latents_out", SHAPES.latent_pile()), scores),
                       wrap=lambda module: module)


def export(module: nn.Module, spec: NetworkSpec, path: Path, precision: str) -> Path:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    args = tuple(torch.randn(t.opt_shape).to(t.export_dtype(precision)) for t in spec.inputs)
    torch.onnx.export(
        module.to(dtype), args, str(path), input_names=spec.input_names, output_names=spec.output_names,
        dynamic_axes={t.name: t.dynamic_axes for t in (*spec.inputs, *spec.outputs) if t.dynamic_axes},
        opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(spec, fp32 module, {"fp32": onnx path, "fp16": onnx path})."""
    folder = tmp_path_factory.mktemp("toy_onnx")
    spec = toy_spec()
    torch.manual_seed(0)
    module = ToyDenoiser(SHAPES.banks[0].channels).eval()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice: dynamo=False is deliberate here
        warnings.simplefilter("ignore", DeprecationWarning)
        onnx = {p: export(copy.deepcopy(module), spec, folder / f"toy.{p}.onnx", p) for p in ("fp32", "fp16")}
    return spec, module, onnx


def toy_inputs(length: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(SHAPES.latent_pile(), generator=g).to(dtype),
            BANK: torch.randn(SHAPES.bank(0, length), generator=g).to(dtype)}


# ---- the stand-in ---------------------------------------------------------------------------------------

def load_stub(flavour: int, monkeypatch):
    monkeypatch.setenv("TENSORRT_STUB_FLAVOUR", str(flavour))
    monkeypatch.syspath_prepend(str(STUB_DIR))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    module = importlib.import_module("tensorrt")
    assert module.STUB and module.FLAVOUR == flavour, "the tensorrt stand-in was not the module imported"
    return module


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def trt(request, monkeypatch):
    yield load_stub(request.param, monkeypatch)
    sys.modules.pop("tensorrt", None)  # monkeypatch restores a real module if there was one


@pytest.fixture
def trt10(monkeypatch):
    yield load_stub(10, monkeypatch)
    sys.modules.pop("tensorrt", None)


@pytest.fixture
def trt11(monkeypatch):
    yield load_stub(11, monkeypatch)
    sys.modules.pop("tensorrt", None)


def onnx_for(toy):
    return lambda spec, precision: toy[2][precision]


# ---- cache keys ------------------------------------------------------------------------------------------

def test_cache_key_changes_with_each_field_and_is_stable_otherwise(toy, tmp_path):
    import onnx as onnx_lib

    spec, _, onnx = toy
    base = EngineKey(network=spec.name, onnx_sha256=onnx_digest(onnx["fp32"]), profile=spec.profile(),
                     precision="fp16", tensorrt_version="10.13.3.9", gpu=GPU,
                     builder=BuildOptions().key_fields("weak"))
    again = EngineKey(network=spec.name, onnx_sha256=onnx_digest(onnx["fp32"]), profile=dict(spec.profile()),
                      precision="fp16", tensorrt_version="10.13.3.9", gpu=GpuInfo("Stand-in GPU", (9, 0)),
                      builder=BuildOptions().key_fields("weak"))
    assert again.digest == base.digest

    edited_model = onnx_lib.load(str(onnx["fp32"]))
    edited_model.graph.initializer[0].raw_data = bytes(len(edited_model.graph.initializer[0].raw_data))
    edited = tmp_path / "edited.onnx"
    onnx_lib.save(edited_model, str(edited))
    bigger_bank = dataclasses.replace(spec.inputs[1], max_shape=SHAPES.bank(0, 5))
    variants = {
        "onnx bytes": dict(onnx_sha256=onnx_digest(edited)),
        "profile": dict(profile=dataclasses.replace(spec, inputs=(spec.inputs[0], bigger_bank)).profile()),
        "precision": dict(precision="fp32"),
        "tensorrt version": dict(tensorrt_version="11.0.0.1"),
        "gpu name": dict(gpu=GpuInfo("NVIDIA H200", (9, 0))),
        "compute capability": dict(gpu=GpuInfo("Stand-in GPU", (8, 9))),
        "builder options": dict(builder=BuildOptions(optimization_level=2).key_fields("weak")),
        "typing": dict(builder=BuildOptions().key_fields("strong")),
        "network": dict(network="other"),
    }
    digests = {what: dataclasses.replace(base, **change).digest for what, change in variants.items()}
    assert base.digest not in digests.values()
    assert len(set(digests.values())) == len(digests), digests
    assert base.differences(dataclasses.replace(base, precision="fp32").fields()) == ["precision: fp32 -> fp16"]


def test_onnx_digest_covers_external_data(toy, tmp_path):
    import onnx as onnx_lib

    model = onnx_lib.load(str(toy[2]["fp32"]))
    path = tmp_path / "external.onnx"
    onnx_lib.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="external.data", size_threshold=0)
    cache = EngineCache(tmp_path / "engines")
    first = cache.onnx_digest(path)
    assert first == onnx_digest(path) and cache.onnx_digest(path) == first  # memo hit returns the same
    data = tmp_path / "external.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))  # same size, new content (new mtime)
    assert cache.onnx_digest(path) == onnx_digest(path) != first
    data.unlink()
    with pytest.raises(FileNotFoundError, match="external.data"):
        onnx_digest(path)


# ---- building through the stand-in -------------------------------------------------------------------------

def test_build_writes_engine_manifest_and_progress(trt, toy, tmp_path):
    spec, _, onnx = toy
    lines: list[str] = []
    precision_onnx = onnx["fp16"]  # strongly typed on both: the fp16 engine comes from the fp16 export
    path = ensure_engine(spec, precision_onnx, tmp_path, gpu=GPU, progress=lines.append)
    assert path.is_file() and path.parent == tmp_path and path.name.startswith(spec.name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["engines"][spec.name]
    assert manifest["engine"] == path.name and manifest["bytes"] == path.stat().st_size
    assert manifest["key"]["precision"] == "fp16"
    assert manifest["key"]["tensorrt_version"] == trt.__version__
    assert manifest["key"]["gpu"] == {"name": "Stand-in GPU", "compute_capability": "9.0"}
    assert manifest["key"]["profile"] == {n: [list(s) for s in v] for n, v in spec.profile().items()}
    assert manifest["key"]["onnx_sha256"] == onnx_digest(precision_onnx)
    assert "building fp16 engine (strongly typed" in lines[0] and spec.name in lines[0]
    assert manifest["key"]["builder"]["typing"] == "strong"
    assert lines[-1].startswith(f"{spec.name}: built in ") and " s (" in lines[-1]
    assert not list(tmp_path.glob(".*.tmp"))


def test_cache_hit_miss_rebuild(trt10, toy, tmp_path):
    spec, _, onnx = toy
    lines: list[str] = []
    first = ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=lines.append)
    builds = len(trt10.stub_builds)
    assert ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=lines.append) == first
    assert len(trt10.stub_builds) == builds and lines[-1] == f"{spec.name}: up to date ({first.name})"

    rebuilt = ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=lines.append)
    assert len(trt10.stub_builds) == builds + 1 and rebuilt != first
    assert "precision: fp16 -> fp32" in lines[-2]
    assert not first.exists(), "the replaced engine is removed"
    assert ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None) != rebuilt  # and back: rebuild
    assert len(trt10.stub_builds) == builds + 2
    assert ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GpuInfo("Other GPU", (8, 6)), progress=None)
    assert len(trt10.stub_builds) == builds + 3
    weak = ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=lines.append,
                         options=BuildOptions(strongly_typed=False))
    assert len(trt10.stub_builds) == builds + 4 and "builder.typing: strong -> weak" in lines[-2]
    assert ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None) != weak  # never served for strong


def test_refuses_stale_or_missing_engine_when_building_is_off(trt10, toy, tmp_path):
    spec, _, onnx = toy
    with pytest.raises(StaleEngineError, match="no engine built yet") as missing:
        ensure_engine(spec, onnx["fp32"], tmp_path, gpu=GPU, allow_build=False, progress=None)
    message = str(missing.value)
    assert "\n" not in message and spec.name in message and "building is off" in message
    ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None)
    builds = len(trt10.stub_builds)
    with pytest.raises(StaleEngineError, match=r"precision: fp32 -> fp16") as stale:
        ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp16", gpu=GPU, allow_build=False, progress=None)
    assert "\n" not in str(stale.value) and len(trt10.stub_builds) == builds
    # The matching engine is still served with building off; a truncated file is refused, not loaded.
    path = ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, allow_build=False, progress=None)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(StaleEngineError, match="bytes, the manifest says"):
        ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, allow_build=False, progress=None)


def test_interrupted_store_keeps_the_previous_engine(trt10, toy, tmp_path, monkeypatch):
    spec, _, onnx = toy
    first = ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None)
    manifest = (tmp_path / "manifest.json").read_text()

    real_replace = os.replace

    def crash(src, dst):  # the engine write dies at the last step
        if str(dst).endswith(".engine"):
            raise OSError("disk full")
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            ensure_engine(spec, onnx["fp16"], tmp_path, precision="fp16", gpu=GPU, progress=None)
    assert (tmp_path / "manifest.json").read_text() == manifest and first.is_file()
    assert sorted(p.name for p in tmp_path.glob("*.engine")) == [first.name]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are removed"
    assert ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None,
                         allow_build=False) == first


def test_unreadable_manifest_is_refused_or_rebuilt(trt10, toy, tmp_path):
    spec, _, onnx = toy
    ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(StaleEngineError, match="manifest.json: unreadable"):
        ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None, allow_build=False)
    path = ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    assert json.loads((tmp_path / "manifest.json").read_text())["engines"][spec.name]["engine"] == path.name


def test_trt10_builds_fp16_strongly_typed_from_the_fp16_export_by_default(trt10, toy, tmp_path):
    """The weak FP16 flag may run the specs' fp32 islands in fp16: by default TensorRT 10 is strongly typed."""
    spec, _, onnx = toy
    ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None,
                  options=BuildOptions(workspace_bytes=1 << 30, optimization_level=2))
    record = trt10.stub_builds[-1]
    strong_bit = 1 << int(trt10.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record.strongly_typed and record.network_flags == strong_bit and record.builder_flags == set()
    assert record.input_dtypes == {"latents": "HALF", BANK: "HALF"} and record.profiles == [spec.profile()]
    assert record.memory_pools == {"WORKSPACE": 1 << 30} and record.optimization_level == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())["engines"][spec.name]
    assert manifest["key"]["builder"]["typing"] == "strong"
    with pytest.raises(EngineError, match=r"strongly typed.*build from the fp16 ONNX"):
        ensure_engine(spec, onnx["fp32"], tmp_path / "bad", gpu=GPU, progress=None)
    ensure_engine(spec, onnx["fp32"], tmp_path / "fp32-engine", precision="fp32", gpu=GPU, progress=None)
    assert trt10.stub_builds[-1].strongly_typed and trt10.stub_builds[-1].input_dtypes[BANK] == "FLOAT"


def test_trt10_weak_typing_only_when_asked(trt10, toy, tmp_path):
    spec, _, onnx = toy
    weak = BuildOptions(strongly_typed=False)
    for source in ("fp32", "fp16"):  # weakly typed TensorRT 10 takes either export for an fp16 engine
        ensure_engine(spec, onnx[source], tmp_path / source, gpu=GPU, progress=None, options=weak)
        record = trt10.stub_builds[-1]
        assert record.builder_flags == {"FP16"} and not record.strongly_typed and record.network_flags == 0
    manifest = json.loads((tmp_path / "fp32" / "manifest.json").read_text())["engines"][spec.name]
    assert manifest["key"]["builder"]["typing"] == "weak"
    ensure_engine(spec, onnx["fp32"], tmp_path / "fp32-engine", precision="fp32", gpu=GPU, progress=None, options=weak)
    assert trt10.stub_builds[-1].builder_flags == set() and trt10.stub_builds[-1].memory_pools == {}
    with pytest.raises(EngineError, match="fp32 engine must not be built from an fp16 graph"):
        ensure_engine(spec, onnx["fp16"], tmp_path / "bad", precision="fp32", gpu=GPU, progress=None, options=weak)
    with pytest.raises(ValueError, match="strongly_typed must be True or False"):
        BuildOptions(strongly_typed=None)


def test_trt11_builds_strongly_typed_from_the_fp16_export(trt11, toy, tmp_path):
    spec, _, onnx = toy
    assert not hasattr(trt11.BuilderFlag, "FP16")
    ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    record = trt11.stub_builds[-1]
    assert record.strongly_typed
    assert record.network_flags == 1 << int(trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record.builder_flags == set() and record.input_dtypes == {"latents": "HALF", BANK: "HALF"}
    assert record.profiles == [spec.profile()]
    # Strong typing takes the precision from the graph: an fp32 graph cannot make an fp16 engine.
    with pytest.raises(EngineError, match=r"strongly typed.*build from the fp16 ONNX"):
        ensure_engine(spec, onnx["fp32"], tmp_path / "bad", gpu=GPU, progress=None)
    with pytest.raises(EngineError, match="builds strongly typed networks only"):
        ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None, options=BuildOptions(strongly_typed=False))
    ensure_engine(spec, onnx["fp32"], tmp_path / "fp32", precision="fp32", gpu=GPU, progress=None)
    assert trt11.stub_builds[-1].input_dtypes == {"latents": "FLOAT", BANK: "FLOAT"}


def test_timing_cache_is_saved_and_reused(trt10, toy, tmp_path):
    spec, _, onnx = toy
    ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    cache_file = EngineCache(tmp_path).timing_cache_path(GPU, trt10.__version__)
    assert cache_file.is_file() and trt10.stub_builds[-1].timing_cache_given == []
    saved = json.loads(cache_file.read_bytes().split(b"\n", 1)[1])
    assert len(saved) == 1
    ensure_engine(toy_spec("second"), onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    assert trt10.stub_builds[-1].timing_cache_given == saved  # the second build started from the first's cache
    assert len(json.loads(cache_file.read_bytes().split(b"\n", 1)[1])) == 2
    # Another GPU gets its own timing cache.
    ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GpuInfo("Other GPU", (8, 6)), progress=None)
    assert trt10.stub_builds[-1].timing_cache_given == []
    # A damaged cache file is replaced by an empty cache, and the build still succeeds.
    cache_file.write_bytes(b"garbage")
    ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None)
    assert trt10.stub_builds[-1].timing_cache_given == []


def test_build_engines_with_a_per_network_precision_override(trt, toy, tmp_path):
    spec, _, onnx = toy
    specs = [spec, toy_spec("pose_guider_toy", component="pose_guider")]
    asked: list[tuple[str, str]] = []

    def onnx_path(s, precision):
        asked.append((s.name, precision))
        return onnx[precision]

    lines: list[str] = []
    paths = build_engines(specs, onnx_path, tmp_path, precision_overrides={"pose_guider": "fp32"}, gpu=GPU,
                          progress=lines.append)
    assert asked == [("toy_unet", "fp16"), ("pose_guider_toy", "fp32")]
    manifest = json.loads((tmp_path / "manifest.json").read_text())["engines"]
    assert {n: e["key"]["precision"] for n, e in manifest.items()} == {"toy_unet": "fp16", "pose_guider_toy": "fp32"}
    assert set(paths) == {"toy_unet", "pose_guider_toy"} and all(p.is_file() for p in paths.values())
    fp16_build, fp32_build = trt.stub_builds[-2:]
    assert fp16_build.strongly_typed and fp32_build.strongly_typed  # TensorRT 10 too, by default
    assert fp16_build.builder_flags == set() == fp32_build.builder_flags
    assert fp16_build.input_dtypes[BANK] == "HALF" and fp32_build.input_dtypes[BANK] == "FLOAT"
    assert lines[0].startswith("[1/2] toy_unet: building fp16") and lines[2].startswith("[2/2] pose_guider_toy")
    assert lines[-1].startswith("2 engines ready") and "2 built" in lines[-1]
    build_engines(specs, onnx_path, tmp_path, precision_overrides={"pose_guider_toy": "fp32"}, gpu=GPU,
                  progress=lines.append, allow_build=False)  # by name, same result: all up to date
    assert "0 built, 2 up to date" in lines[-1]
    with pytest.raises(ValueError, match=r"unknown network\(s\) \['pose_encoder'\]"):
        build_engines(specs, onnx_path, tmp_path, precision_overrides={"pose_encoder": "fp32"}, gpu=GPU)


def test_parser_and_builder_failures_raise_with_tensorrts_messages(trt10, toy, tmp_path, monkeypatch):
    spec, _, onnx = toy
    import onnx as onnx_lib

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx["fp32"].read_bytes()[:-7])
    with pytest.raises(EngineError, match="not a valid ONNX file"):
        ensure_engine(spec, truncated, tmp_path / "engines", gpu=GPU, progress=None)
    model = onnx_lib.load(str(onnx["fp32"]))
    model.graph.node[-1].op_type = "NoSuchOp"  # loads, but no parser accepts it
    unknown_op = tmp_path / "unknown_op.onnx"
    onnx_lib.save(model, str(unknown_op))
    with pytest.raises(EngineError, match="ONNX parser failed: In node -1 .*NoSuchOp"):
        ensure_engine(spec, unknown_op, tmp_path / "engines", gpu=GPU, progress=None)
    trt10.stub_fail_next_build = "out of memory while building tactic 42"
    with pytest.raises(EngineError, match="failed to build the engine: out of memory while building tactic 42"):
        ensure_engine(spec, onnx["fp16"], tmp_path / "engines", gpu=GPU, progress=None)
    assert not list((tmp_path / "engines").glob("*.engine")), "no engine is written on failure"
    assert not (tmp_path / "engines" / "manifest.json").exists()
    def reject(config, profile):
        config_logger.log(trt10.ILogger.Severity.ERROR, "profile rejected by the stand-in")
        return -1

    config_logger = trt_logger(trt10)
    with monkeypatch.context() as patch:
        patch.setattr(trt10.IBuilderConfig, "add_optimization_profile", reject)
        with pytest.raises(EngineError, match="rejected the optimisation profile .*profile rejected by the stand-in"):
            ensure_engine(spec, onnx["fp16"], tmp_path / "engines", gpu=GPU, progress=None)
    wrong = dataclasses.replace(spec, inputs=(spec.inputs[0], dataclasses.replace(spec.inputs[1], name="bank")))
    with pytest.raises(EngineError, match="does not match the spec"):
        ensure_engine(wrong, onnx["fp32"], tmp_path / "engines", gpu=GPU, progress=None)


# ---- backends ----------------------------------------------------------------------------------------------

def make_backends(trt, toy, tmp_path, precision="fp32"):
    spec, module, onnx = toy
    source = onnx[precision]
    engine = ensure_engine(spec, source, tmp_path, precision=precision, gpu=GPU, progress=None)
    backends = [TorchBackend(spec, spec.wrap(module)), OnnxRuntimeBackend(spec, source),
                TensorRTBackend(spec, engine, device="cpu")]
    for backend in backends:
        assert isinstance(backend, EngineBackend)
        backend.allocate()
    return backends


def test_binding_outputs_match_torch_and_onnxruntime_on_two_shapes(trt, toy, tmp_path):
    """A binding check, not TensorRT parity: the stand-in runs the same ONNX through ONNX Runtime, so this
    proves that shapes, addresses and output views are wired right (the same numbers come back)."""
    torch_backend, ort_backend, trt_backend = make_backends(trt, toy, tmp_path)
    for length in (3, 1):  # longer first: the shorter call must not see the longer call's leftovers
        inputs = toy_inputs(length, seed=length)
        expected = {name: value.clone() for name, value in torch_backend.infer(inputs).items()}
        assert expected["bank_scores"].shape == (1, length * TOKENS)
        for backend in (ort_backend, trt_backend):
            outputs = backend.infer(inputs)
            for name, value in outputs.items():
                assert value.shape == expected[name].shape, (type(backend).__name__, name)
                assert value.data_ptr() == backend.buffers[name].data_ptr(), "outputs are views of the buffers"
                assert relative_error(value, expected[name]) <= FP32_TOL, (type(backend).__name__, name, length)
    assert trt_backend.buffers["bank_scores"].numel() == SHAPES.max_bank_length * TOKENS
    calls = [call for context in trt_backend.contexts for call in context.calls]
    assert [c["shapes"][BANK][1] for c in calls] == [3 * TOKENS, 1 * TOKENS] and calls[-1]["stream"] == 0


def test_context_addresses_are_set_once(trt, toy, tmp_path):
    """Inputs from ever new temporaries are staged into static buffers, so each context (one per input
    shapes) binds its addresses once; a replayed CUDA graph would otherwise read freed memory."""
    torch_backend, _, trt_backend = make_backends(trt, toy, tmp_path)
    seen = []
    for call, length in enumerate((1, 2, 1, 2, 1)):
        inputs = toy_inputs(length, seed=call)  # new tensors, new addresses, every call
        expected = torch_backend.infer(inputs)["bank_scores"].clone()
        assert relative_error(trt_backend.infer(inputs)["bank_scores"], expected) <= FP32_TOL
        seen.append((length, trt_backend.context))
    contexts = {length: context for length, context in seen}
    assert len(trt_backend.contexts) == 2 and all(context is contexts[length] for length, context in seen)
    for length, context in contexts.items():
        assert [c["shapes"][BANK][1] for c in context.calls] == [length * TOKENS] * (3 if length == 1 else 2)
        assert context.rebound == [], "a context was rebound after its first execution"
        assert len({tuple(sorted(c["addresses"].items())) for c in context.calls}) == 1
    staging = {name: buffer.data_ptr() for name, buffer in trt_backend._staging.items()}
    assert {name: contexts[1].calls[0]["addresses"][name] for name in staging} == staging


def test_stable_inputs_are_read_in_place(trt10, toy, tmp_path):
    """Inputs the caller keeps in buffers allocated once are bound where they are: no staging buffer, no
    copy; the same buffer sliced to another length starts at the same address and gets its own context."""
    torch_backend, _, trt_backend = make_backends(trt10, toy, tmp_path)
    slots = torch.randn(SHAPES.bank(0, SHAPES.max_bank_length))  # like the runtime's K/V slot buffer
    for length in (1, 2, 1):
        inputs = {"latents": toy_inputs(length)["latents"], BANK: slots[:, : length * TOKENS]}
        expected = torch_backend.infer(inputs)["bank_scores"].clone()
        assert relative_error(trt_backend.infer(inputs, stable=[BANK])["bank_scores"], expected) <= FP32_TOL
        assert trt_backend.context.calls[-1]["addresses"][BANK] == slots.data_ptr()
    assert BANK not in trt_backend._staging and "latents" in trt_backend._staging
    assert len(trt_backend.contexts) == 2 and all(c.rebound == [] for c in trt_backend.contexts)
    moved = slots.clone()  # a stable input at a new address: a new context, the old one is left as it was
    trt_backend.infer({"latents": toy_inputs(1)["latents"], BANK: moved[:, :TOKENS]}, stable=[BANK])
    assert len(trt_backend.contexts) == 3 and all(c.rebound == [] for c in trt_backend.contexts)
    with pytest.raises(ValueError, match=r"stable inputs \['noise'\] are not inputs"):
        trt_backend.infer(toy_inputs(1), stable=["noise"])
    # A caller that writes into the staging buffer saves the copy (the address is already the bound one).
    latents = trt_backend.input_buffer("latents", SHAPES.latent_pile())
    latents.copy_(toy_inputs(1, seed=5)["latents"])
    outputs = trt_backend.infer({"latents": latents, BANK: slots[:, :TOKENS]}, stable=[BANK])
    expected = torch_backend.infer({"latents": latents.clone(), BANK: slots[:, :TOKENS]})
    assert relative_error(outputs["latents_out"], expected["latents_out"]) <= FP32_TOL


def test_contexts_share_user_managed_activation_memory(trt, toy, tmp_path):
    """TensorRT >= 10.1: every context is USER_MANAGED and gets the backend's one scratch buffer."""
    *_, backend = make_backends(trt, toy, tmp_path)
    for length in (1, 2, 3):
        backend.infer(toy_inputs(length))
    contexts = backend.contexts
    assert len(contexts) == 3
    assert {c.strategy for c in contexts} == {trt.ExecutionContextAllocationStrategy.USER_MANAGED}
    size = backend.engine.device_memory_size_v2
    assert {c.device_memory for c in contexts} == {(backend._scratch_ptr, size)} and backend._scratch_ptr % 256 == 0
    scratch = backend._scratch
    assert scratch.data_ptr() <= backend._scratch_ptr and backend._scratch_ptr + size <= scratch.data_ptr() + scratch.numel()
    # The stand-in scribbles over the scratch on every run: the outputs are not in it.
    assert (scratch[backend._scratch_ptr - scratch.data_ptr():][:size] == trt.SCRATCH_PATTERN).all()


def test_tensorrt_contexts_without_memory_fail_like_tensorrt(trt10, toy, tmp_path, monkeypatch):
    spec, _, onnx = toy
    engine_path = ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None)
    # The stand-in itself: a USER_MANAGED context that was given no memory does not execute.
    engine = trt10.Runtime(trt_logger(trt10)).deserialize_cuda_engine(engine_path.read_bytes())
    bare = engine.create_execution_context(trt10.ExecutionContextAllocationStrategy.USER_MANAGED)
    assert bare.device_memory is None and not bare.execute_async_v3(0)
    assert "no device memory was set" in trt_logger(trt10).errors_since(trt_logger(trt10).count - 1)
    # The backend: memory TensorRT refuses is an error at context creation, in TensorRT's words.
    backend = TensorRTBackend(spec, engine_path, device="cpu")
    backend.allocate()
    backend.scratch_bytes -= 256
    with pytest.raises(EngineError, match="refused the shared activation memory .*the engine needs"):
        backend.infer(toy_inputs(1))
    assert backend.contexts == []
    # TensorRT 10.0 (no device_memory_size_v2): each context allocates its own memory (STATIC).
    monkeypatch.delattr(trt10.ICudaEngine, "device_memory_size_v2")
    old = TensorRTBackend(spec, engine_path, device="cpu")
    old.allocate()
    assert old._scratch is None
    assert old.infer(toy_inputs(2))["bank_scores"].shape == (1, 2 * TOKENS)
    assert old.context.strategy == trt10.ExecutionContextAllocationStrategy.STATIC


def test_tensorrt_runs_on_cuda_only(trt10, toy, tmp_path, monkeypatch):
    """TensorRT must never get host pointers: a CPU device is refused, unless the module executes on the host."""
    spec, _, onnx = toy
    engine = ensure_engine(spec, onnx["fp32"], tmp_path, precision="fp32", gpu=GPU, progress=None)
    with pytest.raises(EngineError, match="executes on the host .*cannot run on cuda:0") as on_cuda:
        TensorRTBackend(spec, engine, device="cuda:0")
    assert "\n" not in str(on_cuda.value)
    monkeypatch.setattr(trt10, "EXECUTES_ON_HOST", False)  # what the real module is
    with pytest.raises(EngineError, match="TensorRT runs on a CUDA device, not cpu .*never be given host pointers"):
        TensorRTBackend(spec, engine, device="cpu")


def test_onnxruntime_runs_where_it_was_asked(toy, monkeypatch):
    """cpu: the CPU provider only; cuda: the CUDA provider or an error at construction, never the CPU."""
    import onnxruntime as ort

    spec, _, onnx = toy
    backend = OnnxRuntimeBackend(spec, onnx["fp32"], device="cpu")
    assert backend.session.get_providers() == ["CPUExecutionProvider"] and backend.device == torch.device("cpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EngineError, match=r"has no CUDA provider .*cannot run on cuda:0") as missing:
            OnnxRuntimeBackend(spec, onnx["fp32"], device="cuda:0")
        assert "\n" not in str(missing.value)
        # Listed but not starting (missing CUDA libraries): ONNX Runtime falls back to the CPU with a warning.
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        with pytest.raises(EngineError, match=r"asked for cuda:0 but its session runs on \['CPUExecutionProvider'\]"):
            OnnxRuntimeBackend(spec, onnx["fp32"], device="cuda:0")


def test_binding_fp16_engine_matches_torch(trt11, toy, tmp_path):
    """A binding check of an fp16 engine (the stand-in runs the fp16 ONNX through ONNX Runtime)."""
    spec, module, onnx = toy
    engine = TensorRTBackend(spec, ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None), device="cpu")
    engine.allocate()
    assert engine.input_dtypes == {"latents": torch.float16, BANK: torch.float16}
    reference = TorchBackend(spec, module)
    reference.allocate()
    for length in (2, 4):
        inputs = toy_inputs(length, seed=10 + length)
        expected = reference.infer(inputs)
        outputs = engine.infer({k: v.half() for k, v in inputs.items()})
        for name in spec.output_names:
            assert outputs[name].dtype == torch.float16 and outputs[name].shape == expected[name].shape
            assert relative_error(outputs[name], expected[name]) <= FP16_TOL


@pytest.mark.parametrize("backend_index", [0, 1, 2], ids=["torch", "onnxruntime", "tensorrt"])
def test_bad_inputs_are_named_with_the_allowed_range(trt10, toy, tmp_path, backend_index):
    backend = make_backends(trt10, toy, tmp_path)[backend_index]
    good = toy_inputs(2)
    cases = {
        "missing": ({"latents": good["latents"]}, rf"inputs missing \['{BANK}'\]"),
        "unknown": ({**good, "noise": good["latents"]}, r"inputs unknown \['noise'\]"),
        "too long": ({**good, BANK: torch.zeros(SHAPES.bank(0, 5))},
                     rf"input '{BANK}' has shape \(1, {5 * TOKENS}, 32\); allowed \(1, {TOKENS}..{4 * TOKENS}, 32\)"),
        "rank": ({**good, "latents": torch.zeros(SHAPES.latent_pile()[1:])}, r"input 'latents' has shape \(4, 4"),
        "dtype": ({**good, BANK: good[BANK].double()},
                  rf"input '{BANK}' has dtype torch.float64; expected torch.float32"),
        "layout": ({**good, "latents": good["latents"].transpose(3, 4)}, "'latents' must be contiguous"),
        "type": ({**good, "latents": good["latents"].numpy()}, "'latents' must be a torch.Tensor"),
    }
    for what, (inputs, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            backend.infer(inputs)
            pytest.fail(f"no error for {what}")
    assert backend.infer(good)["bank_scores"].shape == (1, 2 * TOKENS)  # still usable afterwards


def test_infer_needs_allocate_first(toy):
    spec, module, _ = toy
    backend = TorchBackend(spec, module)
    with pytest.raises(RuntimeError, match="allocate"):
        backend.infer(toy_inputs(1))


def test_tensorrt_backend_refuses_engines_that_do_not_fit(trt10, toy, tmp_path, monkeypatch):
    spec, _, onnx = toy
    engine = ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU, progress=None)
    renamed = dataclasses.replace(spec, outputs=(spec.outputs[0], dataclasses.replace(spec.outputs[1], name="s")))
    with pytest.raises(EngineError, match="does not match the spec"):
        TensorRTBackend(renamed, engine, device="cpu")
    wider = dataclasses.replace(spec.inputs[1], max_shape=SHAPES.bank(0, 6))
    with pytest.raises(EngineError, match="rebuild the engine"):
        TensorRTBackend(dataclasses.replace(spec, inputs=(spec.inputs[0], wider)), engine, device="cpu")
    garbage = tmp_path / "garbage.engine"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(EngineError, match="could not deserialize the engine: .*magic tag not found"):
        TensorRTBackend(spec, garbage, device="cpu")
    # An engine built by another TensorRT version is refused with TensorRT's message.
    monkeypatch.setattr(trt10, "__version__", "10.1.0+other")
    with pytest.raises(EngineError, match="version tag mismatch"):
        TensorRTBackend(spec, engine, device="cpu")


def test_tensorrt_execution_failure_raises_with_the_log(trt10, toy, tmp_path):
    *_, backend = make_backends(trt10, toy, tmp_path)
    trt10.stub_fail_next_execution = "an illegal memory access was encountered"
    with pytest.raises(EngineError, match="execution failed: an illegal memory access was encountered"):
        backend.infer(toy_inputs(1))
    with pytest.raises(TypeError, match="stream must be a torch.cuda.Stream or an int handle"):
        backend.infer(toy_inputs(1), stream="not a stream")
    assert backend.infer(toy_inputs(1), stream=0)["bank_scores"].shape == (1, TOKENS)


def test_tensorrt_context_rejections_raise_with_the_log(trt10, toy, tmp_path, monkeypatch):
    *_, backend = make_backends(trt10, toy, tmp_path)
    context_class = trt10.IExecutionContext
    rejections = {
        "set_input_shape": (lambda self, name, shape: self._error(f"shape {shape} refused for {name}"),
                            "rejected shape .* for input 'latents': shape .* refused for latents"),
        "set_tensor_address": (lambda self, name, address: self._error(f"address refused for {name}"),
                               "rejected the address of 'latents': address refused for latents"),
        "get_tensor_shape": (lambda self, name: (-1, -1), "could not infer the shape of output 'latents_out'"),
    }
    for method, (replacement, message) in rejections.items():
        with monkeypatch.context() as patch:
            patch.setattr(context_class, method, replacement)
            with pytest.raises(EngineError, match=message):
                backend.infer(toy_inputs(2))
    assert backend.contexts == [], "a context that failed to bind is not kept"
    outputs = backend.infer(toy_inputs(2))  # the next call binds a fresh context
    assert outputs["bank_scores"].shape == (1, 2 * TOKENS) and torch.isfinite(outputs["latents_out"]).all()
    assert len(backend.contexts) == 1


def test_onnx_without_the_dynamic_axis_is_refused(trt10, toy, tmp_path):
    spec, module, _ = toy
    static = dataclasses.replace(spec, inputs=tuple(TensorSpec.fixed(t.name, t.opt_shape) for t in spec.inputs),
                                 outputs=tuple(TensorSpec.fixed(t.name, t.opt_shape) for t in spec.outputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        path = export(copy.deepcopy(module), static, tmp_path / "static.onnx", "fp32")
    with pytest.raises(EngineError, match=rf"input '{BANK}' axis 1 is fixed to {2 * TOKENS} in the ONNX, the spec "
                                          rf"needs {TOKENS}..{4 * TOKENS}: re-export it"):
        ensure_engine(spec, path, tmp_path / "engines", gpu=GPU, progress=None)


def test_missing_tensorrt_is_one_line_with_the_install_command(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what `import tensorrt` sees when it is not installed
    with pytest.raises(TensorRTNotAvailableError) as info:
        require_tensorrt()
    assert str(info.value) == TENSORRT_INSTALL_HINT and "\n" not in str(info.value)
    assert 'pip install "personalive-trt[tensorrt]"' in str(info.value)
    spec, _, onnx = toy
    with pytest.raises(TensorRTNotAvailableError, match="TensorRT is not installed"):
        ensure_engine(spec, onnx["fp16"], tmp_path, gpu=GPU)
    with pytest.raises(TensorRTNotAvailableError, match="TensorRT is not installed"):
        TensorRTBackend(spec, tmp_path / "x.engine", device="cpu")


# ---- real TensorRT and GPU ---------------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_REAL_TENSORRT, reason="needs the real TensorRT library and a CUDA GPU")
def test_real_tensorrt_engine_matches_onnxruntime(toy, tmp_path):
    spec, module, onnx = toy
    trt = require_tensorrt()
    assert not getattr(trt, "STUB", False)
    lines: list[str] = []
    engine_path = ensure_engine(spec, onnx["fp16"], tmp_path, progress=lines.append,
                                options=BuildOptions(optimization_level=0))
    assert ensure_engine(spec, onnx["fp16"], tmp_path, progress=None, allow_build=False) == engine_path
    engine = TensorRTBackend(spec, engine_path)
    engine.allocate()
    reference = TorchBackend(spec, copy.deepcopy(module).cuda())
    reference.allocate()
    stream = torch.cuda.Stream()
    for length in (1, 3):
        inputs = toy_inputs(length, seed=length)
        expected = reference.infer({k: v.cuda() for k, v in inputs.items()})
        feeds = {k: v.to("cuda", engine.input_dtypes[k]) for k, v in inputs.items()}
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = engine.infer(feeds, stream=stream)
        stream.synchronize()
        for name in spec.output_names:
            assert outputs[name].shape == expected[name].shape
            assert relative_error(outputs[name].float(), expected[name]) <= FP16_TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_onnxruntime_cuda_backend_matches_torch(toy):
    """ONNX Runtime on CUDA against the torch module on CUDA.

    Tolerance 5e-3 relative: both sides may use TF32 (ONNX Runtime's CUDA provider defaults to
    ``use_tf32=1``; torch's cuDNN convolutions allow TF32 by default), a 10-bit mantissa, ~1e-3 per op."""
    spec, module, onnx = toy
    try:
        backend = OnnxRuntimeBackend(spec, onnx["fp32"], device="cuda")
    except EngineError as exc:  # no onnxruntime-gpu, or its CUDA provider does not start here
        pytest.skip(f"ONNX Runtime does not run on CUDA here: {exc}")
    assert backend.device == torch.device("cuda", torch.cuda.current_device())
    assert backend.session.get_providers()[0] == "CUDAExecutionProvider"
    backend.allocate()
    reference = TorchBackend(spec, copy.deepcopy(module).cuda())
    reference.allocate()
    for length in (2, 2, 4):  # the repeat takes the bound-buffer path
        inputs = {k: v.cuda() for k, v in toy_inputs(length).items()}
        expected = reference.infer(inputs)
        outputs = backend.infer(inputs)
        for name in spec.output_names:
            assert relative_error(outputs[name], expected[name]) <= TF32_TOL
