"""StreamRuntime: parity with the reference Animator, the sync-free/allocation-free rule, the async API.

The parity stream (tests/parity.py; computed once per session in conftest.py) runs 8 calls that take 3
history keyframes (and decline one), swaps the reference and runs 2 more; every loop gets the same noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from parity import (ANIMATOR_KEYFRAMES, CALLS_AFTER_SWAP, CALLS_BEFORE_SWAP, CONFIG, ORT_TOLERANCE,
                    RUNTIME_KEYFRAMES, TORCH_TOLERANCE, drive, seeded_noise)
from conftest import relative_error
from personalive_trt.media import framing
from personalive_trt.config import StreamConfig
from personalive_trt.runtime.reference_loop import Animator, NonFiniteError
from personalive_trt.runtime import StreamRuntime
from personalive_trt.models.weights import synthetic_models


@pytest.fixture
def models(parity_models):
    return parity_models


@pytest.fixture
def inputs(parity_inputs):
    return parity_inputs


def test_runtime_matches_the_animator(parity_animator_stream, parity_torch_stream):
    expected, expected_keyframes, _ = parity_animator_stream
    frames, keyframes, _, _ = parity_torch_stream
    errors = [relative_error(a, b) for a, b in zip(frames, expected)]
    print("torch runtime vs Animator, relative error per call:", ", ".join(f"{e:.1e}" for e in errors))
    assert len(errors) == CALLS_BEFORE_SWAP + CALLS_AFTER_SWAP
    assert max(errors) <= TORCH_TOLERANCE, errors
    assert expected_keyframes[:CALLS_BEFORE_SWAP] == ANIMATOR_KEYFRAMES
    assert keyframes[:CALLS_BEFORE_SWAP] == RUNTIME_KEYFRAMES
    assert keyframes[CALLS_BEFORE_SWAP:] == [0] * CALLS_AFTER_SWAP  # the swap starts a new stream


def test_step_never_reads_the_device_nor_allocates(parity_animator_stream, parity_torch_stream):
    _, _, control = parity_animator_stream
    _, _, guards, moved = parity_torch_stream
    # The guard does fail where it should: the reference loop reads boxes and checks finiteness on the host.
    assert any(v.startswith("host read") for v in control), control
    assert len(guards) == CALLS_BEFORE_SWAP + CALLS_AFTER_SWAP
    assert [v for g in guards for v in g.violations] == []
    assert moved == []  # every buffer kept its address through every call and a reference swap


def test_uint8_frames_are_the_truncated_floats(models, inputs):
    config = StreamConfig(resolution=128)
    runtime = StreamRuntime.from_models(models, config, noise=seeded_noise(2))
    reference, _, chunks = inputs
    runtime.fuse_reference(framing.resize_square(reference, 128))
    small = np.stack([framing.resize_square(f, 128) for f in chunks[0]])
    out = runtime.step(small)
    assert out.dtype == np.uint8 and out.shape == (4, 128, 128, 3)
    assert np.array_equal(out, (runtime.video.numpy() * 255).astype(np.uint8))


def test_submit_collect_pipelines_and_guards_the_ring(models, inputs):
    config = StreamConfig(resolution=128)
    runtime = StreamRuntime.from_models(models, config, noise=seeded_noise(3))
    reference, _, chunks = inputs
    small = [np.stack([framing.resize_square(f, 128) for f in chunk]) for chunk in chunks[:3]]
    with pytest.raises(RuntimeError, match="no reference fused"):
        runtime.submit(small[0])
    runtime.fuse_reference(framing.resize_square(reference, 128))
    with pytest.raises(RuntimeError, match="nothing submitted"):
        runtime.collect()
    assert runtime.submit(small[0]) == 0 and runtime.submit(small[1]) == 1
    with pytest.raises(RuntimeError, match="2 calls already in flight"):
        runtime.submit(small[2])
    with pytest.raises(RuntimeError, match="collect"):
        runtime.step(small[2])
    first, second = runtime.collect(), runtime.collect()
    assert (first.index, second.index) == (0, 1)
    assert first.event.query() and first.wait().shape == (4, 128, 128, 3)
    assert first.frames.base is not None  # a view of the host ring, not a copy
    with pytest.raises(ValueError, match=r"expected uint8 array of shape \(4, 128, 128, 3\)"):
        runtime.submit(small[0][:3])


def test_non_finite_output_is_reported_at_collect(models, inputs):
    config = StreamConfig(resolution=128)
    runtime = StreamRuntime.from_models(models, config, noise=seeded_noise(4))
    reference, _, chunks = inputs
    runtime.fuse_reference(framing.resize_square(reference, 128))
    runtime.noise = lambda t: t.fill_(float("nan"))
    runtime.submit(np.stack([framing.resize_square(f, 128) for f in chunks[0]]))
    with pytest.raises(NonFiniteError, match="call 0: .*NaN/Inf"):
        runtime.collect().wait()


def nan_pose_encoder(networks, after_calls: int):
    """Makes the pose encoder's outputs NaN from its ``after_calls``-th call on (on the instance)."""
    backend = networks.backends["pose_encoder"]
    infer, calls = backend.infer, [0]

    def poisoned(inputs, *args, **kwargs):
        outputs = infer(inputs, *args, **kwargs)
        calls[0] += 1
        if calls[0] > after_calls:
            for value in outputs.values():
                value.fill_(float("nan"))
        return outputs

    backend.infer = poisoned
    return backend


def test_non_finite_keypoints_end_the_call_cleanly(models, inputs):
    """NaN keypoints are flagged on the device and raised at collect, never turned into gather indices
    (on CUDA an out-of-range gather is a device-side assert that kills the process)."""
    runtime = StreamRuntime.from_models(models, CONFIG, noise=seeded_noise(4))
    reference, _, chunks = inputs
    runtime.fuse_reference(reference)
    backend = nan_pose_encoder(runtime.nets, after_calls=1)
    runtime.step(chunks[0])  # call 0: finite
    runtime.submit(chunks[1])
    with pytest.raises(NonFiniteError, match="call 1: the pose encoder's keypoints contain NaN/Inf"):
        runtime.collect().wait()
    del backend.infer
    runtime.swap_reference(reference)  # the session can start over
    assert runtime.step(chunks[0]).shape == (4, 128, 128, 3)


def test_non_finite_keypoints_in_the_animator_raise(models, inputs):
    animator = Animator(models, CONFIG, noise=seeded_noise(4))
    reference, _, chunks = inputs
    animator.fuse_reference(reference)
    backend = nan_pose_encoder(animator.nets, after_calls=0)
    with pytest.raises(NonFiniteError, match="keypoints contain NaN/Inf"):
        animator.step(chunks[0])
    del backend.infer


def test_config_must_match_the_networks(models):
    runtime = StreamRuntime.from_models(models, StreamConfig(resolution=128))
    with pytest.raises(ValueError, match="networks were built for"):
        StreamRuntime(runtime.nets, StreamConfig(resolution=256))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StreamRuntime(runtime.nets, StreamConfig(resolution=128), graphs=True)


def test_onnxruntime_runtime_matches_the_animator(parity_onnx_build, inputs, parity_animator_stream):
    """The runtime over ONNX Runtime sessions of the built engines folder (``load_networks``, as ``run --backend
    onnxruntime`` loads it, through ``StreamRuntime.from_engines``: no torch weights) against the reference Animator, every call of the parity stream
    (keyframes and a swap included): max error <= ORT_TOLERANCE (1e-2) of the frame range, the README's stated
    ONNX Runtime tolerance (kernel rounding amplified by the random-weight recurrence, shared README section 8)."""
    from personalive_trt.engines import OnnxRuntimeBackend

    runtime = StreamRuntime.from_engines(parity_onnx_build, CONFIG, backend="onnxruntime", device="cpu",
                                         noise=seeded_noise(1))
    assert all(isinstance(b, OnnxRuntimeBackend) for b in runtime.nets.backends.values())
    assert runtime.nets.description == "onnxruntime" and not runtime.use_graphs
    frames, keyframes = drive(runtime, inputs)
    expected, _, _ = parity_animator_stream
    errors = [relative_error(a, b) for a, b in zip(frames, expected)]
    print("onnxruntime runtime vs Animator, relative error per call:", ", ".join(f"{e:.1e}" for e in errors))
    assert len(errors) == CALLS_BEFORE_SWAP + CALLS_AFTER_SWAP
    assert max(errors) <= ORT_TOLERANCE, errors
    assert keyframes[:CALLS_BEFORE_SWAP] == RUNTIME_KEYFRAMES
    assert keyframes[CALLS_BEFORE_SWAP:] == [0] * CALLS_AFTER_SWAP


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replay_equals_eager_on_gpu(inputs):
    """On a GPU: the captured graphs give the eager runtime's frames (<= 1e-5 relative)."""
    models = synthetic_models("tiny", device=torch.device("cuda"))
    results = []
    for graphs in (False, True):
        runtime = StreamRuntime.from_models(models, CONFIG, seed=7, graphs=graphs)
        assert runtime.use_graphs is graphs
        frames, keyframes = drive(runtime, inputs)
        results.append((frames, keyframes))
    (eager, eager_kf), (graph, graph_kf) = results
    assert eager_kf == graph_kf
    errors = [relative_error(g, e) for g, e in zip(graph, eager)]
    assert max(errors) <= 1e-5, errors


def test_package_exposes_the_runtime():
    import personalive_trt.runtime as runtime_pkg

    assert Path(runtime_pkg.__file__).parent.name == "runtime"
    assert runtime_pkg.StreamRuntime is StreamRuntime
