"""The tiny VAE decoder (TAESD, ``--vae tiny``): weights, parity with diffusers, export, build records, stream.

Cheap on purpose: the tiny synthetic networks, 64x64 and 128x128 canvases, a folder written once per module.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import symlink_tree

from personalive_trt.cli import app
from personalive_trt.config import StreamConfig
from personalive_trt.engines.networks import Networks, specs_by_role
from personalive_trt.shapes import StreamShapes
from personalive_trt.models.synthetic import CONFIGS, TAESD_FULL, synth_state_dict, synth_tensor
from personalive_trt.models.weights import (
    BASE,
    COMPONENTS,
    PERSONALIVE,
    TAESD_DIR,
    VAE_DIR,
    WeightsError,
    build_module,
    load_models,
    synthetic_models,
)

PARITY_TOLERANCE = 1e-5  # fp32, max abs over frames in [0, 1] (issue 12)


# ---- a weights folder in the released layout, written from synthetic networks ---------------------------
def write_taesd(folder: Path, config: dict = TAESD_FULL, seed: int = 0) -> torch.nn.Module:
    """A synthetic TAESD in the hub's layout (diffusers' own writer: config.json + .safetensors)."""
    module = build_module("taesd", {"taesd": config})
    module.load_state_dict(synth_state_dict(module, seed, lambda key: "taesd"), strict=True)
    module.save_pretrained(str(folder))
    return module


def write_weights_folder(root: Path, models) -> Path:
    """Every component of ``models`` as the released files (the denoising UNet split as the release loads it:
    base UNet file, then denoising_unet.pth, then temporal_module.pth; here the base file sets nothing)."""
    sizes = CONFIGS["tiny"]
    for folder in (PERSONALIVE, f"{BASE}/unet", f"{BASE}/image_encoder", VAE_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("reference_unet", "pose_guider", "motion_encoder", "motion_extractor"):
        torch.save(getattr(models, name).state_dict(), root / PERSONALIVE / f"{name}.pth")
    unet = models.denoising_unet.state_dict()
    torch.save({k: v for k, v in unet.items() if ".temporal_modules." not in k}, root / PERSONALIVE / "denoising_unet.pth")
    torch.save({k: v for k, v in unet.items() if ".temporal_modules." in k}, root / PERSONALIVE / "temporal_module.pth")
    torch.save({}, root / BASE / "unet" / "diffusion_pytorch_model.bin")
    torch.save(models.image_encoder.state_dict(), root / BASE / "image_encoder" / "pytorch_model.bin")
    torch.save(models.vae.state_dict(), root / VAE_DIR / "diffusion_pytorch_model.bin")
    for rel, config in ((f"{BASE}/unet", "sd_unet"), (f"{BASE}/image_encoder", "image_encoder"), (VAE_DIR, "vae")):
        (root / rel / "config.json").write_text(json.dumps(sizes[config]))
    return root


@pytest.fixture(scope="module")
def tiny_models():
    return synthetic_models("tiny", vae="tiny")


@pytest.fixture(scope="module")
def weights_dir(tiny_models, tmp_path_factory) -> Path:
    """The tiny networks as a folder, with a released-size synthetic taesd/ (seed 0)."""
    root = write_weights_folder(tmp_path_factory.mktemp("weights_tiny"), tiny_models)
    write_taesd(root / TAESD_DIR)
    return root


@pytest.fixture
def folder_copy(weights_dir, tmp_path) -> Path:
    """A folder of symlinks to ``weights_dir``; tests add, drop or replace single files in it."""
    return symlink_tree(weights_dir, tmp_path / "weights")


# ---- config ----------------------------------------------------------------------------------------------
def test_stream_config_vae():
    assert StreamConfig().vae == "full"
    assert StreamConfig.from_dict({"vae": "tiny"}).vae == "tiny"
    with pytest.raises(ValueError, match=r"StreamConfig.vae 'taesd': expected one of full, tiny"):
        StreamConfig(vae="taesd")
    with pytest.raises(WeightsError, match=r"vae 'small': expected one of full, tiny"):
        load_models("synthetic", vae="small")


# ---- parity with diffusers -------------------------------------------------------------------------------
def test_tiny_decoder_equals_diffusers(weights_dir):
    """Networks.vae_decoder with --vae tiny = AutoencoderTiny.from_pretrained(taesd/).decode, mapped to [0, 1]."""
    from diffusers import AutoencoderTiny

    config = StreamConfig(resolution=64, window=2, vae="tiny")
    models = load_models(weights_dir, vae="tiny")
    nets = Networks.from_models(models, config)
    assert nets.backends["vae_decoder"].spec.name == "vae_decoder_tiny"
    reference = AutoencoderTiny.from_pretrained(str(weights_dir / TAESD_DIR)).eval()
    latents = torch.randn(nets.shapes.latent_frames(config.window), generator=torch.Generator().manual_seed(3))
    frames = nets.vae_decoder(latents)
    with torch.no_grad():
        expected = (reference.decode(latents).sample / 2 + 0.5).clamp(0, 1)  # no /0.18215: scaling factor 1
    assert frames.shape == expected.shape == (2, 3, 64, 64)
    error = float((frames - expected).abs().max())
    assert error <= PARITY_TOLERANCE, error
    inside = float(((expected > 0) & (expected < 1)).float().mean())
    assert inside > 0.9, inside  # the comparison is not of clamped constants
    # ... and it is not the full decoder (which divides by 0.18215 first).
    full = Networks.from_models(models, dataclasses.replace(config, vae="full")).vae_decoder(latents)
    assert float((full - frames).abs().max()) > 0.05


# ---- weights ---------------------------------------------------------------------------------------------
def test_synthetic_taesd_is_seeded_per_tensor(tiny_models):
    assert synthetic_models("tiny").taesd is None  # loaded for vae="tiny" only
    state = tiny_models.taesd.state_dict()
    for key in ("decoder.layers.0.weight", "encoder.layers.0.bias"):
        assert torch.equal(state[key], synth_tensor(0, "taesd", key, state[key].shape)), key
    assert tiny_models.modules()["taesd"] is tiny_models.taesd
    assert list(state["decoder.layers.0.weight"].shape) == [16, 4, 3, 3]  # the narrowed tiny/small TAESD
    with torch.device("meta"):
        full = build_module("taesd", CONFIGS["full"])
    assert list(full.state_dict()["decoder.layers.0.weight"].shape) == [64, 4, 3, 3]  # the released one


def test_tiny_without_taesd_is_one_line_naming_the_folder(folder_copy, tmp_path):
    for path in sorted((folder_copy / TAESD_DIR).iterdir()):
        path.unlink()
    (folder_copy / TAESD_DIR).rmdir()
    assert load_models(folder_copy).taesd is None  # the full decoder does not need it
    with pytest.raises(WeightsError, match=rf"{folder_copy / TAESD_DIR}: missing TAESD folder \(needed for --vae tiny\)"):
        load_models(folder_copy, vae="tiny")
    result = CliRunner().invoke(app, ["run", "--reference", "sample", "--driving", "sample", "--no-crop",
                                      "--output", str(tmp_path / "out.mp4"), "--weights", str(folder_copy),
                                      "--device", "cpu", "--vae", "tiny"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{folder_copy / TAESD_DIR}: missing TAESD folder" in errors[0], result.output
    assert not (tmp_path / "out.mp4").exists()


def test_taesd_config_must_decode_sd_latents_as_they_are(folder_copy):
    path = folder_copy / TAESD_DIR / "config.json"
    config = json.loads(path.read_text())
    path.unlink()
    path.write_text(json.dumps(dict(config, scaling_factor=0.18215)))
    with pytest.raises(WeightsError, match=r"taesd/config.json: scaling_factor = 0.18215, expected 1.0"):
        load_models(folder_copy, vae="tiny")


def test_weights_check_taesd_present_absent_broken(folder_copy):
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "check", str(folder_copy)])
    assert result.exit_code == 0, result.output
    assert "taesd: ok" in result.output and "taesd/diffusion_pytorch_model.safetensors" in result.output
    assert f"all {len(COMPONENTS) + 1} components ok" in result.output

    from safetensors.torch import load_file, save_file

    weights = folder_copy / TAESD_DIR / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("decoder.layers.0.weight")
    weights.unlink()
    save_file(state, str(weights))
    result = runner.invoke(app, ["weights", "check", str(folder_copy)])
    assert result.exit_code == 1
    assert "taesd: PROBLEMS" in result.output and "key 'decoder.layers.0.weight'" in result.output

    for path in sorted((folder_copy / TAESD_DIR).iterdir()):
        path.unlink()
    (folder_copy / TAESD_DIR).rmdir()
    result = runner.invoke(app, ["weights", "check", str(folder_copy)])
    assert result.exit_code == 0, result.output  # an otherwise complete folder stays complete
    assert "taesd: absent (optional: needed only for --vae tiny" in result.output
    assert f"all {len(COMPONENTS)} components ok (taesd: absent, optional)" in result.output


def test_download_fetches_taesd_into_its_folder(tmp_path, monkeypatch):
    from personalive_trt.build.download import WEIGHT_FILES

    assert [(remote, local) for repo, remote, local in WEIGHT_FILES if repo == "madebyollin/taesd"] == [
        ("config.json", "taesd/config.json"),
        ("diffusion_pytorch_model.safetensors", "taesd/diffusion_pytorch_model.safetensors")]
    root = tmp_path / "w"
    for _, _, local in WEIGHT_FILES:  # everything else is there already: only TAESD is left to fetch
        if not local.startswith(TAESD_DIR):
            (root / local).parent.mkdir(parents=True, exist_ok=True)
            (root / local).write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["weights", "download", str(root)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and "cannot download madebyollin/taesd/config.json" in errors[0], result.output


# ---- specs, export ---------------------------------------------------------------------------------------
def test_tiny_spec_replaces_the_decoder_only(tiny_models):
    unet = tiny_models.denoising_unet.config
    full = specs_by_role(StreamShapes.from_unet_config(StreamConfig(resolution=64, window=2), unet))
    tiny = specs_by_role(StreamShapes.from_unet_config(StreamConfig(resolution=64, window=2, vae="tiny"), unet))
    assert (full["vae_decoder"].name, full["vae_decoder"].component) == ("vae_decoder", "vae")
    assert (tiny["vae_decoder"].name, tiny["vae_decoder"].component) == ("vae_decoder_tiny", "taesd")
    assert tiny["vae_decoder"].inputs == full["vae_decoder"].inputs
    assert tiny["vae_decoder"].outputs == full["vae_decoder"].outputs
    assert tiny["vae_encoder"] == full["vae_encoder"]  # the reference keeps the full encoder
    assert {r: s for r, s in tiny.items() if r != "vae_decoder"} == {r: s for r, s in full.items() if r != "vae_decoder"}


def test_tiny_decoder_exports_and_verifies(tiny_models, tmp_path):
    """fp32 and fp16 ONNX of vae_decoder_tiny, each verified in ONNX Runtime against the torch module."""
    pytest.importorskip("onnxruntime")
    from personalive_trt.export.onnx_export import export_precisions

    shapes = StreamShapes.from_unet_config(StreamConfig(resolution=64, window=2, vae="tiny"),
                                           tiny_models.denoising_unet.config)
    spec = specs_by_role(shapes)["vae_decoder"]
    records = export_precisions(spec, tiny_models, tmp_path, ("fp32", "fp16"))
    for precision, record in records.items():
        assert record["network"] == "vae_decoder_tiny" and record["component"] == "taesd"
        assert record["verification"]["passed"] is True, (precision, record["verification"])
        assert (tmp_path / record["onnx"]).is_file()
    assert records["fp32"]["sha256"] != records["fp16"]["sha256"]


# ---- build records ---------------------------------------------------------------------------------------
def old_build_record(engines: Path, unet_config) -> None:
    """A build.json as written before --vae existed: no "vae" in the record nor in its configs."""
    from personalive_trt.build.driver import _plain
    from personalive_trt.engines.folder import BUILD_FILE

    config = {k: v for k, v in dataclasses.asdict(StreamConfig(resolution=64, window=2)).items() if k != "vae"}
    engines.mkdir(parents=True, exist_ok=True)
    (engines / BUILD_FILE).write_text(json.dumps({
        "weights": "synthetic", "fingerprint": "synthetic:tiny:seed0", "unet_config": _plain(unet_config),
        "configs": [config], "precisions": ["fp32"], "backend": "onnxruntime", "overrides": {}, "seconds": 1.0}))


def test_build_record_without_vae_means_full_and_the_other_decoder_is_refused(tiny_models, tmp_path):
    from personalive_trt.build.driver import build
    from personalive_trt.engines.folder import BuildError, load_networks, read_build

    engines = tmp_path / "engines"
    old_build_record(engines, tiny_models.denoising_unet.config)
    record = read_build(engines)
    assert record.vae == "full"
    assert record.shapes(StreamConfig(resolution=64, window=2)).config.vae == "full"  # old engines keep working
    refusal = r"the engines were built for --vae full, not --vae tiny; rebuild with `personalive-trt build --vae tiny`"
    with pytest.raises(BuildError, match=refusal):
        record.shapes(StreamConfig(resolution=64, window=2, vae="tiny"))
    with pytest.raises(BuildError, match=refusal):
        load_networks(engines, "onnxruntime", "synthetic", StreamConfig(resolution=64, window=2, vae="tiny"), "cpu")
    pytest.importorskip("onnxruntime")
    with pytest.raises(BuildError, match=r"holds engines built for --vae full; use another --engines folder"):
        build("synthetic", engines, backend="onnxruntime", windows=(2,), vae="tiny", log=lambda message: None)
    result = CliRunner().invoke(app, ["run", "--reference", "sample", "--driving", "sample", "--no-crop",
                                      "--output", str(tmp_path / "out.mp4"), "--weights", "synthetic",
                                      "--device", "cpu", "--backend", "onnxruntime", "--engines", str(engines),
                                      "--window", "2", "--vae", "tiny"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "built for --vae full, not --vae tiny" in errors[0], result.output


def test_taesd_counts_in_the_fingerprint_only_for_the_tiny_decoder(folder_copy):
    from personalive_trt.engines.folder import weights_fingerprint

    full, tiny = weights_fingerprint(str(folder_copy)), weights_fingerprint(str(folder_copy), vae="tiny")
    assert full != tiny
    config = folder_copy / TAESD_DIR / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text + "\n")  # another taesd/ (size and time differ)
    assert weights_fingerprint(str(folder_copy)) == full  # engines of the full decoder stay valid
    assert weights_fingerprint(str(folder_copy), vae="tiny") != tiny
    for path in sorted((folder_copy / TAESD_DIR).iterdir()):
        path.unlink()
    (folder_copy / TAESD_DIR).rmdir()
    assert weights_fingerprint(str(folder_copy)) == full  # ... with taesd/ added or removed


# ---- the stream ------------------------------------------------------------------------------------------
def test_stream_runs_the_tiny_decoder(tiny_models):
    """StreamRuntime with --vae tiny: the decoder role is vae_decoder_tiny (so its CUDA graphs replay TAESD), it
    matches the reference Animator, never reads the device nor allocates, and its frames are not the full decoder's."""
    from conftest import relative_error
    from parity import CONFIG, TORCH_TOLERANCE, HostSyncGuard, seeded_noise

    from personalive_trt import media
    from personalive_trt.media import framing
    from personalive_trt.media import sample
    from personalive_trt.runtime.reference_loop import Animator
    from personalive_trt.runtime import StreamRuntime

    size, calls = CONFIG.resolution, 2  # the first call and a steady one (the keys it captures)
    reference = framing.resize_square(media.read_image(sample.sample_reference()), size)
    with media.VideoReader(sample.sample_driving(), max_frames=CONFIG.window * calls) as reader:
        frames = [framing.resize_square(frame, size) for frame in reader]
    chunks = [np.stack(frames[i:i + CONFIG.window]) for i in range(0, len(frames), CONFIG.window)]
    tiny = dataclasses.replace(CONFIG, vae="tiny")

    def stream(loop, guard=None):
        loop.fuse_reference(reference)
        out = []
        for chunk in chunks:
            if guard is None:
                out.append(loop.step_float(chunk))
            else:
                with guard.active():
                    out.append(loop.step_float(chunk))
        return out

    runtime = StreamRuntime.from_models(tiny_models, tiny, noise=seeded_noise(1))
    assert runtime.nets.backends["vae_decoder"].spec.name == "vae_decoder_tiny"
    guard = HostSyncGuard(runtime.nets)
    got = stream(runtime, guard)
    expected = stream(Animator(tiny_models, tiny, noise=seeded_noise(1)))
    full = stream(StreamRuntime.from_models(tiny_models, CONFIG, noise=seeded_noise(1)))
    assert len(got) == calls
    assert max(relative_error(a, b) for a, b in zip(got, expected)) <= TORCH_TOLERANCE
    assert guard.violations == []
    assert min(float((a - b).abs().max()) for a, b in zip(got, full)) > 0.05


# ---- the benchmark ---------------------------------------------------------------------------------------
def test_bench_follows_the_decoder(tmp_path):
    """--vae tiny: the report says so (top level, config, options) and counts TAESD's FLOPs, not the full decoder's."""
    from personalive_trt import bench
    from personalive_trt.bench.flops import tiny_decoder_flops
    from personalive_trt.models.synthetic import SD_UNET_FULL

    out = tmp_path / "report.json"
    result = CliRunner().invoke(bench.standalone_app(), ["--weights", "synthetic", "--resolution", "64", "--warmup",
                                                         "0", "--calls", "1", "--vae", "tiny", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "vae tiny" in result.output
    report = json.loads(out.read_text())
    assert report["vae"] == report["config"]["vae"] == report["options"]["vae"] == "tiny"
    shapes = StreamShapes.from_unet_config(StreamConfig(resolution=64, max_keyframes=0), SD_UNET_FULL)
    # the eager call's counted decode is the synthetic tiny TAESD's, not the (narrowed) full decoder's
    assert report["flops"]["per_network"]["vae_decoder"] == tiny_decoder_flops(shapes, CONFIGS["tiny"]["taesd"])

    bad = CliRunner().invoke(bench.standalone_app(), ["--vae", "huge"])
    assert bad.exit_code == 1
    assert bad.output.strip() == "error: --vae 'huge': expected one of full, tiny"


def test_full_size_flops_with_the_tiny_decoder():
    """The shipped table has only the full decoder: with --vae tiny its entry becomes TAESD's count (565.4 GFLOP
    at 512 and window 4, ~1/18 of the full decoder's), everything else stays the table's."""
    from types import SimpleNamespace

    from personalive_trt.bench.flops import flops_report, reference_flops
    from personalive_trt.bench.options import BenchOptions
    from personalive_trt.models.synthetic import SD_UNET_FULL

    table = reference_flops(0)
    reports = {}
    for vae in ("full", "tiny"):
        config = StreamConfig(vae=vae, max_keyframes=0)
        runtime = SimpleNamespace(config=config, shapes=StreamShapes.from_unet_config(config, SD_UNET_FULL))
        reports[vae] = flops_report(runtime, BenchOptions(vae=vae), None, step_p50_ms=1000.0)
    assert reports["full"]["per_network"] == table
    tiny = reports["tiny"]["per_network"]
    assert tiny["vae_decoder"] == 565_400_567_808  # FlopCounterMode on AutoencoderTiny(), latents (4, 4, 64, 64)
    assert {k: v for k, v in tiny.items() if k != "vae_decoder"} == {k: v for k, v in table.items() if k != "vae_decoder"}
    assert reports["tiny"]["per_step"] == reports["full"]["per_step"] - table["vae_decoder"] + tiny["vae_decoder"]
    assert "TAESD" in reports["tiny"]["source"]
