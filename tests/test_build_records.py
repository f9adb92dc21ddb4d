"""What `build` records and reuses (issue 10 item 2), without running an export.

``export_all`` is replaced by a fake that writes a manifest as the real one does (fingerprint, one
record per network and precision), so each test costs milliseconds; the real export is covered by
tests/test_export.py and tests/test_build.py.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from personalive_trt.build import driver as build_module  # noqa: E402
from personalive_trt.build.driver import build  # noqa: E402
from personalive_trt.engines.folder import BuildRecord, read_build
from personalive_trt.export import onnx_export as oe  # noqa: E402
from personalive_trt.models.weights import SYNTHETIC_NOTICE, load_models  # noqa: E402

RESOLUTION = 128


def write_fake_exports(out_dir, precisions, networks, fingerprint) -> None:
    """What export_all leaves for `build` to read: a manifest naming each network's (empty) files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in networks:
        entries[name] = {"precisions": {}}
        for precision in precisions:
            (out_dir / f"{name}.{precision}").mkdir(exist_ok=True)
            (out_dir / f"{name}.{precision}" / "model.onnx").write_bytes(b"")
            entries[name]["precisions"][precision] = {
                "onnx": f"{name}.{precision}/model.onnx", "precision": precision, "export_seconds": 1.0,
                "verify_seconds": 2.0, "verified": True,
                "memory": {"export_peak_rss_bytes": 2**30, "verify_peak_rss_bytes": 2**31}}
    (out_dir / oe.MANIFEST).write_text(json.dumps({"weights_fingerprint": fingerprint, "networks": entries}))


@pytest.fixture
def fake_export(monkeypatch):
    """export_all writing a manifest with empty files; returns the list of calls (fingerprints)."""
    calls: list[str | None] = []

    def export_all(models, shapes_list, out_dir, precisions, networks, fingerprint=None, log=None, **_):
        calls.append(fingerprint)
        write_fake_exports(out_dir, precisions, networks, fingerprint)
        return {}

    monkeypatch.setattr(oe, "export_all", export_all)
    # The fake export never reads the models: load each set of synthetic weights once for the module.
    monkeypatch.setattr(build_module, "load_models", _cached_models)
    return calls


_MODELS: dict = {}


def _cached_models(weights, seed=0, vae="full"):
    key = (weights, seed, vae)
    if key not in _MODELS:
        _MODELS[key] = load_models(weights, seed=seed, vae=vae)
    return _MODELS[key]


def test_export_of_other_weights_is_reexported_without_build_json(fake_export, tmp_path):
    """A build that stopped before build.json left exports of weights A; building weights B re-exports
    (before: the files existed, so they were reused as B's)."""
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lambda line: None)
    (tmp_path / build_module.BUILD_FILE).unlink()  # as if it stopped before writing build.json
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, seed=1, log=lambda line: None)
    assert fake_export == ["synthetic:tiny:seed0", "synthetic:tiny:seed1"]
    manifest = json.loads((tmp_path / "onnx" / oe.MANIFEST).read_text())
    assert manifest["weights_fingerprint"] == read_build(tmp_path).fingerprint == "synthetic:tiny:seed1"


def test_same_weights_reuse_and_print_measured_figures(fake_export, tmp_path):
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lambda line: None)
    lines: list[str] = []
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lines.append)
    assert len(fake_export) == 1
    assert any("up to date" in line for line in lines)
    assert any("denoising_unet_w4 [fp32]: export 1.0 s, peak 1.00 GiB; verify 2.0 s, peak 2.00 GiB" in line
               for line in lines), lines


def test_reused_exports_without_known_answers_say_how_to_store_them(fake_export, tmp_path):
    """The fake export stores no known answers (as a folder built before build stored them): a build that reuses
    its exports says, in one line, that the self-check cannot check them and how to store them."""
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lambda line: None)
    lines: list[str] = []
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lines.append)
    assert f"{tmp_path}: no known answers stored (exported before build stored them): the self-check cannot " \
           "check these engines; build --force to store them" in lines, lines


def test_manifest_without_fingerprint_is_not_reused(fake_export, tmp_path):
    """An export manifest written before manifests carried the weights fingerprint is re-exported."""
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lambda line: None)
    path = tmp_path / "onnx" / oe.MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["weights_fingerprint"]
    path.write_text(json.dumps(manifest))
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lambda line: None)
    assert len(fake_export) == 2


def test_synthetic_weights_print_the_run_notice(fake_export, tmp_path):
    lines: list[str] = []
    build("synthetic", tmp_path, backend="onnxruntime", resolution=RESOLUTION, log=lines.append)
    assert SYNTHETIC_NOTICE.format(spec="synthetic") in lines


def test_base_precision_is_recorded_and_used(fake_export, tmp_path, monkeypatch):
    """--precision fp32 --override X=fp16: the engines' base is fp32 (before: fp16, because fp16 was
    among the precisions). A build.json without the field keeps its old meaning."""
    seen = {}

    def build_engines(specs, onnx_for, cache_dir, *, precision, precision_overrides, **_):
        seen.update(precision=precision, overrides=precision_overrides)
        return {spec.name: cache_dir / spec.name for spec in specs}

    import personalive_trt.engines as engines
    from personalive_trt.engines import builder

    monkeypatch.setattr(builder, "build_engines", build_engines)
    monkeypatch.setattr(engines, "require_tensorrt", lambda: None)
    build("synthetic", tmp_path, backend="tensorrt", resolution=RESOLUTION, precision="fp32",
          precision_overrides={"pose_encoder": "fp16"}, log=lambda line: None)
    record = read_build(tmp_path)
    assert record.precision == "fp32" and record.precisions == ["fp16", "fp32"] and record.base_precision == "fp32"
    assert seen == {"precision": "fp32", "overrides": {"pose_encoder": "fp16"}}
    old = {k: v for k, v in json.loads((tmp_path / build_module.BUILD_FILE).read_text()).items() if k != "precision"}
    assert BuildRecord(**old).base_precision == "fp16"  # what engine_paths built before the field existed
