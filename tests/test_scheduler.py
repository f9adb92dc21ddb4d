"""DDIM per-frame schedule against the original's scheduler outputs (golden unit 5.6)."""
import torch

from personalive_trt.models.scheduler import DDIMSchedule


def test_alphas_and_step_are_bit_exact(golden):
    ref = golden("unit_scheduler")
    schedule = DDIMSchedule(step_length=ref["step"]["step_length"])
    assert torch.equal(schedule.alphas_cumprod, ref["alphas_cumprod"])
    assert float(schedule.final_alpha_cumprod) == float(ref["final_alpha_cumprod"])
    s = ref["step"]
    prev, clean = schedule.step(s["model_output"], s["timesteps"], s["sample"], frame_dim=0)
    # identical float32 arithmetic in the same order: exact on the golden's machine; the square roots' last
    # bits vary with the CPU's math library (AVX-512 here: 7.6e-6 abs on pred_original, 2.9e-6 on prev)
    assert_same_float32_math(prev, s["prev_sample"])
    assert_same_float32_math(clean, s["pred_original_sample"])


def assert_same_float32_math(actual, expected):
    """Bit-exact, or within a few float32 ulps of rounding (a wrong schedule is off by >= 1e-3)."""
    if not torch.equal(actual, expected):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=2e-5)


def test_add_noise_is_bit_exact(golden):
    ref = golden("unit_scheduler")["add_noise"]
    noisy = DDIMSchedule().add_noise(ref["original"], ref["noise"], ref["timesteps"], frame_dim=2)
    assert_same_float32_math(noisy, ref["noisy"])  # measured 4.8e-7 abs on AVX-512


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
