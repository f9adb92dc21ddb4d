"""Import hygiene: the runtime, the networks and the benchmark work without PyAV, MediaPipe or FastAPI.

The GPU check's machine has none of the three (and no registry to fetch them), so they are imported where
they are used: video I/O, face framing, the web app. A child interpreter with a meta-path finder that refuses
those modules imports the core and runs the benchmark's input loading, which must not touch them.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import has_module

BLOCKED = ("av", "mediapipe", "fastapi", "uvicorn", "starlette")

CHILD = textwrap.dedent(f"""
    import importlib, importlib.abc, sys

    BLOCKED = {BLOCKED!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    for module in ("personalive_trt", "personalive_trt.engines.networks", "personalive_trt.runtime",
                   "personalive_trt.engines", "personalive_trt.bench", "personalive_trt.media",
                   "personalive_trt.media.framing", "personalive_trt.media.sample", "personalive_trt.cli"):
        importlib.import_module(module)
    from personalive_trt import media
    from personalive_trt.media import sample
    from personalive_trt.bench.session import sample_inputs

    reference, chunks = sample_inputs(64, 4)
    assert reference.shape == (64, 64, 3) and chunks[0].shape == (4, 64, 64, 3), (reference.shape, chunks[0].shape)
    assert media.read_image(sample.sample_reference()).shape == (512, 512, 3)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    try:
        media.VideoReader(sample.sample_driving())
    except ModuleNotFoundError as exc:
        assert exc.name == "av", exc  # video needs PyAV, and says so by name
    else:
        raise AssertionError("VideoReader worked with PyAV blocked")
    print("CLEAN", len(chunks))
""")


def test_core_and_benchmark_inputs_need_no_av_mediapipe_fastapi():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["CLEAN", "15"]  # 60 sample frames in chunks of 4


@pytest.mark.skipif(not has_module("av"), reason="PyAV not installed (the comparison needs both decoders)")
def test_opencv_decodes_the_sample_like_pyav():
    """The benchmark's OpenCV decode of the sample clip matches PyAV's (what `run` uses) within 2 levels."""
    from personalive_trt import media
    from personalive_trt.media import sample
    from personalive_trt.bench.session import sample_frames

    _, ours = sample_frames(512)
    with media.VideoReader(sample.sample_driving()) as reader:
        theirs = list(reader)
    assert len(ours) == len(theirs) == 60
    difference = np.abs(np.stack(ours).astype(np.int16) - np.stack(theirs).astype(np.int16))
    assert difference.max() <= 2 and difference.mean() < 0.1, (difference.max(), difference.mean())
