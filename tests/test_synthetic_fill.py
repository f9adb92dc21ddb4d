"""``synthetic:SIZE:device``: networks built on the meta device and filled in place where they run.

On CPU with the tiny config (its fixed-size networks are at their released sizes, but for the motion encoder's
attention width). The full-size networks' layout
is tests/test_weights.py's (meta build == shared/reference/layout); the full-size fill itself runs on the GPU
check's machine (gpu-marked).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from personalive_trt.engines.folder import weights_fingerprint
from personalive_trt.models.synthetic import CONFIGS, fill_module_, hash_fill_
from personalive_trt.models.weights import build_module, load_models, synthetic_models

@pytest.fixture(scope="module")
def tiny_device():
    return synthetic_models("tiny:device", seed=0)


def filled(name: str, seed: int = 0, config: str = "tiny") -> torch.nn.Module:
    with torch.device("meta"):
        module = build_module(name, CONFIGS[config])
    module.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):  # poison: every element must be written
            tensor.fill_(float("nan") if tensor.is_floating_point() else -1)
    fill_module_(module, seed, lambda key: name)
    return module


def test_device_fill_is_deterministic_finite_and_chunk_free():
    a = hash_fill_(torch.empty(3, 1000), seed32=12345, mean=0.5, std=0.1)
    b = hash_fill_(torch.empty(3, 1000), seed32=12345, mean=0.5, std=0.1, chunk=77)  # chunking changes nothing
    assert torch.equal(a, b)
    assert not torch.equal(a, hash_fill_(torch.empty(3, 1000), seed32=12346, mean=0.5, std=0.1))
    bound = 3.0 ** 0.5 * 0.1
    assert a.isfinite().all() and (a - 0.5).abs().max() < bound
    assert abs(a.mean().item() - 0.5) < 0.01 and abs(a.std().item() - 0.1) < 0.01  # uniform: std as asked
    assert len(a.unique()) > 2900  # no short cycle in the hash


def test_tiny_device_weights_load_strictly_and_are_finite(tiny_device):
    assert tiny_device.source == "synthetic:tiny:device (seed 0)" and tiny_device.synthetic
    for name, module in tiny_device.modules().items():
        state = module.state_dict()
        with torch.device("meta"):
            built = build_module(name, CONFIGS["tiny"])
        built.load_state_dict(state, strict=True, assign=True)  # every key, nothing else, right shapes
        for key, value in state.items():
            if value.is_floating_point():
                assert value.isfinite().all() and value.half().isfinite().all(), f"{name}: {key}"


def test_device_fill_is_deterministic_and_writes_every_element(tiny_device):
    for name in ("pose_guider", "vae", "image_encoder"):
        again, other_seed = filled(name), filled(name, seed=1)
        ours = tiny_device.modules()[name].state_dict()
        for key, value in again.state_dict().items():
            assert torch.equal(value, ours[key]), f"{name}: {key}"  # NaN poison would fail equality
        weight = next(k for k, v in ours.items() if v.dim() == 4 or k.endswith("proj.weight"))
        assert not torch.equal(ours[weight], other_seed.state_dict()[weight]), f"{name}: {weight}"


def test_non_persistent_buffers_are_recomputed(tiny_device):
    """No checkpoint carries them and ``to_empty`` leaves them uninitialised: they equal what __init__ computes."""
    for name in ("image_encoder", "motion_encoder"):
        module, fresh = tiny_device.modules()[name], dict(build_module(name, CONFIGS["tiny"]).named_buffers())
        state = module.state_dict()
        recomputed = [key for key, _ in module.named_buffers() if key not in state]
        assert recomputed, name
        for key in recomputed:
            assert torch.equal(dict(module.named_buffers())[key], fresh[key]), f"{name}: {key}"


def test_device_weights_magnitudes_match_the_host_synthesizer(tiny_device):
    """Same value rules: every learned tensor's spread is within a few % of the host synthesizer's."""
    from personalive_trt.models.synthetic import synth_tensor

    checked = 0
    for name in ("pose_guider", "vae", "motion_extractor"):
        for key, value in tiny_device.modules()[name].state_dict().items():
            if value.is_floating_point() and 4096 <= value.numel() <= 1 << 20:
                theirs = synth_tensor(0, name, key, value.shape)
                assert value.std().item() == pytest.approx(theirs.std().item(), rel=0.05), f"{name}: {key}"
                assert value.mean().item() == pytest.approx(theirs.mean().item(), abs=0.02), f"{name}: {key}"
                checked += 1
    assert checked > 20


def test_load_models_takes_the_spec():
    from personalive_trt.models.weights import parse_weights_spec

    assert parse_weights_spec("synthetic:full:device") == ("synthetic", "full:device")
    with pytest.raises(ValueError, match="unknown synthetic size"):
        load_models("synthetic:full:gpu")


def test_the_fingerprint_differs_from_the_host_synthesizer():
    assert weights_fingerprint("synthetic:full:device") == "synthetic:full:device:seed0"
    assert weights_fingerprint("synthetic:full:device") != weights_fingerprint("synthetic:full")
    with pytest.raises(ValueError, match="optionally"):
        synthetic_models("full:gpu")


FILL_PEAK = textwrap.dedent("""
    import resource, torch
    from personalive_trt.models.synthetic import CONFIGS, fill_module_
    from personalive_trt.models.weights import build_module
    with torch.device("meta"):
        module = build_module("motion_extractor", CONFIGS["full"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    module.to_empty(device="cpu")
    fill_module_(module, 0, lambda key: "motion_extractor", chunk=1 << 20)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    print(size, peak - before)
""")


def test_full_size_fill_allocates_the_model_once():
    """The released motion extractor (28 M numbers, 112 MB) filled in place: the process grows by about its size
    plus one chunk of temporaries, where the host synthesizer holds float64 values, a float32 copy and the module."""
    done = subprocess.run([sys.executable, "-c", FILL_PEAK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    size, growth = map(int, done.stdout.split())
    assert size > 100e6
    assert growth < 1.5 * size, (size, growth)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_size_on_the_gpu_is_fast_finite_and_the_same_bits_as_on_cpu():
    import time

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    models = synthetic_models("full:device", device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    size = sum(t.numel() * t.element_size() for m in models.modules().values() for t in m.state_dict().values())
    assert seconds < 60, seconds
    assert torch.cuda.max_memory_allocated() < size + (1 << 30)  # the model once, plus fill temporaries
    for name, module in models.modules().items():
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                assert value.isfinite().all(), f"{name}: {key}"
    with torch.device("meta"):
        on_cpu = build_module("pose_guider", CONFIGS["full"]).half()
    on_cpu.to_empty(device="cpu")
    fill_module_(on_cpu, 0, lambda key: "pose_guider")
    for key, value in models.pose_guider.state_dict().items():
        assert torch.equal(value.cpu(), on_cpu.state_dict()[key]), key  # integer hash: device-independent
