"""The TensorRT glue end to end, through the stand-in: build -> build.json -> load_networks -> StreamRuntime.

``tests/tensorrt_stub`` is NOT TensorRT: it runs each engine's ONNX with ONNX Runtime on the CPU, reading
and writing the tensors at the addresses the backend binds. So these tests prove the glue -- the build
record, the engine cache, device and dtype checks, which context gets which addresses, the runtime's
call sequence -- not TensorRT's numerics; the ``tensorrt``/``gpu``-marked tests at the end check the real
library on a GPU.

One engines folder is built per module: a copy of the session's fp32 ONNX Runtime build of the tiny synthetic
weights at 128x128 (conftest ``parity_onnx_build``: its exports are reused, as ``build`` reuses exports of
the same weights), to which ``build --backend tensorrt --precision fp32`` adds stand-in engines. One stream
is driven over it: every kind of call the runtime can capture (``StreamRuntime.all_keys``, each body once,
as the warm-up before capture runs it), then the parity stream of tests/parity.py (8 calls that take 3
history keyframes, a reference swap and 2 more calls), compared with the torch runtime's run of it.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import torch

from personalive_trt.build.driver import build

from personalive_trt.engines.folder import BuildError, load_networks, read_build
from personalive_trt.engines import EngineError, TensorRTBackend
from personalive_trt.engines.networks import ROLES, Networks
from personalive_trt.runtime.reference_loop import Animator
from personalive_trt.runtime import StreamRuntime
from conftest import relative_error
from parity import CALLS_AFTER_SWAP, CALLS_BEFORE_SWAP, CONFIG, drive, seeded_noise
from personalive_trt.models.weights import load_models
from test_engines import load_stub

# fp32 engines (the stand-in runs the fp32 ONNX in ONNX Runtime) against the fp32 torch runtime, max error
# relative to max |frame| before uint8 quantisation, over every call of the stream.
FP32_TOLERANCE = 1e-3
HAS_REAL_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def trt():
    with pytest.MonkeyPatch.context() as patch:
        yield load_stub(10, patch)
    sys.modules.pop("tensorrt", None)  # the monkeypatch restores a real module if there was one


@pytest.fixture(scope="module")
def engines(trt, parity_onnx_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("tensorrt_engines") / "engines"
    shutil.copytree(parity_onnx_build, out)
    builds = len(trt.stub_builds)
    lines: list[str] = []
    record = build("synthetic", out, backend="tensorrt", resolution=CONFIG.resolution, precision="fp32",
                   log=lines.append)
    return out, record, trt.stub_builds[builds:], lines


@pytest.fixture(scope="module")
def tensorrt_stream(engines, parity_inputs):
    """The runtime over the stand-in's engines: every graph body once (the warm-up before capture), then the
    parity stream. Capture itself replays what the warm-up bound, so a second pass would add no binding."""
    out, *_ = engines
    networks = load_networks(out, "tensorrt", "synthetic", CONFIG, "cpu")
    runtime = StreamRuntime(networks, CONFIG, noise=seeded_noise(99))
    assert not runtime.use_graphs  # no graphs on a CPU: drive what _capture_all would run instead
    with torch.no_grad():
        for key in runtime.all_keys():
            runtime._body(key)
    runtime.noise = seeded_noise(1)
    frames, keyframes = drive(runtime, parity_inputs)
    return networks, frames, keyframes


# ---- build -> build.json ------------------------------------------------------------------------------------

def test_build_records_the_engines_built(engines):
    out, record, builds, lines = engines
    assert read_build(out) == record and (out / "build.json").is_file()
    assert record.backend == "tensorrt" and record.precisions == ["fp32"] and record.weights == "synthetic"
    assert [c["resolution"] for c in record.configs] == [128]
    manifest = json.loads((out / "tensorrt" / "manifest.json").read_text())["engines"]
    assert len(manifest) == len(ROLES) == len(builds)
    for name, entry in manifest.items():
        assert entry["key"]["precision"] == "fp32" and entry["key"]["builder"]["typing"] == "strong", name
        assert entry["key"]["gpu"]["name"] == "host (tensorrt stand-in)"
    assert all(b.strongly_typed and b.builder_flags == set() for b in builds)  # no weak FP16 flag
    assert any("9 engines ready" in line and "9 built" in line for line in lines), lines
    assert not any(line.startswith("exporting") for line in lines), lines  # the copied exports were reused


# ---- load_networks -> StreamRuntime over TensorRTBackend -> frames -----------------------------------------

def test_tensorrt_runtime_matches_the_torch_runtime(tensorrt_stream, parity_torch_stream):
    """fp32 engines through the stand-in against the fp32 torch runtime over the same weights and noise.

    A binding check of the whole TensorRT path (not TensorRT's numerics): tolerance FP32_TOLERANCE (1e-3 of
    the frame range, every call, keyframes and swap included; measured 3.7e-5 at call 0, <= 3.1e-5 after,
    2026-12-03). Both sides compute in fp32, so what is left is ONNX Runtime's kernel order, amplified by
    the random-weight recurrence (shared README section 8); a wrong binding (a stale, unstaged or overwritten
    input) is of the order of the frame range. The keyframes taken must be the same ones.
    """
    networks, frames, keyframes = tensorrt_stream
    assert networks.dtype == torch.float32 and networks.description == "tensorrt"
    assert all(isinstance(backend, TensorRTBackend) for backend in networks.backends.values())
    expected, expected_keyframes, _, _ = parity_torch_stream  # the same weights (synthetic, seed 0) and noise
    errors = [relative_error(a, b) for a, b in zip(frames, expected)]
    print("tensorrt (stand-in, fp32) vs torch runtime (fp32), relative error per call:",
          ", ".join(f"{e:.1e}" for e in errors))
    assert len(errors) == CALLS_BEFORE_SWAP + CALLS_AFTER_SWAP
    assert max(errors) <= FP32_TOLERANCE, errors
    assert keyframes == expected_keyframes and max(keyframes) == CONFIG.max_keyframes


def test_no_execution_context_is_ever_rebound(tensorrt_stream):
    """Every graph body, a stream with keyframes and a reference swap: each context of each engine kept the
    shapes and addresses of its first execution (a captured graph replays exactly those)."""
    networks, _, _ = tensorrt_stream
    rebound = {role: [r for context in backend.contexts for r in context.rebound]
               for role, backend in networks.backends.items()}
    assert {role: r for role, r in rebound.items() if r} == {}
    for role, backend in networks.backends.items():
        assert backend.contexts and all(c.calls for c in backend.contexts), role
        for context in backend.contexts:
            assert len({tuple(sorted(call["addresses"].items())) for call in context.calls}) == 1, role
    # The denoising UNet reads the runtime's K/V slot buffers in place: no staging copy of those.
    unet = networks.backends["denoising_unet"]
    assert not set(unet._staging) & {name for pair in networks.kv_names for name in pair}
    assert len(unet.contexts) == CONFIG.max_keyframes + 1  # one per bank length


def test_dtype_is_honoured_or_refused(engines):
    out, *_ = engines
    with pytest.raises(BuildError, match=r"--dtype fp16 asked, but its TensorRT engines were built fp32") as trt_fp16:
        load_networks(out, "tensorrt", "synthetic", CONFIG, "cpu", dtype=torch.float16)
    with pytest.raises(BuildError, match=r"--dtype fp16 asked, but its ONNX exports are fp32") as ort_fp16:
        load_networks(out, "onnxruntime", "synthetic", CONFIG, "cpu", dtype=torch.float16)
    assert "\n" not in str(trt_fp16.value) + str(ort_fp16.value)
    networks = load_networks(out, "onnxruntime", "synthetic", CONFIG, "cpu", dtype=torch.float32)
    assert networks.dtype == torch.float32 and networks.device == torch.device("cpu")
    assert networks.backends["vae_decoder"].input_dtypes["latents"] == torch.float32  # the fp32 export runs
    assert {b.session.get_providers()[0] for b in networks.backends.values()} == {"CPUExecutionProvider"}


def test_tensorrt_on_a_cpu_device_is_refused_in_one_line(engines, trt, monkeypatch):
    out, *_ = engines
    monkeypatch.setattr(trt, "EXECUTES_ON_HOST", False)  # what the real module is
    with pytest.raises(EngineError, match="TensorRT runs on a CUDA device, not cpu") as refused:
        load_networks(out, "tensorrt", "synthetic", CONFIG, "cpu")
    assert "\n" not in str(refused.value)


# ---- Networks: devices and flags -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_networks(parity_models):
    return Networks.from_models(parity_models, CONFIG)


def test_networks_check_every_backend_device(torch_networks):
    backends = dict(torch_networks.backends)
    with pytest.raises(ValueError, match=r"Networks: the image_encoder backend \(TorchBackend\) runs on cpu, the networks on meta"):
        Networks(backends, torch_networks.shapes, torch.float32, "meta")


def test_stream_runtime_leaves_shared_networks_unchanged(torch_networks):
    """Another loop (a reference Animator) may share the Networks: the runtime takes a view of them."""
    networks = torch_networks
    before = (networks.clone_outputs, dict(networks.stable_inputs), dict(networks.backends))
    runtime = StreamRuntime(networks, CONFIG)
    assert (networks.clone_outputs, dict(networks.stable_inputs), dict(networks.backends)) == before
    assert runtime.nets is not networks and not runtime.nets.clone_outputs
    assert runtime.nets.backends == networks.backends  # the same backends, other call defaults
    assert runtime.nets.stable_inputs["denoising_unet"] == set(networks.backends["denoising_unet"].spec.input_names)
    # The shared networks still hand out copies: an Animator's piles are not overwritten by the next call.
    latents = torch.randn(4, 4, 16, 16)
    first = networks.vae_decoder(latents)
    kept = first.clone()
    networks.vae_decoder(torch.randn(4, 4, 16, 16))
    assert torch.equal(first, kept)
    viewed = runtime.nets.vae_decoder(latents)
    assert viewed.data_ptr() == networks.backends["vae_decoder"].buffers["frames"].data_ptr()
    assert networks.run("vae_decoder", clone=False, latents=latents)["frames"].data_ptr() == viewed.data_ptr()
    Animator(networks, CONFIG)  # and the reference loop still accepts them


# ---- real TensorRT on a GPU -----------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cuda0_are_one_device():
    models = load_models("synthetic", seed=0, device="cuda")
    networks = Networks.from_models(models, CONFIG)
    index = torch.cuda.current_device()
    again = Networks(networks.backends, networks.shapes, networks.dtype, f"cuda:{index}")
    assert networks.device == again.device == torch.device("cuda", index)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_REAL_TENSORRT, reason="needs the real TensorRT library and a CUDA GPU")
def test_graph_captured_tensorrt_runtime_equals_eager(tmp_path, parity_inputs):
    """Real TensorRT on a GPU: the runtime with CUDA graphs gives the eager runtime's frames (<= 1e-3
    relative; same engines, so the same kernels), keyframes included, and no context grew after capture."""
    from personalive_trt.engines import require_tensorrt

    assert not getattr(require_tensorrt(), "STUB", False)
    build("synthetic", tmp_path, backend="tensorrt", resolution=CONFIG.resolution, log=lambda line: None)
    results = []
    for graphs in (False, True):
        networks = load_networks(tmp_path, "tensorrt", "synthetic", CONFIG, "cuda")
        runtime = StreamRuntime(networks, CONFIG, seed=7, graphs=graphs)
        assert runtime.use_graphs is graphs
        contexts = {role: len(b.contexts) for role, b in networks.backends.items()}
        frames, keyframes = drive(runtime, parity_inputs)
        if graphs:  # every context was made before capture (warm-up); the stream added none
            assert {role: len(b.contexts) for role, b in networks.backends.items()} == contexts
        results.append(([f.float().cpu() for f in frames], keyframes))
    (eager, eager_kf), (graph, graph_kf) = results
    assert eager_kf == graph_kf
    errors = [float((g - e).abs().max() / e.abs().max()) for g, e in zip(graph, eager)]
    assert max(errors) <= 1e-3, errors


def test_engines_that_compute_something_else_stop_the_start_in_one_line(engines, trt, monkeypatch):
    """The engines folder kept the known answers `build` stored (the copied ONNX Runtime build's exports were reused;
    tests/test_build.py checks that its networks pass them); a stand-in that returns its outputs doubled makes the
    open path of `run` and `serve` with the explicit `--backend tensorrt` stop before its first frame, in one line
    (SelfCheckError: a user error, exit 1, tests/test_self_check.py). Opened directly: `run` refuses TensorRT on
    a CPU device before anything loads, and streams at 512², not these engines' 128²."""
    from personalive_trt.engines.known_answers import read_record
    from personalive_trt.runtime.animator import open_animator
    from personalive_trt.runtime.self_check import SelfCheckError

    out, *_ = engines
    assert read_record(out) is not None
    monkeypatch.setattr(trt, "stub_wrong_outputs", 2.0)  # every output twice what it is: relative error 1.0
    with pytest.raises(SelfCheckError) as stopped:
        open_animator("synthetic", backend="tensorrt", engines=out, device="cpu", config=CONFIG)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("self-check failed: tensorrt "), message
    assert message.endswith("(fp32): max relative error 1.0e+00 > 1e-04 against the torch outputs stored by build; "
                            "not starting, since --backend tensorrt was asked for (run with --backend torch (or "
                            "rebuild the engines on this machine))"), message
