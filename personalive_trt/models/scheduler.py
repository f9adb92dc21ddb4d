"""The distilled DDIM schedule of PersonaLive: per-frame timesteps, fixed step length, eta 0.

Every frame of the 16-frame pile sits at its own timestep (0, 333, 666 or 999); one UNet call
moves each frame ``step_length`` steps down. Frames at t=0 leave as ``pred_original_sample``.
The schedule is PersonaLive's training schedule (scaled_linear, beta_end 0.02 -- not SD's 0.012).
"""
from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.02


def alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Cumulative alphas of the scaled-linear schedule, float32 like the original."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class DDIMSchedule:
    """Per-frame DDIM arithmetic (epsilon prediction, no clipping, eta 0, final alpha 1).

    Args:
        step_length (`int`, defaults to 333): distance between a frame's timestep and its next one.
        device (`torch.device`, *optional*): where the alpha table lives.
    """

    def __init__(self, step_length: int = 333, device: torch.device | str | None = None) -> None:
        self.step_length = step_length
        self.alphas_cumprod = alphas_cumprod().to(device)
        self.final_alpha_cumprod = torch.tensor(1.0, device=device)

    def to(self, device: torch.device | str) -> "DDIMSchedule":
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.final_alpha_cumprod = self.final_alpha_cumprod.to(device)
        return self

    @staticmethod
    def _per_frame(values: torch.Tensor, like: torch.Tensor, frame_dim: int) -> torch.Tensor:
        """Reshape a (F,) table so it broadcasts along ``frame_dim`` of ``like``."""
        shape = [1] * like.dim()
        shape[frame_dim] = values.shape[0]
        return values.reshape(shape)

    def add_noise(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, frame_dim: int = 2
    ) -> torch.Tensor:
        """q(x_t | x_0) per frame: ``sqrt(a_t) * sample + sqrt(1 - a_t) * noise``.

        ``timesteps`` is (F,) for the F frames along ``frame_dim`` (or (1,) for all of them).
        """
        alphas = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timesteps.to(sample.device)]
        sqrt_alpha = self._per_frame(alphas**0.5, sample, frame_dim)
        sqrt_one_minus_alpha = self._per_frame((1 - alphas) ** 0.5, sample, frame_dim)
        return sqrt_alpha * sample + sqrt_one_minus_alpha * noise

    def step(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, frame_dim: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step for every frame at once.

        Args:
            model_output (`torch.Tensor`): predicted noise, frames along ``frame_dim``.
            timesteps (`torch.Tensor`): (F,) int64 timestep of each frame.
            sample (`torch.Tensor`): the noisy latents, same shape as ``model_output``.

        Returns:
            ``(prev_sample, pred_original_sample)``, both shaped like ``sample``.
        """
        timesteps = timesteps.to(self.alphas_cumprod.device)
        prev_timesteps = timesteps - self.step_length
        alpha_t = self.alphas_cumprod[timesteps]
        # Index with a clamped timestep so the gather stays in range, then select: no host branch.
        alpha_prev = torch.where(
            prev_timesteps >= 0, self.alphas_cumprod[prev_timesteps.clamp_min(0)], self.final_alpha_cumprod
        )
        alpha_t = self._per_frame(alpha_t, sample, frame_dim)
        alpha_prev = self._per_frame(alpha_prev, sample, frame_dim)
        beta_t = 1 - alpha_t
        pred_original = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
        prev_sample = alpha_prev**0.5 * pred_original + (1 - alpha_prev) ** 0.5 * model_output
        return prev_sample, pred_original
