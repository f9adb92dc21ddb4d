"""Strict loading of the released layout, the CLI checks, and the in-package synthesizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import SINUSOID_KEYS, assert_sinusoid_table, symlink_tree

from personalive_trt.cli import app
from personalive_trt.models.synthetic import CONFIGS, tensor_digest
from personalive_trt.models.weights import (
    COMPONENTS,
    WeightsError,
    build_module,
    load_models,
    motion_encoder_config,
    synthetic_models,
)

LAYOUT_OF = {  # component -> reference layout json(s) of its released file(s)
    "reference_unet": ["reference_unet"], "denoising_unet": ["unet3d"], "pose_guider": ["pose_guider"],
    "motion_encoder": ["motion_encoder"], "motion_extractor": ["motion_extractor"],
    "image_encoder": ["image_encoder"], "vae": ["vae"],
}


@pytest.mark.parametrize("size, folder", [("full", "layout"), ("small", "layout_small")])
def test_every_component_matches_the_released_layout(shared_reference, size, folder):
    """All networks built on the meta device: state_dict keys and shapes equal the release."""
    for component in COMPONENTS:
        with torch.device("meta"):
            module = build_module(component.name, CONFIGS[size])
        got = {k: list(v.shape) for k, v in module.state_dict().items()}
        layout = json.loads((shared_reference / folder / f"{LAYOUT_OF[component.name][0]}.json").read_text())
        want = {k: v["shape"] for k, v in layout["keys"].items()}
        assert got.keys() == want.keys(), (component.name, sorted(got.keys() ^ want.keys())[:5])
        assert got == want, component.name


@pytest.fixture(scope="module")
def synthetic_small():
    return synthetic_models("small", seed=0)


def test_synthetic_small_equals_the_reference_weights(synthetic_small, shared_reference):
    """The in-package synthesizer reproduces every tensor of the reference synthesized weights."""
    manifest = json.loads((shared_reference / "golden" / "weights_manifest.json").read_text())["files"]
    file_of = {
        "reference_unet": ["personalive/reference_unet.pth"],
        "denoising_unet": ["personalive/denoising_unet.pth", "personalive/temporal_module.pth"],
        "pose_guider": ["personalive/pose_guider.pth"], "motion_encoder": ["personalive/motion_encoder.pth"],
        "motion_extractor": ["personalive/motion_extractor.pth"],
        "image_encoder": ["sd-image-variations-diffusers/image_encoder/pytorch_model.bin"],
        "vae": ["sd-vae-ft-mse/diffusion_pytorch_model.bin"],
    }
    checked = 0
    for name, module in synthetic_small.modules().items():
        expected = {k: d for f in file_of[name] for k, d in manifest[f].items()}
        state = module.state_dict()
        for key, digest in expected.items():
            if key.endswith(SINUSOID_KEYS) and tensor_digest(state[key]) != digest:
                assert_sinusoid_table(state[key], f"{name}: {key}")  # CPU-dependent float32 bits (conftest)
            else:
                assert tensor_digest(state[key]) == digest, f"{name}: {key}"
            checked += 1
    assert checked == sum(len(manifest[f]) for files in file_of.values() for f in files)


def test_load_models_from_folder_equals_synthetic(small_weights_dir, synthetic_small):
    models = load_models(small_weights_dir)
    assert not models.synthetic and models.source == str(small_weights_dir)
    for name, module in models.modules().items():
        assert not module.training, name
        theirs = synthetic_small.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, theirs[key]), f"{name}: {key}"


# ---- strictness --------------------------------------------------------------------------------
@pytest.fixture
def weights_copy(small_weights_dir, tmp_path) -> Path:
    """A weights folder of symlinks to the small weights; tests replace single files in it."""
    return symlink_tree(small_weights_dir, tmp_path / "weights")


def rewrite(root: Path, rel: str, edit) -> None:
    path = root / rel
    state = torch.load(path, weights_only=True)
    path.unlink()
    edit(state)
    torch.save(state, path)


def test_missing_file_is_named(weights_copy):
    (weights_copy / "personalive" / "pose_guider.pth").unlink()
    with pytest.raises(WeightsError, match=r"personalive: missing weight file .*pose_guider"):
        load_models(weights_copy)


def test_unexpected_key_is_named(weights_copy):
    rewrite(weights_copy, "personalive/pose_guider.pth", lambda s: s.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(WeightsError, match=r"pose_guider.pth: unexpected key 'extra.weight' with shape \(3,\)"):
        load_models(weights_copy)


def test_shape_mismatch_names_both_shapes(weights_copy):
    rewrite(weights_copy, "personalive/pose_guider.pth",
            lambda s: s.__setitem__("conv_in.weight", torch.zeros(16, 3, 5, 5)))
    with pytest.raises(WeightsError, match=r"pose_guider.pth: key 'conv_in.weight' has shape \(16, 3, 5, 5\), "
                                           r"expected \(16, 3, 3, 3\)"):
        load_models(weights_copy)


def test_parameter_set_by_no_file(weights_copy):
    rewrite(weights_copy, "personalive/temporal_module.pth", lambda s: s.pop(next(k for k in s if "proj_out" in k)))
    with pytest.raises(WeightsError, match=r"denoising_unet: key '.*temporal_modules.*proj_out.*' \(shape .*\) "
                                           r"is set by no file"):
        load_models(weights_copy)


def test_motion_encoder_width_is_read_from_its_checkpoint(weights_copy, tmp_path):
    """The one free width (tiny weights: 128, released: 1024) comes from the checkpoint; any other is one line
    naming the file and the key, before any network is built."""
    key = "model.att_1.pos_embed.proj.weight"
    tiny = tmp_path / "tiny" / "personalive"
    tiny.mkdir(parents=True)
    torch.save({key: torch.zeros(128, 128, 4, 4)}, tiny / "motion_encoder.pth")
    assert motion_encoder_config(tiny.parent) == {"attention_width": 128}
    assert motion_encoder_config(weights_copy) == {}  # the released width (the small weights keep it)
    rewrite(weights_copy, "personalive/motion_encoder.pth", lambda s: s.__setitem__(key, torch.zeros(256, 128, 4, 4)))
    with pytest.raises(WeightsError, match=r"motion_encoder.pth: model.att_1.pos_embed.proj.weight has 256 output "
                                           r"channels, expected 1024 \(the released motion encoder\)$"):
        load_models(weights_copy)


def test_computed_buffers_may_be_absent(weights_copy):
    rewrite(weights_copy, "personalive/motion_extractor.pth", lambda s: s.pop("idx_tensor"))
    rewrite(weights_copy, "personalive/temporal_module.pth",
            lambda s: [s.pop(k) for k in [k for k in s if k.endswith("pos_encoder.pe")]])
    models = load_models(weights_copy)
    assert torch.equal(models.motion_extractor.idx_tensor, torch.arange(66, dtype=torch.float32))


def test_not_a_weights_folder(tmp_path):
    with pytest.raises(WeightsError, match="not a PersonaLive weights folder"):
        load_models(tmp_path)
    with pytest.raises(WeightsError, match="weights folder not found"):
        load_models(tmp_path / "nope")


def test_alternative_formats_and_legacy_names(weights_copy):
    """.safetensors loads; legacy VAE attention names and CLIP position_ids are accepted."""
    from safetensors.torch import save_file

    pg = weights_copy / "personalive" / "pose_guider.pth"
    save_file(torch.load(pg, weights_only=True), str(pg.with_suffix(".safetensors")))
    pg.unlink()

    def legacy_vae(state):
        for key in [k for k in state if ".attentions." in k]:
            new = (key.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
                   .replace(".to_out.0.", ".proj_attn."))
            value = state.pop(key)
            state[new] = value[:, :, None, None] if new.endswith("weight") and value.dim() == 2 else value

    rewrite(weights_copy, "sd-vae-ft-mse/diffusion_pytorch_model.bin", legacy_vae)
    rewrite(weights_copy, "sd-image-variations-diffusers/image_encoder/pytorch_model.bin",
            lambda s: s.__setitem__("vision_model.embeddings.position_ids", torch.arange(257)[None]))
    models = load_models(weights_copy)
    original = torch.load(weights_copy / "sd-vae-ft-mse" / "diffusion_pytorch_model.bin", weights_only=True)
    key = next(k for k in models.vae.state_dict() if k.endswith("attentions.0.to_q.weight"))
    legacy_key = key.replace(".to_q.", ".query.")
    assert torch.equal(models.vae.state_dict()[key], original[legacy_key][:, :, 0, 0])


# ---- CLI ---------------------------------------------------------------------------------------
def test_cli_weights_check_ok(small_weights_dir):
    result = CliRunner().invoke(app, ["weights", "check", str(small_weights_dir)])
    assert result.exit_code == 0, result.output
    assert "denoising_unet: ok" in result.output
    assert "personalive/temporal_module.pth" in result.output
    assert f"all {len(COMPONENTS)} components ok" in result.output


def test_cli_weights_check_reports_problems(weights_copy):
    rewrite(weights_copy, "personalive/pose_guider.pth", lambda s: s.pop("conv_out_modify.weight"))
    result = CliRunner().invoke(app, ["weights", "check", str(weights_copy)])
    assert result.exit_code == 1
    assert "pose_guider: PROBLEMS" in result.output
    assert "key 'conv_out_modify.weight'" in result.output


def test_cli_weights_download_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["weights", "download", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "cannot download lambdalabs/sd-image-variations-diffusers/unet/config.json" in result.output
    assert not list((tmp_path / "w").rglob("*.bin"))
