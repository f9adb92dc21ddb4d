"""Device and dtype choice: ``auto`` takes the GPU when there is one, ``cuda`` is ``cuda:N``, refusals are one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from personalive_trt import devices
from personalive_trt.devices import canonical_device, resolve_device


def test_auto_is_the_cpu_in_fp32_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "fp32") == (torch.device("cpu"), torch.float32)


def test_auto_is_cuda_in_fp16_with_a_gpu(monkeypatch):
    # No GPU here: pretend torch sees one (nothing is allocated on it).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto", "auto") == (torch.device("cuda", 0), torch.float16)
    assert resolve_device("auto", "fp32") == (torch.device("cuda", 0), torch.float32)  # an explicit dtype wins
    assert resolve_device("cuda:1", "auto") == (torch.device("cuda", 1), torch.float16)
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        resolve_device("cuda:2", "auto")


def test_cuda_and_cuda0_are_one_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert canonical_device("cuda") == canonical_device("cuda:0") == torch.device("cuda", 0)
    assert canonical_device(torch.device("cuda")) == torch.device("cuda:0")
    assert canonical_device("cpu") == torch.device("cpu")


def test_keypoint_tables_are_cached_under_the_indexed_device(monkeypatch):
    """``prepare_device_tables("cuda")`` must fill the cache the calls read with ``cuda:0`` tensors."""
    from personalive_trt.models import keypoints

    seen = []
    monkeypatch.setattr(keypoints, "_constant", lambda name, device, size=0: seen.append(device))
    monkeypatch.setattr(keypoints, "_resize_tap_table", lambda *args: seen.append(args[-1]))
    monkeypatch.setattr(devices.torch.cuda, "current_device", lambda: 0)
    keypoints.prepare_device_tables(torch.device("cuda"), 128)
    assert seen and all(d == torch.device("cuda", 0) for d in seen), seen


@pytest.mark.parametrize(("device", "dtype", "backend", "message"), [
    ("cuda", "auto", "torch", "no CUDA device is available"),
    ("cpu", "fp16", "torch", "fp16 needs a CUDA device"),
    ("cpu", "auto", "tensorrt", "tensorrt runs on a CUDA device"),
    ("gpu", "auto", "torch", "expected auto, cpu, cuda or cuda:N"),
    ("cpu", "bf16", "torch", "expected auto, fp32 or fp16"),
])
def test_refusals_name_the_value(monkeypatch, device, dtype, backend, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        resolve_device(device, dtype, backend)


def test_run_with_tensorrt_on_the_cpu_is_refused_in_one_line(tmp_path):
    """TensorRT must never be handed host pointers: the CLI refuses before loading anything."""
    # The stand-in first, then the caller's path: the GPU check installs its carried wheels (diffusers) into a
    # PYTHONPATH folder, which replacing the variable would drop.
    stub = str(Path(__file__).parent / "tensorrt_stub")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [stub, os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out.mp4"
    result = subprocess.run([sys.executable, "-m", "personalive_trt.cli", "run", "--reference", "sample", "--driving",
                             "sample", "--output", str(out), "--backend", "tensorrt", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --backend tensorrt runs on a CUDA device"), result.stderr
    assert not out.exists()


def test_open_animator_says_where_it_runs(capsys):
    from personalive_trt.runtime.animator import open_animator
    from personalive_trt.config import StreamConfig

    animator = open_animator("synthetic", device="cpu", dtype=torch.float32, config=StreamConfig(resolution=128))
    assert animator.device == torch.device("cpu")
    assert "running on cpu, fp32, torch backend" in capsys.readouterr().err
