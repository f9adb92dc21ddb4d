"""StreamShapes: the one source of truth for every tensor shape, checked against the real modules."""
import pytest
import torch

from personalive_trt import StreamConfig
from personalive_trt.shapes import StreamShapes, safe_name
from personalive_trt.models.synthetic import CONFIGS
from personalive_trt.models.weights import build_module


@pytest.mark.parametrize("size", ["full", "small", "tiny"])
@pytest.mark.parametrize("resolution", [512, 256])
def test_bank_layout_matches_the_models(size, resolution):
    cfg = StreamConfig(resolution=resolution)
    shapes = StreamShapes.from_unet_config(cfg, CONFIGS[size]["sd_unet"])
    latent = cfg.latent_size
    with torch.device("meta"):
        reference = build_module("reference_unet", CONFIGS[size])
        denoising = build_module("denoising_unet", CONFIGS[size])
        banks = reference(torch.zeros(1, 4, latent, latent), torch.zeros(1), torch.zeros(1, 1, shapes.clip_dim))
    assert [b.name for b in shapes.banks] == reference.bank_names == denoising.bank_names
    assert [shapes.bank(i) for i in range(len(banks))] == [tuple(b.shape) for b in banks]
    assert shapes.pose_channels == CONFIGS[size]["sd_unet"]["block_out_channels"][0]


def test_derived_tensor_shapes():
    shapes = StreamShapes.from_unet_config(StreamConfig(window=2, steps=4), CONFIGS["full"]["sd_unet"])
    assert shapes.pile == 8 and shapes.latent == 64 and shapes.max_bank_length == 4
    assert shapes.latent_pile() == (1, 4, 8, 64, 64)
    assert shapes.pose_features(8) == (1, 320, 8, 64, 64)
    assert shapes.motion_states(3) == (1, 3, 32, 16)
    assert shapes.bank(0, length=4) == (1, 4 * 4096, 320)
    assert shapes.bank(len(shapes.banks) - 1) == (1, 64, 1280)  # mid block at 8x8
    assert safe_name("up_blocks.1.attentions.2.transformer_blocks.0") == "bank_up_blocks_1_attentions_2"
    assert len({safe_name(b.name) for b in shapes.banks}) == len(shapes.banks)
