"""The reference Animator's API on tiny synthetic models: input guards, noise hook, reference swap.

At 128x128 (the smallest size the stream allows; the default is 512): nothing here depends on the
resolution but the shapes, which are derived from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from personalive_trt import Animator, NonFiniteError, StreamConfig, synthetic_models
from personalive_trt.media.framing import resize_square
from personalive_trt.media.sample import sample_reference
from personalive_trt.media import read_image

CONFIG = StreamConfig(resolution=128)
SIZE = CONFIG.resolution


@pytest.fixture(scope="module")
def tiny_models():
    return synthetic_models("tiny", seed=0)


def driving(seed: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_step_rejects_bad_frames(tiny_models):
    anim = Animator(tiny_models, CONFIG)
    frames = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(RuntimeError, match="fuse_reference"):
        anim.step(frames)
    anim.fuse_reference(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 array of shape \(4, 128, 128, 3\), got uint8 \(3, 128"):
        anim.step(frames[:3])
    with pytest.raises(ValueError, match="got float32"):
        anim.step(frames.astype(np.float32))
    with pytest.raises(TypeError, match="numpy uint8 array"):
        anim.step(torch.zeros(4, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"reference image: expected a uint8 RGB array of shape \(512, 512, 3\)"):
        Animator(tiny_models).fuse_reference(np.zeros((256, 256, 3), np.uint8))


def test_non_finite_step_raises(tiny_models):
    anim = Animator(tiny_models, CONFIG, noise=lambda t: t.fill_(float("nan")))
    anim.fuse_reference(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        anim.step(np.zeros((4, SIZE, SIZE, 3), np.uint8))


def test_reference_swap_equals_a_fresh_stream(tiny_models):
    """swap_reference (reset + fuse) leaves nothing of the previous reference or stream behind."""
    first = resize_square(read_image(sample_reference()), SIZE)
    second = np.ascontiguousarray(first[:, ::-1])
    zero = lambda t: t.zero_()  # noqa: E731
    swapped = Animator(tiny_models, CONFIG, noise=zero)
    swapped.fuse_reference(first)
    swapped.step(driving(1))
    swapped.swap_reference(second)
    fresh = Animator(tiny_models, CONFIG, noise=zero)
    fresh.fuse_reference(second)
    assert swapped.count == 0 and not swapped.keyframe_banks
    torch.testing.assert_close(swapped.step_float(driving(2)), fresh.step_float(driving(2)), rtol=0, atol=0)


def test_noise_hook_and_seed(tiny_models):
    """The noise hook fills every draw; without it, the seed makes runs repeatable."""
    shapes = []
    anim = Animator(tiny_models, CONFIG, noise=lambda t: (shapes.append(tuple(t.shape)), t.zero_()))
    anim.fuse_reference(driving(3, 1)[0])
    anim.step(driving(4))
    latent = SIZE // 8
    assert shapes == [(1, 4, 12, latent, latent), (1, 4, 4, latent, latent)]  # warm-up pile, then a chunk per call
    a, b, c = (Animator(tiny_models, CONFIG, seed=s) for s in (7, 7, 8))
    for anim in (a, b, c):
        anim.fuse_reference(driving(3, 1)[0])
    outs = [anim.step_float(driving(4)) for anim in (a, b, c)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_conditions_alone_and_latent_pile_injection(tiny_models):
    """``step_conditions`` computes a call's conditioning exactly as ``step`` does (same keypoints, maps, motion
    states and pose features); ``set_latent_pile`` then lets ``step`` go on from a given state: with the latents
    the full stream had at that call, the next call (a steady one, reading the piles the conditioning-only call
    left) gives the full stream's frames bit for bit."""
    reference = driving(5, 1)[0]
    chunks = [driving(10 + i) for i in range(2)]
    zero = lambda t: t.zero_()  # noqa: E731
    full_trace, cond_trace = {}, {}
    full = Animator(tiny_models, CONFIG, noise=zero, trace=full_trace)
    cond = Animator(tiny_models, CONFIG, noise=zero, trace=cond_trace)
    for anim in (full, cond):
        anim.fuse_reference(reference)
    full.step_float(chunks[0])
    cond.step_conditions(chunks[0])
    mine, theirs = cond_trace["calls"][0], full_trace["calls"][0]
    for name in ("kp_draw", "boxes", "maps", "motion_encoder_out", "pose_fea", "motion_states", "motion_bank"):
        assert torch.equal(mine[name], theirs[name]), name
    assert "noise_pred" not in mine and "latents_in" not in mine
    assert cond.count == full.count == 1
    with pytest.raises(ValueError, match=r"set_latent_pile: expected shape \(1, 4, 12, 16, 16\), got \(1, 4, 16, 16, 16\)"):
        cond.set_latent_pile(torch.zeros(1, 4, 16, 16, 16))
    cond.set_latent_pile(torch.cat(full.latent_pile, dim=2))
    torch.testing.assert_close(cond.step_float(chunks[1]), full.step_float(chunks[1]), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="set_latent_pile: no reference fused"):
        Animator(tiny_models, CONFIG).set_latent_pile(torch.zeros(1, 4, 12, 16, 16))
