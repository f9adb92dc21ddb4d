"""The reference UNet: a stock SD1.x ``UNet2DConditionModel`` that only produces reference banks.

PersonaLive's reference UNet is the SD UNet without its output head (``conv_norm_out``/``conv_out``
are removed, so ``personalive/reference_unet.pth`` has 682 keys instead of 686). It runs once per
reference image (and once per history keyframe) at t = 0 with the CLIP image embedding as the
cross-attention context; its only product is the 16 banks recorded by the ``attn1`` of each spatial
transformer block (see :mod:`personalive_trt.models.reference_attention`). The value it would
return is never used.
"""
from __future__ import annotations

import functools

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from personalive_trt.models.reference_attention import (
    ReferenceWriterProcessor,
    bank_block_names,
    install_processors,
    recording_banks,
)


class ReferenceUNet(UNet2DConditionModel):
    """SD UNet minus ``conv_norm_out``/``conv_out`` whose forward returns the reference banks.

    Build it like the diffusers model: ``ReferenceUNet.from_config(sd_unet_config_dict)`` (or
    ``ReferenceUNet(**config)``), then ``load_state_dict(reference_unet.pth, strict=True)``.
    """

    @functools.wraps(UNet2DConditionModel.__init__)  # keeps the signature ConfigMixin inspects
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The release has no output head; with conv_norm_out None diffusers skips norm + act, and an
        # Identity conv_out (no parameters) leaves the last up-block features as the (unused) result.
        self.conv_norm_out = None
        self.conv_act = None
        self.conv_out = nn.Identity()
        self.bank_names: list[str] = bank_block_names(self)
        self._writers = install_processors(self, self.bank_names, ReferenceWriterProcessor)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write pass.

        Args:
            sample: ``(B, 4, h, w)`` reference latent, already scaled by 0.18215.
            timestep: ``(B,)`` float timesteps (the pipeline uses 0).
            encoder_hidden_states: ``(B, 1, 768)`` CLIP image embeds.

        Returns:
            One bank per ``bank_names`` entry, ``(B, h_l*w_l, C_l)`` in the model dtype: the
            post-``norm1`` activations of that transformer block.
        """
        with recording_banks(self._writers) as banks:
            super().forward(sample, timestep, encoder_hidden_states, return_dict=False)
        return tuple(banks)
