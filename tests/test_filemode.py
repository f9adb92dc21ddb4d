"""File mode's loop around the animator: every frame kept and in order, the runtime pipelined, and the reading
and writing threads hand their errors to the caller. (The whole command, with real video: tests/test_cli.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from personalive_trt.config import StreamConfig


class CountingRuntime:
    """Stands in for StreamRuntime in file mode: ``submit``/``collect`` with a 2-slot ring; each call
    returns the chunk submitted ``steps - 1`` calls earlier (the pipeline's delay)."""

    ring = 2

    def __init__(self, config):
        self.config, self.count, self.inputs, self.in_flight, self.max_in_flight = config, 0, [], [], 0

    def submit(self, chunk):
        assert len(self.in_flight) < self.ring, "submitted past the ring"
        self.inputs.append(chunk.copy())
        delay = self.config.steps - 1
        out = self.inputs[self.count - delay] if self.count >= delay else np.zeros_like(chunk)
        self.in_flight.append(out)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        self.count += 1
        return self.count - 1

    def collect(self):
        frames = self.in_flight.pop(0)
        return type("Out", (), {"wait": lambda self: frames})()


@pytest.mark.parametrize("n", [1, 4, 7, 12, 13])
def test_file_mode_pipelines_the_runtime_and_keeps_every_frame(n):
    from personalive_trt.filemode.animate import stream_video
    from personalive_trt.filemode.threads import prefetched

    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(n)]
    runtime = CountingRuntime(StreamConfig())
    emitted: list[int] = []
    count = stream_video(runtime, prefetched(iter(frames), depth=2), lambda f: emitted.append(int(f[0, 0, 0])))
    assert count == n and emitted == list(range(n))
    assert runtime.max_in_flight == 2  # the next chunk is submitted before the previous one is collected


def test_prefetched_reraises_the_producer_error():
    from personalive_trt.filemode.threads import prefetched

    def broken():
        yield 1
        raise OSError("decoder failed at frame 2")

    items = prefetched(broken())
    assert next(items) == 1
    with pytest.raises(OSError, match="frame 2"):
        next(items)


def test_background_writer_reraises_and_copies():
    from personalive_trt.filemode.threads import BackgroundWriter

    written = []

    class Sink:
        def write(self, frame):
            if len(written) == 2:
                raise OSError("disk full")
            written.append(frame)

    writer = BackgroundWriter(Sink(), depth=1)
    frame = np.zeros((2, 2, 3), np.uint8)
    writer.write(frame)
    frame[:] = 7  # the caller reuses its buffer: the queued copy is unaffected
    writer.write(frame)
    with pytest.raises(OSError, match="disk full"):
        for _ in range(10):
            writer.write(frame)
        writer.close()
    assert written[0].max() == 0 and written[1].max() == 7
