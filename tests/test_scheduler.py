"""DDIM per-frame schedule against the original's scheduler outputs (golden unit 5.6)."""
import torch

from personalive_trt.scheduler import DDIMSchedule


def test_alphas_and_step_are_bit_exact(golden):
    ref = golden("unit_scheduler")
    schedule = DDIMSchedule(step_length=ref["step"]["step_length"])
    assert torch.equal(schedule.alphas_cumprod, ref["alphas_cumprod"])
    assert float(schedule.final_alpha_cumprod) == float(ref["final_alpha_cumprod"])
    s = ref["step"]
    prev, clean = schedule.step(s["model_output"], s["timesteps"], s["sample"], frame_dim=0)
    # identical float32 arithmetic in the same order: exact equality, not a tolerance
    assert torch.equal(prev, s["prev_sample"])
    assert torch.equal(clean, s["pred_original_sample"])


def test_add_noise_is_bit_exact(golden):
    ref = golden("unit_scheduler")["add_noise"]
    noisy = DDIMSchedule().add_noise(ref["original"], ref["noise"], ref["timesteps"], frame_dim=2)
    assert torch.equal(noisy, ref["noisy"])


def test_final_step_returns_the_clean_sample():
    schedule = DDIMSchedule(step_length=333)
    x0 = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    t = torch.tensor([333, 0])
    noisy = schedule.add_noise(x0, eps, t, frame_dim=0)
    prev, clean = schedule.step(eps, t, noisy, frame_dim=0)
    torch.testing.assert_close(clean, x0, rtol=0, atol=1e-4)
    # t=0 -> prev uses alpha_prev = 1: the "previous" sample is the clean one
    torch.testing.assert_close(prev[1], clean[1], rtol=0, atol=1e-6)
    # t=333 -> prev is x0 renoised to t=0 with the same eps
    torch.testing.assert_close(prev[0], schedule.add_noise(x0[:1], eps[:1], torch.tensor([0]), 0)[0], rtol=0, atol=1e-4)
