"""The offline mode on the streaming runtime (runtime/offline_stream.py) against the offline reference loop.

Tiny synthetic weights at a 64 canvas, the sample's first 16 frames (7 windows), keyframe test from window 1 with
a threshold below any distance: 3 tested keyframes, then the sticky flag appends a bank per window until the
limit (4) stops it -- every regime of the growing bank in 7 windows (the denoising UNet, ~2/3 of the cost, runs
14 times in all). The pose and motion encoders (the pose encoder full size even in the tiny weights: most of the
cost) are test_offline's zero stand-ins on both sides. Eager on the CPU; the CUDA-graph test is marked gpu.
``--compile`` is checked with a stand-in compile (a real one costs minutes here).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import relative_error
from personalive_trt.engines.networks import Networks
from personalive_trt.filemode.offline import animate_offline, prepare_driving, prepare_reference
from personalive_trt.runtime import offline_stream
from personalive_trt.runtime.offline_loop import OfflineAnimator, offline_config
from personalive_trt.runtime.offline_stream import OfflineStreamRuntime
from personalive_trt.runtime.reference_loop import to_uint8
from test_offline import mesh, with_stand_ins, zero_noise  # noqa: F401 (mesh: the module's FaceMesh fixture)

FRAMES, LIMIT = 16, 4
#: The runtime against the reference loop, eager fp32 on the CPU: the same kernels on the same values (the
#: banks are sliced from slot buffers instead of concatenated), max error relative to the frames' range.
EAGER_TOLERANCE = 1e-5


def config():
    return offline_config(keyframe_limit=LIMIT, resolution=64, keyframe_start=0, keyframe_threshold=-1.0)


@pytest.fixture(scope="module")
def networks(parity_models):
    return with_stand_ins(Networks.from_models(parity_models, config()), ("pose_encoder", "motion_encoder"))[0]


@pytest.fixture(scope="module")
def prepared(mesh):  # noqa: F811
    from personalive_trt.bench.session import sample_frames

    reference, frames = sample_frames(256)
    return (prepare_reference(reference, mesh, config(), "sample_reference.png"),
            prepare_driving(frames, mesh, config(), "sample_driving.mp4", max_frames=FRAMES))


@pytest.fixture(scope="module")
def reference_run(networks, prepared):
    trace: dict = {}
    anim = OfflineAnimator(networks, config(), noise=zero_noise, trace=trace)
    anim.fuse_reference(prepared[0])
    frames = np.concatenate(list(animate_offline(anim, prepared[1])))
    return frames, trace["calls"]


def run_runtime(networks, prepared, run_config=None, **kwargs):
    """Every output window as uint8 and the decoded floats behind it (ring 1: ``video`` is still that window's
    when it is handed out), with the banks in effect per window."""
    runtime = OfflineStreamRuntime(networks, FRAMES, run_config or config(), noise=zero_noise, ring=1, **kwargs)
    runtime.fuse_reference(prepared[0])
    frames, videos = [], []
    for window in runtime.animate(prepared[1]):
        frames.append(window)
        videos.append(runtime.video.clone())
    return runtime, np.concatenate(frames), videos


def test_offline_runtime_matches_the_offline_loop(networks, prepared, reference_run):
    expected, calls = reference_run
    assert [c["num_keyframes"] for c in calls] == [0, 1, 2, 3, 4, 4, 4]  # tested 1-3, sticky 4, then the limit
    assert [c["keyframe_tested"] for c in calls] == [False, True, True, True] + [False] * 3
    runtime, frames, videos = run_runtime(networks, prepared)
    assert not runtime.use_graphs and runtime.bank_slots == LIMIT
    assert runtime.kv[0][0].shape[1] == (1 + LIMIT) * runtime.shapes.banks[0].tokens  # sized before window 0
    assert frames.shape == expected.shape == (FRAMES, 64, 64, 3)
    # banks in effect at window i = the reference loop's count after window i-1 (it appends at its end)
    assert (runtime.keyframes, runtime.entries, runtime.add_flag) == (LIMIT, 4, True)
    errors = [relative_error(mine, call["video"]) for mine, call in zip(videos, calls[3:])]
    print("offline runtime vs offline loop, relative error per output window:", ", ".join(f"{e:.1e}" for e in errors))
    assert len(errors) == 4 and max(errors) <= EAGER_TOLERANCE, errors
    assert np.abs(frames.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    assert np.array_equal(np.concatenate([to_uint8(v) for v in videos]), frames)


def test_graph_keys_capture_the_lengths_that_persist(networks):
    """Lengths 1..4 and the limit are captured; the growing regime's lengths run eager (with the limit 4 here
    there is none left between them: see the 20-bank case below). The keyframe writes of the tested slots are
    captured, the sticky slots' run eager."""
    runtime = OfflineStreamRuntime(networks, FRAMES, config(), noise=zero_noise)
    keys, graphs = runtime.all_keys(), runtime.graph_keys()
    assert {key[1] for key in keys if key[0] == "steady"} == {key[1] for key in graphs if key[0] == "steady"} \
        == {0, 1, 2, 3, 4}
    assert [key for key in graphs if key[0] == "keyframe"] == [("keyframe", 1), ("keyframe", 2), ("keyframe", 3)]
    assert ("keyframe", 4) in keys
    # 80 frames: 23 windows could append 22 banks; the limit bites. With limit 20, lengths 5..20 grow.
    long = OfflineStreamRuntime(networks, 80, config(), keyframe_limit=LIMIT)
    assert long.bank_slots == LIMIT  # the limit bites: sized for it, not for the 23 windows
    wide = offline_config(keyframe_limit=20, resolution=64, keyframe_start=0, keyframe_threshold=-1.0)
    runtime = OfflineStreamRuntime.__new__(OfflineStreamRuntime)  # the key logic alone, no buffers
    runtime.config, runtime.keyframe_limit, runtime.bank_slots = wide, 20, 20
    runtime.windows = [()] * 23
    steady = {key[1] for key in runtime.graph_keys() if key[0] == "steady"}
    assert steady == {0, 1, 2, 3, 20} and {key[1] for key in runtime.all_keys() if key[0] == "steady"} == set(range(21))
    with pytest.raises(TypeError, match="takes the windows of a PreparedClip"):
        runtime.submit(np.zeros((4, 64, 64, 3), np.uint8))


def test_bank_slots_that_do_not_fit_are_refused_in_one_line(networks, monkeypatch):
    """Refused before anything is allocated; opened through the self-check on a fast path, the refusal is the only
    line (no path avoids it, so nothing falls back)."""
    from personalive_trt.runtime.self_check import open_checked
    from personalive_trt.runtime.testing import StandInCapture

    class OfflineGraphs(StandInCapture, OfflineStreamRuntime):
        pass

    need = offline_stream.bank_bytes(networks, 1 + LIMIT)
    monkeypatch.setattr(offline_stream, "available_memory", lambda device: need - 1)
    with pytest.raises(MemoryError) as refused:
        OfflineStreamRuntime(networks, FRAMES, config())
    message = str(refused.value)
    assert "\n" not in message and f"{FRAMES} frames need {1 + LIMIT} keyframe bank slots" in message
    assert f"({need / 2**20:.0f} MiB" in message and "--keyframe-limit (now 4)" in message and "--max-frames" in message
    lines: list[str] = []
    with pytest.raises(MemoryError) as refused:
        open_checked(networks, config(), graphs=True, runtime=OfflineGraphs, say=lines.append, frames=FRAMES)
    assert str(refused.value) == message and lines == []
    with pytest.raises(ValueError, match="keyframe_limit 5 is not in 0..4"):
        OfflineStreamRuntime(networks, FRAMES, config(), keyframe_limit=5)


def test_the_offline_start_is_self_checked_and_a_corrupted_replay_falls_back(networks):
    """The offline runtime opens through the same self-check as the online one (`run --mode offline`: its wiring is
    tests/test_offline_cli.py's): a captured window that replays wrong (runtime/testing.py's stand-in capture on
    the CPU, only the first and the check's window kinds captured) falls back to eager in the documented line."""
    from personalive_trt.runtime.self_check import FastPath, open_checked
    from personalive_trt.runtime.testing import StandInCapture
    from test_self_check import CheckedKindsOnly

    class CorruptOfflineGraphs(CheckedKindsOnly, StandInCapture, OfflineStreamRuntime):
        corrupt = True

    lines: list[str] = []
    start = open_checked(networks, config(), graphs=True, runtime=CorruptOfflineGraphs, say=lines.append,
                         frames=FRAMES)
    assert start.runtime.check_key() == ("steady", 0, 1, True, True)  # the test against the reference motion
    assert [c.what for c in start.checks] == ["CUDA graphs"] and start.checks[0].error > 1e-2
    assert start.path == FastPath() and isinstance(start.runtime, OfflineStreamRuntime)
    assert not start.runtime.use_graphs and not start.runtime.graphs and not start.runtime.reference_fused
    assert len(lines) == 1 and lines[0].startswith("self-check: CUDA graphs: max relative error "), lines
    assert lines[0].endswith("> 1e-05 against the same call run eagerly; running eager instead (--cuda-graphs off "
                             "selects it)"), lines


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offline_graphs_equal_eager_on_gpu(prepared):
    """On CUDA: the captured lengths replay, the growing regime runs eager, and the decoded frames equal the
    eager runtime's within 1e-5 of their range (test_runtime's bound for graphs against eager)."""
    from personalive_trt.models.weights import synthetic_models

    models = synthetic_models("tiny", device=torch.device("cuda"))
    nets = with_stand_ins(Networks.from_models(models, config()), ("pose_encoder", "motion_encoder"))[0]
    _, _, eager = run_runtime(nets, prepared, graphs=False)
    runtime, _, graphed = run_runtime(nets, prepared, graphs=True)
    assert runtime.use_graphs and set(runtime.graphs) == set(runtime.graph_keys())
    errors = [relative_error(g, e) for g, e in zip(graphed, eager)]
    assert len(errors) == 4 and max(errors) <= 1e-5, errors


def stand_in_compile(networks: Networks, folder) -> tuple[Networks, list[int], list[int]]:
    """``compile_networks``' plumbing over the same modules: each compiled role's torch backend behind a
    ``CompiledBackend`` sharing one ``CompiledState`` (frozen after the runtime's warm-up: then a recompilation
    raises), its module run as it is except for a probe in front of the denoising UNet: a real ``torch.compile``
    (dynamo, static shapes) of a function of its first bank input, whose backend records the bank length of each
    compilation, and whose body, which runs only where dynamo does not, records the lengths run eager."""
    from personalive_trt.engines.backends import TorchBackend
    from personalive_trt.runtime.compile import (COMPILED_ROLES, CompileCache, CompiledBackend, CompiledState,
                                                 CompileOptions)

    tokens = networks.shapes.banks[0].tokens
    compiled, eager = [], []

    def record(graph, example_inputs):
        compiled.append(example_inputs[0].shape[1] // tokens)
        return graph.forward

    def bank_length(bank):
        if not torch.compiler.is_compiling():
            eager.append(bank.shape[1] // tokens)
        return bank[:1, :1] + 0

    probe = torch.compile(bank_length, backend=record, dynamic=False)
    spec = networks.backends["denoising_unet"].spec
    bank_input = spec.input_names.index(networks.kv_names[0][0])

    class Probed(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *inputs):
            probe(inputs[bank_input])
            return self.module(*inputs)

    state = CompiledState(CompileOptions(cache_dir=folder), "stand-in", {}, CompileCache(folder), warm=True)
    backends = dict(networks.backends)
    for role in COMPILED_ROLES:
        real = networks.backends[role]
        if type(real) is TorchBackend:  # the encoders' stand-ins stay as they are
            module = Probed(real.module) if role == "denoising_unet" else real.module
            backends[role] = CompiledBackend(real, module, state, role, "stand-in")
    stand_in = Networks(backends, networks.shapes, networks.dtype, networks.device)
    stand_in.compiled = state
    return stand_in, compiled, eager


def test_compiled_runtime_compiles_the_persisting_lengths_only(parity_models, prepared, tmp_path):
    """``--compile``: the kinds of window compiled at construction are the captured ones (bank lengths 1..4 and
    the limit's); the growing regime runs uncompiled, with no recompilation, and the frames equal the eager
    runtime's. A limit of 5 over the same 7 windows puts one window in the growing regime: 4 banks (length 5)."""
    wide = offline_config(keyframe_limit=5, resolution=64, keyframe_start=0, keyframe_threshold=-1.0)
    eager_nets = with_stand_ins(Networks.from_models(parity_models, wide), ("pose_encoder", "motion_encoder"))[0]
    nets, compiled, eager = stand_in_compile(eager_nets, tmp_path)
    runtime = OfflineStreamRuntime(nets, FRAMES, wide, noise=zero_noise, ring=1)
    assert runtime.nets.compiled.frozen and sorted(compiled) == [1, 2, 3, 4, 6] and eager == []
    assert {"denoising_unet", "vae_decoder", "pose_guider", "reference_unet", "bank_projector"} \
        <= set(runtime.nets.compiled.compile_s)  # each warmed through the compiled path
    _, frames, videos = run_runtime(nets, prepared, wide)
    assert sorted(compiled) == [1, 2, 3, 4, 6]  # no window compiled anything (the frozen state would raise)
    assert eager == [5]  # window 5, the only length in the growing regime, ran uncompiled
    _, expected, reference = run_runtime(eager_nets, prepared, wide)
    errors = [relative_error(mine, theirs) for mine, theirs in zip(videos, reference)]
    assert len(errors) == 4 and max(errors) <= EAGER_TOLERANCE, errors
    assert np.array_equal(frames, expected)
