"""torch.compile of the torch backend (personalive_trt.runtime.compile).

CPU (inductor's C++ backend, tiny weights, fp32): the compiled runtime over the parity stream (keyframes and
a reference swap) equals the eager runtime; the caller's modules are untouched; a recompilation after the
warm-up raises; a second compile over the same cache folder starts warm; the option's errors are one line.
GPU (``gpu``-marked): compiled networks inside the runtime's CUDA graphs against the eager runtime in fp16.
The compiled runtime is built once per session (its compile is the cost of this file).
"""
from __future__ import annotations

import shutil

import pytest
import torch

from parity import (CALLS_AFTER_SWAP, CALLS_BEFORE_SWAP, CONFIG, RUNTIME_KEYFRAMES, TORCH_TOLERANCE, call_errors,
                    drive, seeded_noise)
from personalive_trt.engines.networks import Networks
from personalive_trt.runtime import StreamRuntime
from personalive_trt.runtime.compile import (COMPILED_ROLES, CompileError, CompileOptions, CompiledBackend,
                                             compile_is_warm, compiled_module, require_compiler, resolve_compile)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="inductor's CPU backend needs a C++ compiler")


@pytest.fixture(scope="session")
def compile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines") / "torch_compile"  # where --engines DIR puts it


@pytest.fixture(scope="session")
def compiled_stream(parity_models, parity_inputs, compile_dir):
    """The compiled runtime over the parity stream: (runtime, frames, keyframes)."""
    options = CompileOptions(cache_dir=compile_dir)
    runtime = StreamRuntime.from_models(parity_models, CONFIG, noise=seeded_noise(1), compile=options)
    frames, keyframes = drive(runtime, parity_inputs)
    return runtime, frames, keyframes


def test_compiled_runtime_matches_eager(compiled_stream, parity_torch_stream):
    runtime, frames, keyframes = compiled_stream
    expected, expected_keyframes, _, _ = parity_torch_stream
    errors = call_errors(frames, expected, "compiled vs eager runtime")
    assert max(errors) <= TORCH_TOLERANCE, errors  # 1e-3 relative to max |frame|, fp32
    assert keyframes[:CALLS_BEFORE_SWAP] == RUNTIME_KEYFRAMES == expected_keyframes[:CALLS_BEFORE_SWAP]
    assert keyframes[CALLS_BEFORE_SWAP:] == [0] * CALLS_AFTER_SWAP
    # Every per-step network ran compiled code, frozen before the stream (which a recompile would have failed).
    for role in COMPILED_ROLES:
        backend = runtime.nets.backends[role]
        assert isinstance(backend, CompiledBackend), role
    assert runtime.nets.backends["denoising_unet"].how.startswith("regions:")
    assert runtime.nets.backends["pose_guider"].how == "whole"
    report = runtime.compile_report()
    assert report["cache"] == "cold"
    assert set(report["per_network"]) == set(COMPILED_ROLES)
    assert runtime.nets.compiled.frozen


def test_compile_leaves_the_callers_modules_untouched(compiled_stream, parity_models):
    runtime, _, _ = compiled_stream
    for role in COMPILED_ROLES:
        name = runtime.nets.backends[role].spec.component
        original = getattr(parity_models, name)
        assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in original.modules()), name
        # The copy runs on the caller's tensors themselves: no weights copied.
        copied = {p.data_ptr() for p in runtime.nets.backends[role].module.parameters()}
        assert copied == {p.data_ptr() for p in original.parameters()}, name


def test_channels_last_copy_has_its_own_conv_weights(parity_models):
    """``channels_last``: the copy's convolution weights are channels-last copies; the caller's keep their layout
    (torch.compile is lazy: nothing is compiled here)."""
    guider = parity_models.pose_guider
    before = {name: (p.data_ptr(), p.is_contiguous()) for name, p in guider.named_parameters()}
    module, how = compiled_module(guider, CompileOptions(channels_last=True), regional=False)
    assert how == "whole"
    assert {name: (p.data_ptr(), p.is_contiguous()) for name, p in guider.named_parameters()} == before
    convs = [p for p in module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not {p.data_ptr() for p in convs} & {ptr for ptr, _ in before.values()}
    others = [p for p in module.parameters() if p.dim() != 4]
    assert others and {p.data_ptr() for p in others} <= {ptr for ptr, _ in before.values()}


def test_recompilation_after_the_warm_up_fails_loudly(compiled_stream):
    runtime, _, _ = compiled_stream
    guider = runtime.nets.backends["pose_guider"]
    spec = guider.spec.inputs[0]
    shape = list(spec.opt_shape)
    shape[-1] //= 2  # a size the stream never uses
    maps = torch.zeros(shape, dtype=guider.input_dtypes[spec.name])
    # The module directly, as the backend calls it: the spec's range check would refuse the shape first.
    with pytest.raises(torch._dynamo.exc.RecompileError), runtime.nets.compiled.calling("pose_guider"):
        guider.module(maps)


def test_the_warm_up_fills_the_cache_for_auto(compiled_stream, parity_models, compile_dir):
    """The cold start bundled its artefacts: ``--compile auto`` now compiles this configuration, no other.
    (A warm start's own timing is the GPU matrix's ``compile_s.warm``: a second compile costs minutes here.)"""
    runtime, _, _ = compiled_stream
    options = CompileOptions(cache_dir=compile_dir)
    networks = Networks.from_models(parity_models, CONFIG)
    assert compile_is_warm(networks, options)
    bundle = compile_dir / f"{runtime.nets.compiled.digest}.bin"
    assert bundle.stat().st_size > 0 and bundle.with_suffix(".json").is_file()
    assert not compile_is_warm(networks, CompileOptions(channels_last=True, cache_dir=compile_dir))
    assert resolve_compile("auto", "torch", compile_dir.parent, networks).folder() == compile_dir
    assert resolve_compile("auto", "torch", compile_dir, networks) is None  # another folder: cold
    assert (compile_dir / "inductor").is_dir()  # inductor's own caches live in the folder too


def test_compile_option_errors(parity_models, monkeypatch, tmp_path):
    networks = Networks.from_models(parity_models, CONFIG)
    with pytest.raises(ValueError, match="--compile 'yes'"):
        resolve_compile("yes", "torch")
    with pytest.raises(ValueError, match="only the torch backend"):
        resolve_compile("on", "tensorrt")
    with pytest.raises(ValueError, match="reference-loop"):
        resolve_compile("on", "torch", loop="reference")
    assert resolve_compile("auto", "tensorrt") is None
    assert resolve_compile("off", "torch", None, networks) is None
    assert resolve_compile("on", "torch", tmp_path, networks).folder() == tmp_path / "torch_compile"
    with pytest.raises(ValueError, match="attention kernel"):
        CompileOptions(attention="fastest")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(CompileError, match="no-such-compiler-here") as caught:
        require_compiler(torch.device("cpu"))
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="only the torch backend"):
        StreamRuntime.from_models(parity_models, CONFIG, backend="onnxruntime", compile=True)


def test_compile_on_a_torch_without_the_apis_names_the_version_needed(monkeypatch):
    """torch 2.4-2.6 (which the package allows) lack the cache artefact API and dynamo's recompile limits."""
    monkeypatch.delattr(torch.compiler, "save_cache_artifacts")
    with pytest.raises(CompileError) as caught:
        require_compiler(torch.device("cpu"))
    assert str(caught.value) == (f"--compile needs torch >= 2.7 (torch.compiler.save_cache_artifacts is missing in "
                                 f"torch {torch.__version__}): upgrade torch, or run with --compile off")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_graphs_match_eager_fp16_on_gpu(parity_inputs, tmp_path):
    """On a GPU, `run --compile on --cuda-graphs on`: opened through the self-check, both checks pass on the real
    compile and capture (the compiled warm-up call against the uncompiled call before its capture, <= 2e-2 in fp16;
    the replay against the compiled call, <= 1e-3), then the compiled networks inside the runtime's CUDA graphs vs
    the eager runtime, fp16 (<= 2e-2)."""
    from personalive_trt.models.weights import synthetic_models
    from personalive_trt.runtime.compile import compile_networks
    from personalive_trt.runtime.self_check import FastPath, open_checked

    require_compiler(torch.device("cuda"))
    models = synthetic_models("tiny", device=torch.device("cuda"), dtype=torch.float16)
    eager = StreamRuntime.from_models(models, CONFIG, seed=7, graphs=False)
    expected, expected_keyframes = drive(eager, parity_inputs)
    lines: list[str] = []
    start = open_checked(Networks.from_models(models, CONFIG), CONFIG, seed=7, graphs=True, say=lines.append,
                         compile=lambda networks: compile_networks(networks, CompileOptions(cache_dir=tmp_path)),
                         explicit={"compile": "--compile on", "graphs": "--cuda-graphs on"})
    assert lines == [] and start.path == FastPath(compile=True, graphs=True), lines
    assert [(c.what, c.ok) for c in start.checks] == [("torch.compile", True), ("CUDA graphs", True)], \
        [c.describe() for c in start.checks]
    compiled = start.runtime
    assert compiled.use_graphs and compiled.graphs and compiled.nets.compiled.frozen
    frames, keyframes = drive(compiled, parity_inputs)
    assert keyframes == expected_keyframes
    errors = call_errors([f.float() for f in frames], [e.float() for e in expected], "compiled graphs vs eager, fp16")
    assert max(errors) <= 2e-2, errors
