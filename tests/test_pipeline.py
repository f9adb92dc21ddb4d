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


def check_conditions(mine: dict, gold: dict) -> dict[str, float]:
    """Compare one call's conditioning (everything outside the latent recurrence) with the golden call: face
    boxes and keypoint-map pixels exact; keypoints, motion states, pose features, the motion-state pile and the
    keyframe distances within the unit tolerance; the keyframe decision exact. Returns the measured errors."""
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
    keyframe = gold["keyframe_check"]
    assert ("keyframe_added" in mine) == (keyframe is not None)
    if keyframe is not None:
        assert mine["keyframe_added"] == gold["history_keyframe_added"]
        errors["keyframe_distances"] = relative_error(mine["keyframe_distances"],
                                                      keyframe["distances_first_frame_to_bank"])
        assert errors["keyframe_distances"] <= UNIT, errors["keyframe_distances"]
    errors["motion_bank"] = relative_error(mine["motion_bank"], gold["motion_bank_after"])
    assert errors["motion_bank"] <= UNIT, errors["motion_bank"]
    return errors


def check_call(mine: dict, video: torch.Tensor, gold: dict, stream_tol: float) -> dict[str, float]:
    """Compare one whole call with the golden call (conditioning as :func:`check_conditions`; the UNet input and
    output, the decoder input and the frames within ``stream_tol``); returns the measured errors."""
    errors = check_conditions(mine, gold)
    assert torch.equal(mine["timesteps"].cpu(), gold["unet_timesteps"])
    errors["latents_in"] = relative_error(frame_stats(mine["latents_in"], 2), gold["unet_latents_in_frame_stats"])
    errors["noise_pred"] = relative_error(frame_stats(mine["noise_pred"], 2), gold["noise_pred_frame_stats"])
    errors["vae_decode_in"] = relative_error(mine["vae_decode_in"], gold["vae_decode_in"])
    pooled = video.reshape(4, 64, 8, 64, 8, 3).mean(dim=(2, 4))
    errors["video_pool8"] = relative_error(pooled, gold["video_pool8"])
    for name in ("latents_in", "noise_pred", "vae_decode_in", "video_pool8"):
        assert errors[name] <= stream_tol, (name, errors[name])
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


#: Calls of the golden stream whose UNet and decoder run in CI: the warm-up calls (interpolation, the first UNet
#: step, the first decode) and the keyframe calls (two keyframes taken at 9 and 10, none at 11 and 12).
WARMUP_CALLS = (0, 1)
KEYFRAME_CALLS = (9, 10, 11, 12)


def test_golden_stream_conditioning_warmup_and_keyframes(small_models, stream):
    """The golden stream in one pass, from the stored reference latent, at about half the cost of every call.

    Kept on all 13 calls: every conditioning assertion (face boxes and keypoint-map pixels exact; keypoints,
    motion-encoder output, pose features, the motion-state pile, the motion bank and the keyframe distances within
    1e-4; the keyframe decisions exact): none of it depends on the latent recurrence, so calls 2-8 run their
    conditioning alone (``Animator.step_conditions``, seconds a call).
    The UNet and the decoder run for the warm-up calls 0-1 (held at 1e-3, as before) and for the keyframe calls
    9-12, started from the state the golden stores at call 9: its full UNet input (``set_latent_pile``) with
    our own motion states, pose features and motion bank, which this test holds to the golden's call 9 first.
    Calls 9-12 start from the golden's own latents, so they are held at 1e-3 like the warm-up (the UNet input and
    output, the decoder input, the frames and the history keyframes' latents; measured ~1e-6 on 2 CPU threads):
    three calls of recurrence from an exact state stay far inside it.
    Moved: the latent checks of calls 2-8 (their UNet and decoder) are in ``test_full_stream_with_keyframes``,
    marked ``golden_full``, which the default test command does not select; run it by hand with
    ``python -m pytest -m golden_full tests/test_pipeline.py`` (~25 min on 2 cores).
    """
    trace: dict = {}
    anim = Animator(small_models, StreamConfig(), noise=zero_noise, trace=trace)
    anim.fuse_encoded(anim.encode_reference(stream["ref_image_u8"].numpy(), latent=stream["fuse"]["ref_image_latents"]))
    frames = golden_driving_frames(stream)
    golden_calls = stream["calls"]
    outputs = {}
    for i, gold in enumerate(golden_calls):
        chunk = frames[np.array(gold["frame_indices"])]
        if i == KEYFRAME_CALLS[0]:
            anim.set_latent_pile(gold["unet_latents_in"][:, :, : anim.config.pile - anim.config.window])
        if i in WARMUP_CALLS or i in KEYFRAME_CALLS:
            outputs[i] = anim.step_float(chunk)
        else:
            anim.step_conditions(chunk)
    mine_calls = trace["calls"]
    assert len(mine_calls) == len(golden_calls) == 13
    for i, (mine, gold) in enumerate(zip(mine_calls, golden_calls)):
        if i in outputs:
            errors = check_call(mine, outputs[i], gold, stream_tol=1e-3)
        else:
            errors = check_conditions(mine, gold)
        print(f"call {i}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    # The state call 9 starts from: our pose-feature pile against the golden's, frame by frame.
    call9 = mine_calls[KEYFRAME_CALLS[0]]
    assert relative_error(frame_stats(call9["pose_cond"], 2), golden_calls[9]["unet_pose_cond_frame_stats"]) <= UNIT
    assert relative_error(call9["latents_in"], golden_calls[9]["unet_latents_in"]) <= UNIT
    assert relative_error(mine_calls[0]["noise_pred"], golden_calls[0]["noise_pred"]) <= 1e-3
    assert relative_error(call9["noise_pred"], golden_calls[9]["noise_pred"]) <= 1e-3
    assert relative_error(mine_calls[12]["noise_pred"], golden_calls[12]["noise_pred"]) <= 1e-3
    # The history keyframes' latents (x0 of the pile's first frame in the call that takes each).
    assert relative_error(call9["pred_original"][:1], golden_calls[9]["history_keyframe_latent"]) <= 1e-3
    assert relative_error(mine_calls[10]["pred_original"][:1], golden_calls[10]["history_keyframe_latent"]) <= 1e-3
    added = [bool(c.get("keyframe_added")) for c in mine_calls]
    assert added == [False] * 9 + [True, True, False, False]
    assert len(anim.keyframe_banks) == 2
    assert relative_error(anim.motion_bank, golden_calls[-1]["motion_bank_after"]) <= UNIT


@pytest.mark.golden_full
def test_full_stream_with_keyframes(small_models, stream):
    """All 13 calls with their UNet and decoder, from the stored reference latent: the warm-up calls 0-1 held at
    1e-3, every call at the stream tolerance 1e-2; history keyframes at calls 9 and 10, none at 11 and 12.

    Not selected by the default test command (``golden_full``; ~25 min on 2 cores): CI checks the same
    conditioning on every call and the UNet on calls 0-1 and 9-12 in
    ``test_golden_stream_conditioning_warmup_and_keyframes``; this test adds the latents of calls 2-8.
    Run it with ``python -m pytest -m golden_full tests/test_pipeline.py``.
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
