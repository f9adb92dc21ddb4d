"""StreamConfig: derived shapes and validation."""
import pytest

from personalive_trt.config import StreamConfig


def test_defaults_match_the_original_online_config():
    cfg = StreamConfig()
    assert (cfg.window, cfg.steps, cfg.resolution) == (4, 4, 512)
    assert cfg.timesteps == (999, 666, 333, 0)
    assert cfg.pile == 16 and cfg.warmup_frames == 12 and cfg.latent_size == 64
    assert cfg.pile_timesteps == (0,) * 4 + (333,) * 4 + (666,) * 4 + (999,) * 4
    assert (cfg.keyframe_threshold, cfg.keyframe_start, cfg.max_keyframes) == (17.0, 8, 3)
    assert cfg.motion_bank_capacity == 4


def test_derived_sizes_follow_the_fields():
    cfg = StreamConfig(window=2, steps=3, step_length=400, resolution=256)
    assert cfg.pile == 6 and cfg.warmup_frames == 4 and cfg.latent_size == 32
    assert cfg.timesteps == (800, 400, 0)
    assert cfg.pile_timesteps == (0, 0, 400, 400, 800, 800)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, "window"),
    ({"resolution": 500}, "multiple of 64"),
    ({"steps": 5, "step_length": 333}, "exceeds"),
    ({"max_keyframes": -1}, "max_keyframes"),
])
def test_invalid_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**kwargs)


def test_yaml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "stream.yaml"
    path.write_text("window: 4\nwindw: 2\n")
    with pytest.raises(ValueError, match=r"stream.yaml: unknown StreamConfig key\(s\) \['windw'\]"):
        StreamConfig.from_yaml(path)
    path.write_text("window: 2\nresolution: 256\n")
    assert StreamConfig.from_yaml(path) == StreamConfig(window=2, resolution=256)
