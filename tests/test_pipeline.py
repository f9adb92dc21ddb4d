"""The reference streaming pipeline against the original's golden stream (small weights, fp32, CPU).

Tolerances (shared/reference README section 8): network units <= 1e-4 relative, integer
decisions exact, stream outputs <= 1e-2 relative. Tests that start from the stored reference
latent (not our own VAE encode, the most rounding-sensitive block) are held much tighter.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import frame_stats, golden_driving_frames, relative_error
from personalive_trt import Animator, StreamConfig
from personalive_trt.runtime.reference_loop import clip_pixels

UNIT = 1e-4


def zero_noise(t: torch.Tensor) -> None:
    t.zero_()


def run_calls(models, stream, n_calls, from_golden_latent):
    trace: dict = {}
    anim = Animator(models, StreamConfig(), noise=zero_noise, trace=trace)
    ref_u8 = stream["ref_image_u8"].numpy()
    latent = stream["fuse"]["ref_image_latents"] if from_golden_latent else None
    anim.fuse_encoded(anim.encode_reference(ref_u8, latent=latent))
    frames = golden_driving_frames(stream)
    outputs = [anim.step_float(frames[np.array(stream["calls"][i]["frame_indices"])]) for i in range(n_calls)]
    return anim, trace, outputs


def check_call(mine: dict, video: torch.Tensor, gold: dict, stream_tol: float) -> dict[str, float]:
    """Compare one call's intermediates with the golden call; returns the measured errors."""
    errors = {}
    assert torch.equal(mine["boxes"].cpu(), gold["boxes"]), "face boxes differ"
    maps = mine["maps"]
    assert torch.equal((maps != 0).sum(dim=(2, 3)).cpu(), gold["kpmap_nonzero"]), "keypoint-map pixels differ"
    errors["kp_draw"] = relative_error(mine["kp_draw"], gold["kp_draw"])
    errors["motion_encoder_out"] = relative_error(mine["motion_encoder_out"], gold["motion_encoder_out"])
    errors["pose_fea_sub16"] = relative_error(mine["pose_fea"][..., ::16, ::16], gold["pose_fea_sub16"])
    errors["unet_motion"] = relative_error(mine["motion_states"], gold["unet_motion_hidden_states"])
    for name in ("kp_draw", "motion_encoder_out", "pose_fea_sub16", "unet_motion"):
        assert errors[name] <= UNIT, (name, errors[name])
    assert torch.equal(mine["timesteps"].cpu(), gold["unet_timesteps"])
    errors["latents_in"] = relative_error(frame_stats(mine["latents_in"], 2), gold["unet_latents_in_frame_stats"])
    errors["noise_pred"] = relative_error(frame_stats(mine["noise_pred"], 2), gold["noise_pred_frame_stats"])
    errors["vae_decode_in"] = relative_error(mine["vae_decode_in"], gold["vae_decode_in"])
    pooled = video.reshape(4, 64, 8, 64, 8, 3).mean(dim=(2, 4))
    errors["video_pool8"] = relative_error(pooled, gold["video_pool8"])
    for name in ("latents_in", "noise_pred", "vae_decode_in", "video_pool8"):
        assert errors[name] <= stream_tol, (name, errors[name])
    keyframe = gold["keyframe_check"]
    assert ("keyframe_added" in mine) == (keyframe is not None)
    if keyframe is not None:
        assert mine["keyframe_added"] == gold["history_keyframe_added"]
        errors["keyframe_distances"] = relative_error(mine["keyframe_distances"],
                                                      keyframe["distances_first_frame_to_bank"])
        assert errors["keyframe_distances"] <= stream_tol
    assert mine["num_keyframes"] == gold.get("num_khf_after", mine["num_keyframes"])
    return errors


@pytest.fixture(scope="module")
def stream(golden):
    return golden("stream")


def test_reference_encoding(small_models, stream):
    fuse = stream["fuse"]
    ref_u8 = stream["ref_image_u8"].numpy()
    assert relative_error(clip_pixels(ref_u8), fuse["clip_pixel_values"]) <= 1e-6
    anim = Animator(small_models, StreamConfig(), noise=zero_noise)
    ref = anim.encode_reference(ref_u8)
    assert relative_error(ref.clip_embeds[:, 0], fuse["clip_image_embeds"]) <= UNIT
    # the random VAE encoder amplifies rounding (README section 8: 5e-4 from memory layout alone)
    assert relative_error(ref.latent, fuse["ref_image_latents"]) <= 2e-3
    assert relative_error(ref.cond, fuse["ref_cond_tensor"]) <= 1e-6
    # our own encode is what a stream starts from: the initial pile within the encoder's tolerance
    anim.fuse_encoded(ref)
    for mine, gold in zip(anim.latent_pile, fuse["latents_pile_init"]):
        assert relative_error(mine, gold) <= 2e-3
    # banks from the stored latent: every 97th token of each bank, as stored
    ref = anim.encode_reference(ref_u8, latent=fuse["ref_image_latents"])
    names = small_models.reference_unet.bank_names
    for name, bank in zip(names, ref.banks):
        assert bank.dtype == torch.float16
        assert relative_error(bank.float()[:, ::97], fuse["writer_bank_sub"][name]) <= 1e-3  # fp16 storage
    anim.fuse_encoded(ref)
    for mine, gold in zip(anim.latent_pile, fuse["latents_pile_init"]):
        assert relative_error(mine, gold) <= UNIT


@pytest.mark.slow
def test_full_stream_with_keyframes(small_models, stream):
    """All 13 calls, from the stored reference latent: the warm-up calls 0-1 (interpolation, the first UNet step,
    decode) held at 1e-3, every call at the stream tolerance 1e-2; history keyframes at calls 9 and 10, none at
    11 and 12.

    One stream serves both checks (calls at 512 px cost ~2 min each on 2 cores). It starts from the stored
    latent so that the tight warm-up check measures the stream alone; our own VAE encode of the same portrait
    is held to that latent by test_reference_encoding (2e-3), and the keyframe decisions depend only on the
    motion states, not on the latent.
    """
    anim, trace, outputs = run_calls(small_models, stream, len(stream["calls"]), from_golden_latent=True)
    for i, (mine, video) in enumerate(zip(trace["calls"], outputs)):
        errors = check_call(mine, video, stream["calls"][i], stream_tol=1e-3 if i < 2 else 1e-2)
        print(f"call {i}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert relative_error(trace["calls"][0]["noise_pred"], stream["calls"][0]["noise_pred"]) <= 1e-3
    added = [bool(c.get("keyframe_added")) for c in trace["calls"]]
    assert added == [False] * 9 + [True, True, False, False]
    assert len(anim.keyframe_banks) == 2
    assert relative_error(anim.motion_bank, stream["calls"][-1]["motion_bank_after"]) <= 1e-2
    for i in (9, 12):
        assert relative_error(trace["calls"][i]["noise_pred"], stream["calls"][i]["noise_pred"]) <= 1e-2
