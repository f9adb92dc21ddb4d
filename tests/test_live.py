"""Live mode: slots, sources, the animation worker, `run` with live sinks, Ctrl-C.

The model is replaced by the EchoAnimator test double (personalive_trt/live/testing.py): the pipeline's
interface and timing (outputs leave steps-1 calls after their inputs), output = (3 * driving + reference) / 4.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from personalive_trt.cli import app
from personalive_trt.config import StreamConfig
from personalive_trt.live.runner import LiveOptions, is_live_request, run_live
from personalive_trt.live.slots import FrameRing, LatestSlot, PlayoutClock
from personalive_trt.live.sources import FrameSource, SourceError, parse_source
from personalive_trt.live.testing import EchoAnimator
from personalive_trt.live.worker import AnimationWorker, MalformedFrameError, MalformedStreamError, StampedFrame
from personalive_trt.media import MediaError, VideoReader, probe_video

RES = 64


# ------------------------------------------------------------------------------------------------ slots


def test_latest_slot_keeps_the_newest_and_counts_what_it_replaced():
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(timeout=0) == 4 and slot.dropped == 4 and slot.put_count == 5
    assert slot.get(timeout=0.01) is None
    slot.put(5)
    slot.clear()  # forgotten on request: not a drop
    assert not slot.discard() and slot.dropped == 4  # nothing waits: nothing to discard
    slot.put(6)
    assert slot.discard() and slot.dropped == 5 and slot.get(timeout=0) is None  # a stale item: dropped, counted
    waiter = threading.Thread(target=lambda: result.append(slot.get(timeout=5)))
    result: list = []
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(2)
    assert result == [None] and not waiter.is_alive()  # close wakes a blocked reader
    assert slot.put(9) is False


def test_frame_ring_evicts_the_oldest():
    ring: FrameRing[int] = FrameRing(3)
    for i in range(5):
        ring.put(i)
    assert [ring.get(0) for _ in range(3)] == [2, 3, 4] and ring.dropped == 2 and ring.get(0.01) is None


def test_playout_clock_spaces_frames_like_their_capture_without_drift():
    clock = PlayoutClock(max_lag=0.25)
    assert clock.wait(10.0, 100.0) == 0.0  # anchors
    assert clock.wait(10.1, 100.0) == pytest.approx(0.1)  # four frames arriving together are spread out
    assert clock.wait(10.2, 100.05) == pytest.approx(0.15)
    assert clock.wait(10.3, 100.35) == 0.0  # slightly late: shown at once, still on the same timeline
    assert clock.wait(10.4, 101.0) == 0.0  # 0.6 s late: re-anchored
    assert clock.wait(10.5, 101.0) == pytest.approx(0.1)


def play(clock: PlayoutClock, windows: int, late_first: float, spacing: float = 0.1, window: int = 4,
         transit: float = 0.2) -> list[tuple[float, float]]:
    """(capture, show) of each frame: windows of ``window`` frames captured ``spacing`` apart arrive together
    ``transit`` s after their last frame (the first window ``late_first`` s later still), and are shown one
    after the other as the play-out loop does (the next frame's 'now' is the previous one's show time)."""
    shown, t = [], 0.0
    for w in range(windows):
        captures = [(w * window + i) * spacing for i in range(window)]
        arrival = captures[-1] + transit + (late_first if w == 0 else 0.0)
        t = max(t, arrival)
        for capture in captures:
            t += clock.wait(capture, t, arrival)
            shown.append((capture, t))
    return shown


def test_playout_clock_comes_back_down_after_a_late_window_smoothly():
    """One late window at the start must not hold the whole session to its latency: the offset returns to
    what the windows need (the first frame of each: 3 frames + transit = 0.5 s) by 0.1 s per s, and frames are
    never shown closer together than 90% of their capture spacing on the way."""
    clock = PlayoutClock()
    shown = play(clock, windows=40, late_first=0.5)  # 16 s of stream
    latencies = [s - c for c, s in shown]
    assert latencies[0] == pytest.approx(1.0)  # anchored on the late window
    assert latencies[-1] == pytest.approx(0.5, abs=1e-9) and clock.offset == pytest.approx(0.5, abs=1e-9)
    assert min(latencies) >= 0.5 - 1e-9  # never earlier than the first frame of a window allows: no stutter
    gaps = [b[1] - a[1] for a, b in zip(shown, shown[1:])]
    assert min(gaps) >= 0.09 - 1e-9, min(gaps)
    recovered = next(i for i, lat in enumerate(latencies) if lat < 0.5 + 1e-6)
    assert shown[recovered][1] < 9.0, shown[recovered]  # 2 s horizon + 0.5 s at 0.1 s/s, from ~1.2 s
    steady = play(PlayoutClock(), windows=40, late_first=0.0)
    assert all(s - c == pytest.approx(0.5) for c, s in steady)  # on time from the start: held at 0.5 throughout


# ------------------------------------------------------------------------------------------------ sources


def test_parse_source_classifies_driving_values(tmp_path):
    assert (parse_source("webcam").kind, parse_source("webcam").target) == ("camera", 0)
    assert parse_source("webcam:2").target == 2 and parse_source("webcam:2").kind == "camera"
    assert parse_source("/dev/video1").kind == "device"
    assert parse_source("rtsp://127.0.0.1:8554/cam").kind == "url"
    assert parse_source("https://example.invalid/stream.m3u8").kind == "url"
    sample = parse_source("sample")
    assert sample.kind == "file" and not sample.is_live and Path(sample.target).is_file()
    assert parse_source("webcam").is_live
    with pytest.raises(MediaError, match="nope.mp4"):
        parse_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(ValueError, match="webcam:N"):
        parse_source("webcam:front")
    assert is_live_request("webcam", False, False) and is_live_request("sample", True, False)
    assert not is_live_request("sample", False, False)


def test_unopenable_camera_is_one_clear_error():
    from personalive_trt.live.sources import open_source

    with pytest.raises(SourceError, match="cannot open the device"):
        open_source("/dev/video99")


# ------------------------------------------------------------------------------------------------ worker


def level_frame(value: int) -> np.ndarray:
    return np.full((RES, RES, 3), value, np.uint8)


def test_worker_aligns_outputs_with_their_driving_frames_and_skips_malformed_ones():
    reference = level_frame(40)
    outputs, errors = [], []
    worker = AnimationWorker(EchoAnimator(StreamConfig(resolution=RES)), emit=outputs.append, on_error=errors.append)

    def prepare(data):
        if data is None:
            raise MalformedFrameError("broken frame")
        return level_frame(data)

    try:
        worker.start(reference, prepare)
        assert worker.wait_idle()
        sent = 0
        for i in range(40):
            data = None if i % 5 == 3 else 4 * i
            while worker.inbox.pending:  # hand over one at a time: no drops, a deterministic stream
                time.sleep(0.001)
            worker.inbox.put(StampedFrame(data, time.monotonic(), i))
            sent += 1
        deadline = time.monotonic() + 5
        while len(outputs) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.close()
    good = [i for i in range(40) if i % 5 != 3]  # 32 well-formed frames = 8 windows; 3 windows still inside
    assert worker.stats.malformed == 8 and errors == []
    assert [o.index for o in outputs] == good[:20]  # warm-up frames are not emitted; order and tags are exact
    for out in outputs:
        assert int(out.image[0, 0, 0]) == (3 * 4 * out.index + 40) // 4
        assert out.latency >= 0


def feed(worker: AnimationWorker, items) -> None:
    """Hand ``items`` over one at a time (no drops), waiting for the worker to take each."""
    for i, data in enumerate(items):
        deadline = time.monotonic() + 5
        while worker.inbox.pending and time.monotonic() < deadline:
            time.sleep(0.001)
        worker.inbox.put(StampedFrame(data, time.monotonic(), i))


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_worker_ends_the_stream_when_prepare_fails_for_another_reason_than_bad_data():
    """A bug in prepare (here a TypeError) is not a malformed frame: the stream ends with it, once."""
    errors = []
    worker = AnimationWorker(EchoAnimator(StreamConfig(resolution=RES)), emit=lambda frame: None,
                             on_error=errors.append)

    def prepare(data):
        raise TypeError("prepare has a bug")

    try:
        worker.start(level_frame(0), prepare)
        assert worker.wait_idle()
        feed(worker, range(1))  # the first frame ends the stream (an inactive worker takes no more frames)
        assert wait_for(lambda: errors)
        time.sleep(0.1)
    finally:
        worker.close()
    assert [type(e) for e in errors] == [TypeError] and not worker.active
    assert worker.stats.malformed == 0 and worker.stats.errors == 1
    assert worker.animator_failure is None  # prepare failed, not the animator


def test_worker_ends_the_stream_after_n_malformed_frames_in_a_row():
    """Scattered bad frames are skipped; ``max_malformed_in_a_row`` in a row end the stream."""
    outputs, errors = [], []
    worker = AnimationWorker(EchoAnimator(StreamConfig(resolution=RES, steps=1)), emit=outputs.append,
                             on_error=errors.append, max_malformed_in_a_row=3)

    def prepare(data):
        if data is None:
            raise MalformedFrameError("bad bytes")
        return level_frame(data)

    try:
        worker.start(level_frame(0), prepare)
        assert worker.wait_idle()
        feed(worker, [None, None, 1, None, None, 2, 3, 4])  # never 3 in a row: one window animated
        assert wait_for(lambda: len(outputs) == 4)
        assert errors == [] and worker.active and worker.stats.malformed == 4
        feed(worker, [None, None, None, 5])
        assert wait_for(lambda: errors)
    finally:
        worker.close()
    assert len(errors) == 1 and isinstance(errors[0], MalformedStreamError) and not worker.active
    assert "3 malformed driving frames in a row" in str(errors[0]) and "bad bytes" in str(errors[0])
    assert worker.stats.malformed == 7 and worker.animator_failure is None  # bad input is not the animator's failure
    with pytest.raises(ValueError, match="max_malformed_in_a_row"):
        AnimationWorker(EchoAnimator(), emit=print, max_malformed_in_a_row=0)


class GatedFuse(EchoAnimator):
    """Echo whose reference fusion waits for ``gate`` and records each reference it fused (by its level)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fused: list[int] = []

    def fuse_reference(self, image):
        assert self.gate.wait(5), "the test never opened the gate"
        super().fuse_reference(image)
        self.fused.append(int(image[0, 0, 0]))


def test_worker_coalesces_control_a_newer_start_or_swap_replaces_a_pending_one_and_stop_drops_it():
    """Commands given while a fusion runs wait in one slot: 400 swaps are one fusion, a stop drops the pending
    one, and nothing a stopped stream asked for runs after the stop."""
    animator = GatedFuse(StreamConfig(resolution=RES, steps=1))
    outputs = []
    worker = AnimationWorker(animator, emit=outputs.append)
    try:
        worker.start(level_frame(1), level_frame, tag="a")
        assert wait_for(lambda: worker.stats.fusions == 1)  # the first fusion runs (held at the gate)
        for i in range(400):  # 400 swaps while it runs, the last one level 201
            worker.swap_reference(level_frame(2 + i % 200))
        animator.gate.set()
        assert worker.wait_idle()
        assert animator.fused == [1, 201] and worker.stats.fusions == 2  # the start, then the newest swap only

        animator.gate.clear()
        worker.swap_reference(level_frame(7))  # fusing (held) ...
        assert wait_for(lambda: worker.stats.fusions == 3)
        for level in (8, 9):
            worker.swap_reference(level_frame(level))  # ... these wait in the slot ...
        worker.stop()  # ... and the stop drops them
        animator.gate.set()
        assert worker.wait_idle() and not worker.active
        assert animator.fused == [1, 201, 7] and worker.stats.fusions == 3
        worker.swap_reference(level_frame(10))  # a swap on a stopped stream fuses nothing
        assert worker.wait_idle() and worker.stats.fusions == 3

        animator.gate.clear()
        worker.start(level_frame(20), level_frame, tag="b")  # fusing (held) ...
        assert wait_for(lambda: worker.stats.fusions == 4)
        worker.start(level_frame(30), level_frame, tag="c")  # a pending start ...
        worker.swap_reference(level_frame(31))  # ... takes a newer swap's reference, keeping its own tag
        animator.gate.set()
        assert worker.wait_idle() and worker.active
        assert animator.fused == [1, 201, 7, 20, 31] and worker.stats.fusions == 5
        feed(worker, [100] * 4)
        assert wait_for(lambda: len(outputs) == 4)
    finally:
        animator.gate.set()
        worker.close()
    assert {o.tag for o in outputs} == {"c"}
    assert int(outputs[0].image[0, 0, 0]) == (3 * 100 + 31) // 4  # animated with the newest reference


def test_a_frame_that_waits_through_the_fusion_is_dropped_and_counted_and_ready_says_when_frames_count():
    """A start is a fusion: the newest frame sent during it is stale once it ends, so it is discarded and counted
    in the inbox's ``dropped`` (it used to vanish uncounted). ``ready`` is False while a command is pending or
    being applied, even over a stream that was running, and True once frames put in the inbox are animated."""
    animator = GatedFuse(StreamConfig(resolution=RES, steps=1))
    outputs = []
    worker = AnimationWorker(animator, emit=outputs.append)
    try:
        assert not worker.ready
        worker.start(level_frame(1), level_frame)
        assert wait_for(lambda: worker.stats.fusions == 1) and not worker.ready  # fusing (held at the gate)
        worker.inbox.put(StampedFrame(50, time.monotonic(), 0))
        animator.gate.set()
        assert worker.wait_idle() and wait_for(lambda: worker.ready)
        assert worker.inbox.dropped == 1 and not worker.inbox.pending  # the stale frame: gone, and counted
        feed(worker, [60] * 4)
        assert wait_for(lambda: len(outputs) == 4) and worker.inbox.dropped == 1
        assert [o.index for o in outputs] == [0, 1, 2, 3] and int(outputs[0].image[0, 0, 0]) == (3 * 60 + 1) // 4

        animator.gate.clear()
        worker.swap_reference(level_frame(2))  # a running stream is not ready while its swap waits or fuses
        assert not worker.ready and wait_for(lambda: worker.stats.fusions == 2) and not worker.ready
        animator.gate.set()
        assert wait_for(lambda: worker.ready)
        worker.stop()
        assert not worker.ready and worker.wait_idle() and not worker.ready
    finally:
        animator.gate.set()
        worker.close()


def test_worker_survives_an_animator_failure_and_tags_streams():
    class Failing(EchoAnimator):
        def step(self, frames):
            if frames[0, 0, 0, 0] == 13:
                raise RuntimeError("boom")
            return super().step(frames)

    outputs, errors = [], []
    worker = AnimationWorker(Failing(StreamConfig(resolution=RES, steps=1)), emit=outputs.append,
                             on_error=errors.append)
    try:
        worker.start(level_frame(0), level_frame, tag="first")
        assert worker.wait_idle()
        for value in (13, 13, 13, 13):
            worker.inbox.put(StampedFrame(value, time.monotonic(), 0))
            time.sleep(0.02)
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [str(e) for e in errors] == ["boom"] and not worker.active
        assert worker.animator_failure is errors[0]  # liveness: the animator itself failed
        worker.start(level_frame(0), level_frame, tag="second")
        assert worker.wait_idle() and worker.animator_failure is None  # a restart that fuses clears it
        for value in range(8):
            worker.inbox.put(StampedFrame(value, time.monotonic(), value))
            time.sleep(0.02)
        deadline = time.monotonic() + 5
        while not outputs and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.close()
    assert outputs and {o.tag for o in outputs} == {"second"} and worker.stats.errors == 1


# ------------------------------------------------------------------------------------------------ run (live)


def test_run_live_from_a_paced_file_writes_the_output(tmp_path):
    """The portrait's fusion (here 0.75 s, 19 frames at 25 fps) ends before the paced file starts: no frame is lost
    to it (before, the file's first frames were dropped as stale while it ran)."""
    out = tmp_path / "live.mp4"
    stats = run_live(LiveOptions(reference="sample", driving="sample", output=out, crop=False),
                     status=lambda m: None, _animator=EchoAnimator(StreamConfig(resolution=RES), fuse_seconds=0.75))
    assert stats.stopped_by == "end of source" and stats.captured == 60
    # frames still inside the pipeline when the source ends are not shown: (steps - 1) windows at most
    assert 60 - 4 * 4 <= stats.frames <= 60 and stats.malformed == 0
    info = probe_video(out)
    assert info.fps == 25 and info.width == RES and info.frame_count == stats.frames
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


def test_slow_animator_drops_stale_frames_instead_of_queueing_them(tmp_path):
    """Step time 0.25 s for 4 frames (16 fps) against a 25 fps source: frames are dropped, latency stays bounded."""
    stats = run_live(LiveOptions(reference="sample", driving="sample", output=tmp_path / "o.mp4", crop=False),
                     status=lambda m: None, _animator=EchoAnimator(StreamConfig(resolution=RES), step_seconds=0.25))
    assert stats.dropped_input > 5
    assert stats.frames + stats.dropped_input <= stats.captured
    # 3 steps of pipeline delay + gathering a window; a queue would grow with the clip instead
    assert max(stats.latencies) < 4 * (0.25 + 4 / 25) + 0.5


def test_run_live_stops_after_max_frames(tmp_path):
    stats = run_live(LiveOptions(reference="sample", driving="sample", output=tmp_path / "o.mp4", crop=False,
                                 max_frames=10, loop=True),
                     status=lambda m: None, _animator=EchoAnimator(StreamConfig(resolution=RES)))
    assert stats.frames == 10 and stats.stopped_by == "--max-frames 10"
    assert probe_video(tmp_path / "o.mp4").frame_count == 10


@pytest.mark.parametrize("signum, label", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_stops_cleanly_and_finalises_the_output(tmp_path, signum, label):
    """Ctrl-C (and SIGTERM, which the play-out loop also turns into a stop flag rather than an exception that
    could land inside a lock) stops the run, keeps the frames shown and leaves no temporary file."""
    out = tmp_path / "live.mp4"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from personalive_trt.config import StreamConfig
        from personalive_trt.live.runner import LiveOptions, run_live
        from personalive_trt.live.testing import EchoAnimator
        stats = run_live(LiveOptions(reference="sample", driving="sample", output=Path({str(out)!r}), crop=False,
                                     loop=True), status=lambda m: print(m, flush=True),
                         _animator=EchoAnimator(StreamConfig(resolution={RES})))
        print("STOPPED", stats.stopped_by, stats.frames, flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert "Ctrl-C stops" in process.stdout.readline()
        time.sleep(2.0)  # a looping source never ends by itself
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert f"STOPPED {label}" in stdout and "Traceback" not in stderr
    frames = int(stdout.split(f"STOPPED {label}")[1].split()[0])
    with VideoReader(out) as reader:
        assert sum(1 for _ in reader) == frames > 10
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]  # finalised: no temporary file left


# ------------------------------------------------------------------------------------------------ CLI


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_preview_without_a_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    line = one_error_line(invoke("-r", "sample", "-d", "sample", "--preview", "--no-crop", "--weights", "synthetic"))
    assert "--preview needs a display" in line


def test_cli_virtual_camera_without_pyvirtualcam_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    line = one_error_line(invoke("-r", "sample", "-d", "sample", "--virtual-camera", "--no-crop"))
    assert "pyvirtualcam" in line and "personalive-trt[virtual-camera]" in line


def test_cli_live_errors_are_one_line(tmp_path):
    assert "cannot open the device" in one_error_line(invoke("-r", "sample", "-d", "/dev/video99", "--no-crop",
                                                             "-o", str(tmp_path / "o.mp4")))
    assert "--output is required" in one_error_line(invoke("-r", "sample", "-d", "sample"))
    assert "at least one sink" in one_error_line(invoke("-r", "sample", "-d", "webcam:9", "--no-crop"))
    assert "apply to live mode" in one_error_line(invoke("-r", "sample", "-d", "sample", "--loop",
                                                         "-o", str(tmp_path / "o.mp4")))
    assert not list(tmp_path.iterdir())


def test_cli_serve_rejects_bad_options():
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert "--port 0" in one_error_line(result)
    result = CliRunner().invoke(app, ["serve", "--max-sessions", "0"])
    assert "must be positive" in one_error_line(result)


# ------------------------------------------------------------------------------------------------ lost source


class LostCamera(FrameSource):
    """A camera that delivers ``frames`` frames at 25 fps, then fails as an unplugged one does (a test double)."""

    def __init__(self, frames: int) -> None:
        super().__init__("webcam")
        self.fps = 25.0
        self.frames = frames

    def _capture(self) -> None:
        for i in range(self.frames):
            if self._stop.is_set():
                return
            self._publish(np.full((96, 96, 3), 40 + 4 * (i % 40), np.uint8))
            time.sleep(1 / 25)
        raise SourceError("no frames after 30 attempts (source lost or ended)")


def test_camera_lost_mid_run_finalises_the_output_and_exits_non_zero(tmp_path, monkeypatch):
    """The frames shown before the loss are kept in a finalised file; the command fails in one line with the
    cause (before: it exited 0 as if the source had ended)."""
    from personalive_trt.runtime import animator as animate
    from personalive_trt.live import sources

    monkeypatch.setattr(sources, "open_source", lambda value, **_: LostCamera(40))
    monkeypatch.setattr(animate, "open_animator", lambda weights, config, **_: EchoAnimator(config))
    out = tmp_path / "live.mp4"
    result = invoke("-r", "sample", "-d", "webcam", "--no-crop", "-o", str(out), "--weights", "synthetic",
                    "--device", "cpu")
    line = one_error_line(result)
    assert "webcam: no frames after 30 attempts (source lost or ended)" in line, line
    frames = int(line.split("; the ")[1].split()[0])
    assert f"frames before it were written to {out}" in line
    with VideoReader(out) as reader:
        assert sum(1 for _ in reader) == frames > 0
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


def test_run_live_animates_with_the_real_pipeline(tmp_path):
    """Live mode with the real models (tiny synthetic weights, 128², CPU), not the echo double: the first
    window out of the streaming runtime reaches a finalised file."""
    out = tmp_path / "live.mp4"
    stats = run_live(LiveOptions(reference="sample", driving="sample", output=out, crop=False, weights="synthetic",
                                 device="cpu", resolution=128, max_frames=4, loop=True), status=lambda m: None)
    assert stats.frames == 4 and stats.stopped_by == "--max-frames 4"
    assert stats.backend.startswith("stream runtime"), stats.backend
    with VideoReader(out) as reader:
        frames = list(reader)
    assert len(frames) == 4 and frames[0].shape == (128, 128, 3)


def test_cli_live_reference_loop_reaches_the_animator(tmp_path, monkeypatch):
    """`run --reference-loop` in live mode opens the reference loop (before: the flag was dropped in live mode)."""
    from personalive_trt.runtime import animator as animate

    loops = []

    def open_animator(weights, config, loop="runtime", **_):
        loops.append(loop)
        return EchoAnimator(config)

    from personalive_trt.live import sources
    from personalive_trt.media.sample import sample_driving

    monkeypatch.setattr(animate, "open_animator", open_animator)
    monkeypatch.setattr(sources, "open_source", lambda value, **_: sources.FileSource(sample_driving(), loop=True))
    for flags in ([], ["--reference-loop"]):
        result = invoke("-r", "sample", "-d", "webcam", "--no-crop", "-o", str(tmp_path / f"o{len(loops)}.mp4"),
                        "--max-frames", "4", "--weights", "synthetic", "--device", "cpu", *flags)
        assert result.exit_code == 0, result.output
    assert loops == ["runtime", "reference"]
