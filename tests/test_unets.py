"""Reference UNet, denoising UNet3D and reference attention against the original's layouts and goldens.

* layouts: FULL and SMALL modules built on the meta device have exactly the released keys/shapes;
* golden writer: the small reference UNet reproduces the 16 banks of ``unit_reference_writer.pt``;
* golden UNet3D: the small denoising UNet, assembled like the original (SD UNet weights shadowed by
  ``denoising_unet.pth`` then ``temporal_module.pth``), reproduces ``unit_denoising_unet3d.pt`` with
  fp16 reference banks, without and with one history keyframe;
* mechanics on tiny random models: reader == "concat then attend" formula, tracing/export.

All fp32 on CPU; tolerance = README section 8 (max-abs error relative to max |expected| <= 1e-4).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from conftest import REPO, relative_error
from personalive_trt.models.reference_attention import ReferenceReaderProcessor, bank_block_names
from personalive_trt.models.reference_unet import ReferenceUNet
from personalive_trt.models.unet3d import UNet3DConditionModel

TOLERANCE = 1e-4
NUM_BANKS = 16
UNET3D_KWARGS = yaml.safe_load((REPO / "configs" / "unet3d.yaml").read_text())


def _shared_configs(shared_reference: Path):
    """The plain-data model configs of the reference (FULL / SMALL SD UNet config dicts)."""
    spec = importlib.util.spec_from_file_location("pl_reference_configs", shared_reference / "configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_layout(module: torch.nn.Module, layout_path: Path) -> None:
    layout = json.loads(layout_path.read_text())["keys"]
    state = module.state_dict()
    missing = sorted(set(layout) - set(state))
    unexpected = sorted(set(state) - set(layout))
    assert not missing and not unexpected, f"missing {missing[:5]} (+{len(missing)}), unexpected {unexpected[:5]} (+{len(unexpected)})"
    wrong = [(key, list(state[key].shape), spec["shape"]) for key, spec in layout.items()
             if list(state[key].shape) != spec["shape"]]
    assert not wrong, f"shape mismatches: {wrong[:5]}"
    buffers = {name for name, _ in module.named_buffers()}
    kinds = [(key, spec["kind"]) for key, spec in layout.items() if (key in buffers) != (spec["kind"] == "buffer")]
    assert not kinds, f"param/buffer mismatches: {kinds[:5]}"


@pytest.mark.parametrize("size, layout_dir", [("FULL", "layout"), ("SMALL", "layout_small")])
def test_layouts_on_meta_device(shared_reference, size, layout_dir):
    base = getattr(_shared_configs(shared_reference), f"SD_UNET_{size}")
    with torch.device("meta"):
        reference = ReferenceUNet.from_config(base)
        unet3d = UNet3DConditionModel.from_base_config(base, UNET3D_KWARGS)
    _assert_layout(reference, shared_reference / layout_dir / "reference_unet.json")
    _assert_layout(unet3d, shared_reference / layout_dir / "unet3d.json")
    assert len(reference.bank_names) == NUM_BANKS
    assert reference.bank_names == unet3d.bank_names


# ---------------------------------------------------------------- golden (SMALL, seed 0) --------------

def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _base_config(weights_dir: Path) -> dict:
    return json.loads((weights_dir / "sd-image-variations-diffusers" / "unet" / "config.json").read_text())


@pytest.fixture(scope="module")
def reference_unet(small_weights_dir) -> ReferenceUNet:
    model = ReferenceUNet.from_config(_base_config(small_weights_dir)).eval()
    model.load_state_dict(_load(small_weights_dir / "personalive" / "reference_unet.pth"), strict=True)
    return model


@pytest.fixture(scope="module")
def denoising_unet(small_weights_dir) -> UNet3DConditionModel:
    """Assembled like the original wrapper: SD UNet weights, then denoising_unet.pth, then temporal_module.pth.

    Later files win. Each file may only hold keys of the model, and together they must set every key
    (the original loads with strict=False and would silently keep init values otherwise).
    """
    model = UNet3DConditionModel.from_base_config(_base_config(small_weights_dir), UNET3D_KWARGS).eval()
    model_keys = set(model.state_dict())
    merged: dict[str, torch.Tensor] = {}
    for path in (small_weights_dir / "sd-image-variations-diffusers" / "unet" / "diffusion_pytorch_model.bin",
                 small_weights_dir / "personalive" / "denoising_unet.pth",
                 small_weights_dir / "personalive" / "temporal_module.pth"):
        state = _load(path)
        unexpected = sorted(set(state) - model_keys)
        assert not unexpected, f"{path.name}: unexpected keys {unexpected[:5]}"
        merged.update(state)
    assert set(merged) == model_keys, f"keys set by no file: {sorted(model_keys - set(merged))[:5]}"
    model.load_state_dict(merged, strict=True)
    return model


@pytest.fixture(scope="module")
def golden_reader_banks(golden, denoising_unet) -> list[torch.Tensor]:
    """The golden writer banks as the reader gets them: fp16, in bank_names order."""
    banks = golden("unit_reference_writer")["banks"]
    return [banks[name].to(torch.float16) for name in denoising_unet.bank_names]


def _run_unet3d(model: UNet3DConditionModel, inputs: dict, banks) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs["sample"], inputs["timesteps"], inputs["clip_embeds"], inputs["motion_hidden_states"],
                     inputs["pose_cond_fea_fp16"].float(), banks)


def test_reference_writer_golden(golden, reference_unet, record_property):
    data = golden("unit_reference_writer")
    inputs = data["inputs"]
    assert set(reference_unet.bank_names) == set(data["bank_order"])
    with torch.no_grad():
        banks = reference_unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"])
    assert len(banks) == NUM_BANKS
    errors = {}
    for name, bank in zip(reference_unet.bank_names, banks):
        assert bank.dtype == torch.float32
        errors[name] = relative_error(bank, data["banks"][name])
    worst = max(errors.values())
    record_property("max_relative_error", worst)
    print(f"reference writer banks: max relative error {worst:.3e}")
    assert worst <= TOLERANCE, errors


def test_unet3d_golden_reference_banks(golden, denoising_unet, golden_reader_banks, record_property):
    data = golden("unit_denoising_unet3d")
    assert data["reader_bank_dtype"] == str(torch.float16)
    noise_pred = _run_unet3d(denoising_unet, data["inputs"], golden_reader_banks)
    error = relative_error(noise_pred, data["noise_pred"])
    record_property("relative_error", error)
    print(f"UNet3D noise_pred: relative error {error:.3e}")
    assert error <= TOLERANCE


def test_unet3d_golden_with_history_keyframe(golden, reference_unet, denoising_unet, golden_reader_banks,
                                             record_property):
    data = golden("unit_denoising_unet3d")
    inputs = data["inputs"]
    with torch.no_grad():
        keyframe_banks = reference_unet(inputs["keyframe_latent"], torch.zeros(1), inputs["clip_embeds"])

    # The keyframe writer pass itself against the stored statistics (f32 banks, before the fp16 cast).
    for name, bank in zip(reference_unet.bank_names, keyframe_banks):
        stats = data["keyframe_bank_stats"][name]
        assert list(bank.shape) == stats["shape"]
        values = bank.double()
        scale = max(abs(stats["min"]), abs(stats["max"]))
        assert abs(values.min().item() - stats["min"]) <= TOLERANCE * scale, name
        assert abs(values.max().item() - stats["max"]) <= TOLERANCE * scale, name
        assert values.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=TOLERANCE), name
        assert (values ** 2).sum().item() == pytest.approx(stats["sq_sum"], rel=TOLERANCE), name
        # the plain sum nearly cancels: compare it against the abs_sum scale
        assert abs(values.sum().item() - stats["sum"]) <= TOLERANCE * stats["abs_sum"], name

    banks = [torch.cat([reference, keyframe.to(torch.float16)], dim=1)
             for reference, keyframe in zip(golden_reader_banks, keyframe_banks)]
    noise_pred = _run_unet3d(denoising_unet, inputs, banks)
    error = relative_error(noise_pred, data["noise_pred_with_1_keyframe"])
    record_property("relative_error", error)
    print(f"UNet3D noise_pred with 1 keyframe: relative error {error:.3e}")
    assert error <= TOLERANCE

    # The streaming path: reference and keyframe banks projected once each, joined on the token axis.
    with torch.no_grad():
        reference_kv = denoising_unet.project_banks(golden_reader_banks)
        keyframe_kv = denoising_unet.project_banks([bank.to(torch.float16) for bank in keyframe_banks])
        kv = [tuple(torch.cat([r[j], k[j]], dim=1) for j in range(2)) for r, k in zip(reference_kv, keyframe_kv)]
        projected = denoising_unet(inputs["sample"], inputs["timesteps"], inputs["clip_embeds"],
                                   inputs["motion_hidden_states"], inputs["pose_cond_fea_fp16"].float(),
                                   reference_kv=kv)
    kv_error = relative_error(projected, data["noise_pred_with_1_keyframe"])
    print(f"UNet3D noise_pred with 1 keyframe, projected once: relative error {kv_error:.3e}")
    assert kv_error <= TOLERANCE
    assert relative_error(projected, noise_pred) <= 1e-5  # same math, only the concat order of the projection


# ---------------------------------------------------------------- mechanics on tiny random models ------

TINY_BASE = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [32, 32, 64, 64], "center_input_sample": False,
    "cross_attention_dim": 48, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 8,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised proj_out would hide the motion/temporal modules)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim > 1:  # 1/sqrt(fan_in) keeps activations O(1) through the tiny network
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            elif name.endswith("weight"):  # norm scales
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.02 * noise)
    return model.eval()


def _tiny_models():
    reference = _randomize(ReferenceUNet.from_config(TINY_BASE), 1)
    unet3d = _randomize(UNet3DConditionModel.from_base_config(TINY_BASE, UNET3D_KWARGS), 2)
    return reference, unet3d


def _tiny_inputs(reference: ReferenceUNet, frames: int = 3, keyframes: int = 1):
    generator = torch.Generator().manual_seed(3)
    clip = torch.randn(1, 1, TINY_BASE["cross_attention_dim"], generator=generator)
    with torch.no_grad():
        banks = [reference(torch.randn(1, 4, 16, 16, generator=generator), torch.zeros(1), clip)
                 for _ in range(1 + keyframes)]
    banks = [torch.cat(per_block, dim=1).to(torch.float16) for per_block in zip(*banks)]
    args = (torch.randn(1, 4, frames, 16, 16, generator=generator),
            torch.tensor([0, 333, 999][:frames]), clip,
            torch.randn(1, frames, 32, 16, generator=generator),
            torch.randn(1, 32, frames, 16, 16, generator=generator), banks)
    return args


def test_reader_equals_concat_formula():
    """Projecting the bank once and broadcasting == the original's concat(frame tokens, repeated bank)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=8, dim_head=8).eval()
    batch, frames, tokens = 2, 3, 10
    hidden = torch.randn(batch * frames, tokens, 64)
    bank = torch.randn(batch, 25, 64).to(torch.float16)
    reader = ReferenceReaderProcessor()
    reader.bank = bank
    with torch.no_grad():
        ours = reader(attn, hidden)
        repeated = bank.float()[:, None].expand(batch, frames, 25, 64).reshape(batch * frames, 25, 64)
        expected = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=torch.cat([hidden, repeated], dim=1))
        reader.bank = None
        plain = reader(attn, hidden)
        plain_expected = AttnProcessor2_0()(attn, hidden)
    assert relative_error(ours, expected) <= 1e-6
    assert relative_error(plain, plain_expected) <= 1e-6


def test_tiny_models_bank_plumbing_and_export():
    """Same bank paths on both UNets; banks feed the reader; both models export with torch.export."""
    reference, unet3d = _tiny_models()
    assert reference.bank_names == unet3d.bank_names == bank_block_names(unet3d)
    assert len(reference.bank_names) == 3 * 1 + 3 * 2 + 1  # layers_per_block=1: 3 down, 3x2 up, mid

    args = _tiny_inputs(reference)
    with torch.no_grad():
        eager = unet3d(*args)
        without_keyframe = unet3d(*args[:-1], [bank[:, : bank.shape[1] // 2] for bank in args[-1]])
        without_banks = unet3d(*args[:-1], None)
        again = unet3d(*args)
    assert eager.shape == args[0].shape
    assert torch.equal(eager, again), "no state may leak between calls"
    assert relative_error(without_keyframe, eager) > 1e-3, "the keyframe bank must change the output"
    assert relative_error(without_banks, eager) > 1e-3, "the reference banks must change the output"
    for processor in unet3d._readers:
        assert processor.bank is None

    # batch 2 (second item: other latents, motion and banks) == two batch-1 calls: frames stay b-major
    other = _tiny_inputs(reference, keyframes=0)
    other = other[:-1] + ([torch.cat([bank, bank], dim=1) for bank in other[-1]],)  # same token count
    batched = (torch.cat([args[0], other[0]]), torch.cat([args[1], other[1]]), torch.cat([args[2], other[2]]),
               torch.cat([args[3], other[3]]), torch.cat([args[4], other[4]]),
               [torch.cat([a, b]) for a, b in zip(args[-1], other[-1])])
    with torch.no_grad():
        both = unet3d(*batched)
        second = unet3d(*other)
    assert relative_error(both[:1], eager) <= 1e-5
    assert relative_error(both[1:], second) <= 1e-5

    with torch.no_grad():
        exported = torch.export.export(unet3d, args).module()
        assert relative_error(exported(*args), eager) <= 1e-6
        sample, timestep, clip = args[0][:, :, 0], torch.zeros(1), args[2]
        banks = reference(sample, timestep, clip)
        exported_reference = torch.export.export(reference, (sample, timestep, clip)).module()
        for ours, theirs in zip(exported_reference(sample, timestep, clip), banks):
            assert relative_error(ours, theirs) <= 1e-6
