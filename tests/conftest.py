"""Shared fixtures: the reference data in ../shared (skipped cleanly when absent)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = Path(os.environ.get("PERSONALIVE_SHARED", REPO.parent / "shared")) / "reference"
GOLDEN = SHARED_REFERENCE / "golden"

# Under pytest-xdist (the README's `-n 2`) the workers share the cores: one intra-op thread each, so that two
# workers on 2 cores do not oversubscribe them (torch's spinning threads then slow both down).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))

# The longest files first, so that the workers start on them at once instead of leaving one for the end (each
# takes minutes; the rest of the suite is many short files).
SLOW_FIRST = ("tests/test_pipeline.py", "tests/test_compile.py", "tests/test_runtime.py", "tests/test_tensorrt_glue.py",
              "tests/test_build.py", "tests/test_offline.py", "tests/test_doctor.py",
              "tests/test_self_check.py", "tests/test_export.py", "tests/test_bench.py", "tests/test_ray.py",
              "tests/test_ray_cli.py", "tests/test_browser.py", "tests/test_ray_listening.py")
# The files that start a Ray on this machine run one after another on one worker: tests/test_ray_cli.py ends with
# `ray stop`, which stops every Ray here, and two local clusters at once would only compete for the 2 cores.
RAY_FILES = ("tests/test_ray.py", "tests/test_ray_cli.py", "tests/test_browser.py", "tests/test_ray_listening.py")
# The files that compare against the parity stream's session fixtures (conftest's parity_torch_stream,
# parity_animator_stream, parity_onnx_build: minutes each) run on one worker too, so that each fixture is
# computed once, not once per worker (the rehearsal of 2026-12-07 computed them on both: ~5 min twice).
PARITY_FILES = ("tests/test_runtime.py", "tests/test_tensorrt_glue.py", "tests/test_build.py", "tests/test_offline_engines.py")


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's work units: a test file (its module fixtures are built once), except that the Ray files are
    one unit and the parity-stream files another. The rest is xdist's ``--dist loadscope`` scheduler."""
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndRay(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ray" if path in RAY_FILES else "parity" if path in PARITY_FILES else path

        def _reschedule(self, node) -> None:
            # xdist queues the next unit on a worker once 2 of its tests are pending; a worker holds its last test
            # until it knows the next one, so 1 is the least that keeps it going. With 1, a worker in one of the
            # LONG_TESTS (never the last of its file) takes no other file behind it while the other worker drains
            # the queue.
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    # xdist orders the units by their number of tests (most first) unless told not to: that put the golden
    # stream (2 tests) and the offline golden (13) behind dozens of short files, and the last of them ran alone at
    # the end (the 16:30 UTC rehearsal of 2026-12-07: one worker busy 2523 s, the other 1749 s). Keep the order of
    # pytest_collection_modifyitems: the slow files first.
    config.option.loadscopereorder = False
    return FilesAndRay(config, log)


# Tests of many minutes each run first in their file (see FilesAndRay._reschedule) and with 2 torch threads: they
# are the suite's critical path, and the other worker drains the queue while they run (the golden stream test
# held 2 threads before the suite ran on two workers, so its numbers are those of that set-up).
LONG_TESTS = ("tests/test_pipeline.py::test_golden_stream_conditioning_warmup_and_keyframes",)
BOTH_CORES = LONG_TESTS + ("tests/test_pipeline.py::test_reference_encoding",)  # the reference UNet at 512²


@pytest.fixture(autouse=True)
def _long_tests_take_both_cores(request):
    if request.node.nodeid not in BOTH_CORES or _WORKERS == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        path = item.nodeid.split("::", 1)[0]
        return (SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST), item.nodeid not in LONG_TESTS)

    items.sort(key=rank)  # stable: otherwise collection order is kept, within a file and among the rest

# A local Ray started in a test process (tests/test_ray.py's fixtures) keeps its node, and so its daemons, on
# 127.0.0.1 as `serve --ray` does (personalive_trt.web.launch.keep_local_ray_on_loopback). Ray reads this when it is
# imported, so it is set before any test module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the shared README's unit metric)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual - expected).abs().max() / scale)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture(scope="session")
def golden(shared_reference):
    """golden("unit_vae") -> the dict stored in ../shared/reference/golden/unit_vae.pt (cached)."""
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            path = GOLDEN / f"{name}.pt"
            if not path.is_file():
                pytest.skip(f"golden file {path} not found")
            cache[name] = torch.load(path, weights_only=False, map_location="cpu")
        return cache[name]

    return load


@pytest.fixture(scope="session")
def small_weights_dir(shared_reference, tmp_path_factory) -> Path:
    """The SMALL seed-0 weights folder the golden data was computed with (written once per session).

    Set PERSONALIVE_SMALL_WEIGHTS to an existing folder to reuse one across runs.
    """
    preset = os.environ.get("PERSONALIVE_SMALL_WEIGHTS")
    if preset and (Path(preset) / "weights_manifest.json").is_file():
        return Path(preset)
    out = tmp_path_factory.mktemp("weights_small_s0")
    cmd = [
        sys.executable, str(shared_reference / "synth_weights.py"), "--config", "small", "--seed", "0",
        "--out", str(out), "--check", str(GOLDEN / "weights_manifest.json"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        # The only tensors allowed to differ from the manifest are the sinusoid tables, which the synthesizer
        # computes with float32 torch.exp/sin/cos: their last bits depend on the CPU's vector math (seen on an
        # AVX-512 machine: every pos_encoder.pe differs by ulps). Those are checked by value instead.
        bad = manifest_mismatches(out / "weights_manifest.json", GOLDEN / "weights_manifest.json")
        assert bad and all(key.endswith(SINUSOID_KEYS) for _, key in bad), (
            f"synth_weights.py failed:\n{result.stdout}\n{result.stderr}")
        for file in sorted({file for file, _ in bad}):  # each checkpoint loaded once
            state = torch.load(out / file, map_location="cpu", weights_only=True)
            for key in (key for f, key in bad if f == file):
                assert_sinusoid_table(state[key], key)
    return out


#: Computed buffers whose float32 bits depend on the CPU's vector math (see small_weights_dir).
SINUSOID_KEYS = ("pos_encoder.pe",)


def manifest_mismatches(written: Path, expected: Path) -> list[tuple[str, str]]:
    got = json.loads(written.read_text())["files"]
    want = json.loads(expected.read_text())["files"]
    return [(f, k) for f, keys in want.items() for k, d in keys.items() if got.get(f, {}).get(k) != d]


def assert_sinusoid_table(table: torch.Tensor, name: str) -> None:
    """``table`` is the interleaved sin/cos position table (pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i),
    w_i = 10000^(-2i/D)) within 1e-5 of the float64 one: float32 exp/sin rounding, at most ~1e-6 for
    these lengths, whatever the CPU; a wrong table is off by O(1)."""
    _, length, dim = table.shape
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    exact = torch.zeros(1, length, dim, dtype=torch.float64)
    exact[0, :, 0::2], exact[0, :, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    error = float((table.double() - exact).abs().max())
    assert table.dtype == torch.float32 and error <= 1e-5, (name, table.dtype, error)


def symlink_tree(source: Path, root: Path) -> Path:
    """A copy of the folder ``source`` at ``root`` made of symlinks to its files (tests then add, drop or
    replace single files in it without touching the original)."""
    for src in source.rglob("*"):
        if src.is_file():
            dst = root / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    return root


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def small_models(small_weights_dir):
    """The golden SMALL networks, loaded strictly from the synthesized weights folder (fp32, CPU)."""
    from personalive_trt import load_models

    return load_models(small_weights_dir)


def frame_stats(x: torch.Tensor, frame_dim: int) -> torch.Tensor:
    """Per-frame [sum, abs_sum, sq_sum] in float64 (the golden data's *_frame_stats)."""
    x = x.detach().double().movedim(frame_dim, 0).flatten(1)
    return torch.stack([x.sum(1), x.abs().sum(1), (x * x).sum(1)], dim=1)


def golden_driving_frames(stream: dict):
    """The stream's 512 driving frames: each stored 256 frame repeated 2x2 per pixel (uint8)."""
    src = stream["driving_src256_u8"].numpy()
    return src.repeat(2, axis=1).repeat(2, axis=2)


# ---- the parity stream (tests/parity.py), computed once per session ------------------------------------------

@pytest.fixture(scope="session")
def parity_models():
    """Tiny synthetic weights, seed 0 (what ``--weights synthetic`` loads), fp32 on the CPU."""
    from personalive_trt.models.weights import synthetic_models

    return synthetic_models("tiny")


@pytest.fixture(scope="session")
def parity_inputs():
    import parity

    return parity.make_inputs()


@pytest.fixture(scope="session")
def parity_animator_stream(parity_models, parity_inputs):
    import parity

    return parity.animator_stream(parity_models, parity_inputs)


@pytest.fixture(scope="session")
def parity_torch_stream(parity_models, parity_inputs):
    import parity

    return parity.torch_runtime_stream(parity_models, parity_inputs)


@pytest.fixture(scope="session")
def parity_onnx_build(tmp_path_factory) -> Path:
    """``build --backend onnxruntime --resolution 128`` of the tiny synthetic weights (fp32 export, verified):
    the ONNX Runtime runtime runs it, the TensorRT glue builds its stand-in engines from a copy of it."""
    pytest.importorskip("onnxruntime")
    import parity
    from personalive_trt.build.driver import build

    out = tmp_path_factory.mktemp("parity_onnx_build")
    build("synthetic", out, backend="onnxruntime", resolution=parity.CONFIG.resolution, precision="fp32",
          log=lambda line: None)
    return out


# ---- the slowest test files (setup + call + teardown of every test, per file) ------------------------------------

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """``slowest test files``: where a CI run's time goes, a line per file (the per-test list is ``--durations``)."""
    per_file: dict[str, float] = {}
    per_worker: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                path = report.nodeid.split("::", 1)[0]
                per_file[path] = per_file.get(path, 0.0) + report.duration
                worker = getattr(getattr(report, "node", None), "gateway", None)
                if worker is not None:
                    per_worker[worker.id] = per_worker.get(worker.id, 0.0) + report.duration
    if not per_file:
        return
    terminalreporter.section("slowest test files")
    for path, seconds in sorted(per_file.items(), key=lambda item: -item[1])[:10]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    terminalreporter.write_line(f"{sum(per_file.values()):8.1f}s  in all ({len(per_file)} files)")
    if per_worker:  # under pytest-xdist: how evenly the workers were loaded (their busy time, not the wall time)
        terminalreporter.write_line("busy per worker: " + ", ".join(
            f"{worker} {seconds:.0f}s" for worker, seconds in sorted(per_worker.items())))
