"""MotionEncoder (FAN_SA) and PoseGuider against the release layouts and the golden unit outputs.

fp32 CPU. Golden tolerance (shared README section 8): max|err| / max|expected| <= 1e-4.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import relative_error
from personalive_trt.models.motion_encoder import MotionEncoder
from personalive_trt.models.pose_guider import PoseGuider

GOLDEN_TOLERANCE = 1e-4


def _layout(shared_reference, name: str) -> dict:
    return json.loads((shared_reference / "layout" / f"{name}.json").read_text())


def _load(module: torch.nn.Module, path) -> torch.nn.Module:
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def motion_encoder(small_weights_dir) -> MotionEncoder:
    return _load(MotionEncoder(), small_weights_dir / "personalive" / "motion_encoder.pth")


@pytest.fixture(scope="module")
def pose_guider(small_weights_dir) -> PoseGuider:
    return _load(PoseGuider(), small_weights_dir / "personalive" / "pose_guider.pth")


@pytest.mark.parametrize("name, factory", [("motion_encoder", MotionEncoder), ("pose_guider", PoseGuider)])
def test_state_dict_matches_release_layout(shared_reference, name, factory):
    layout = _layout(shared_reference, name)
    module = factory()
    state = module.state_dict()
    assert list(state) == list(layout["keys"])  # same keys, same order
    assert len(state) == layout["num_keys"]
    for key, spec in layout["keys"].items():
        assert list(state[key].shape) == spec["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == spec["dtype"], key
    # Computed tables exist as buffers of the documented shape but are not checkpoint entries.
    buffers = dict(module.named_buffers())
    for entry in layout["non_persistent_buffers"]:
        assert entry["key"] not in state
        assert list(buffers[entry["key"]].shape) == entry["shape"]
    assert sum(t.numel() for t in state.values()) == layout["num_elements"]


def _direct_2d_sincos(grid: int, dim: int) -> torch.Tensor:
    """Token (row i, col j) -> [1-D table of j (dim/2), 1-D table of i (dim/2)], float64 loops-free."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def table(pos):
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([table(cols), table(rows)], dim=1)


def test_position_tables():
    encoder = MotionEncoder()
    expected = _direct_2d_sincos(28, 1024).float().unsqueeze(0)
    for name in ("att_1", "att_2", "att_3"):
        table = getattr(encoder.model, name).pos_embed.pos_embed
        assert table.shape == (1, 784, 1024)
        assert (table - expected).abs().max().item() <= 1e-6, name
    # `pe`: 1-D sin-cos over the 32 motion tokens (width 16), the canonical value shipped in the checkpoint.
    positions = torch.arange(32, dtype=torch.float64).reshape(-1, 1)
    angles = positions / 10000.0 ** (torch.arange(8, dtype=torch.float64) / 8)
    pe = torch.cat([angles.sin(), angles.cos()], dim=1).float().unsqueeze(0)
    assert torch.equal(encoder.pe, pe)


def test_pe_buffer_matches_checkpoint(small_weights_dir):
    shipped = torch.load(small_weights_dir / "personalive" / "motion_encoder.pth", weights_only=True)["pe"]
    assert (MotionEncoder().pe - shipped).abs().max().item() <= 1e-7


@torch.no_grad()
def test_motion_encoder_golden(golden, motion_encoder):
    data = golden("unit_motion_encoder")
    output = motion_encoder(data["input"])
    assert output.shape == (1, 5, 32, 16)
    error = relative_error(output, data["output"])
    print(f"MotionEncoder golden relative error: {error:.3e}")
    assert error <= GOLDEN_TOLERANCE


@torch.no_grad()
def test_motion_encoder_batch_layout_and_train_mode(golden, motion_encoder):
    """(B=2, F=1) must give the golden frames 0 and 1 ((b f) folding), also after .train():
    the release only runs in eval mode, so BatchNorm must keep using the running statistics."""
    data = golden("unit_motion_encoder")
    faces = data["input"][0, :, :2].transpose(0, 1).unsqueeze(2)  # (2, 3, 1, 224, 224)
    motion_encoder.train()
    try:
        output = motion_encoder(faces)
    finally:
        motion_encoder.eval()
    assert output.shape == (2, 1, 32, 16)
    assert relative_error(output[:, 0], data["output"][0, :2]) <= GOLDEN_TOLERANCE


@torch.no_grad()
def test_pose_guider_golden(golden, pose_guider):
    data = golden("unit_pose_guider")
    maps = (data["kpmap_u8"].float() / 255).reshape(1, 3, 1, 512, 512)
    output = pose_guider(maps)
    assert output.shape == (1, 320, 1, 64, 64)
    error = relative_error(output, data["output"])
    print(f"PoseGuider golden relative error: {error:.3e}")
    assert error <= GOLDEN_TOLERANCE


@torch.no_grad()
def test_pose_guider_is_per_frame(pose_guider):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 3, 64, 48, generator=generator)
    output = pose_guider(maps)
    assert output.shape == (2, 320, 3, 8, 6)
    for batch, frame in [(0, 0), (1, 2)]:
        single = pose_guider(maps[batch : batch + 1, :, frame : frame + 1])
        # fp32 rounding only: the batched and the single-frame convolutions may pick different kernels
        # (measured 2.6e-6 on a fresh CPU install, 2026-12-02); mixing frames would be O(1).
        assert relative_error(single[0, :, 0], output[batch, :, frame]) <= 1e-5
    assert torch.isfinite(output).all()
