"""The animation thread: windows of fresh frames in, animated frames out, never blocking its callers.

The animator is slow and synchronous (a GPU step, or seconds on a CPU), so it runs on one dedicated thread.
Callers hand frames over through a :class:`~personalive_trt.live.slots.LatestSlot` (the newest frame wins;
frames that arrive while a step runs are dropped and counted) and get results through the ``emit``
callback. Control (start, swap the reference, stop) is applied between steps, so ``step`` and
``fuse_reference`` never race, and is coalesced: one command waits at most, so a client cannot queue work
(each start and swap is a reset and a reference fusion, seconds on a slow device). A newer start or swap
replaces a pending one (a swap folds into a pending start), and a stop drops whatever is pending, so once a
stream is stopped nothing its owner asked for runs. A command being applied (a fusion under way) finishes.

Alignment: the stream returns, on call *k*, the frames of the window that entered at call *k - (steps-1)*;
the first ``steps-1`` calls return warm-up frames that animate no driving frame. Live mode does not show
the warm-up frames, and tags every other output with the capture time of the driving frame it animates, so
the latency it reports is the real capture-to-output delay.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from personalive_trt.live.slots import LatestSlot

log = logging.getLogger("personalive_trt.live")

#: Malformed input is logged for the first few occurrences, then once every this many (counted always).
LOG_EVERY = 100
#: Malformed driving frames in a row that end a stream (a second of camera frames at 30 fps): a source that
#: only sends bad frames is broken, and skipping them for ever would look like a stream that animates.
MAX_MALFORMED_IN_A_ROW = 30


class MalformedFrameError(ValueError):
    """A driving frame that cannot be animated (undecodable bytes, a wrong size or shape): it is skipped.

    ``prepare`` functions raise it for bad *data*; any other exception they raise is a failure (a bug, a
    broken face detector) and ends the stream like an animator failure does.
    """


class MalformedStreamError(ValueError):
    """The stream ended because ``max_malformed_in_a_row`` driving frames in a row were malformed."""


@dataclass
class StampedFrame:
    """A driving frame as captured: ``data`` is whatever ``prepare`` accepts (an RGB array, JPEG bytes...)."""

    data: Any
    t_capture: float  # time.monotonic() at capture (or receipt)
    index: int  # position in the source, counting every frame the source produced


@dataclass
class OutputFrame:
    """An animated frame and the driving frame it animates."""

    image: np.ndarray  # (R, R, 3) uint8 RGB
    index: int  # the driving frame's StampedFrame.index
    t_capture: float
    t_out: float  # time.monotonic() when the animator returned it
    tag: Any = None  # the ``tag`` of the start() whose stream produced it

    @property
    def latency(self) -> float:
        return self.t_out - self.t_capture


class WorkerStats:
    """Counters and recent timings; :meth:`snapshot` is a plain dict (JSON-ready)."""

    def __init__(self, history: int = 256) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0  # frames that entered a window
        self.frames_out = 0
        self.malformed = 0
        self.fusions = 0  # reference fusions run (each start and applied swap: a reset and a fuse)
        self.steps = 0
        self.errors = 0
        self.last_error: str | None = None
        self._step_s: deque[float] = deque(maxlen=history)
        self._latency_s: deque[float] = deque(maxlen=history)
        self._out_times: deque[float] = deque(maxlen=history)

    def record_step(self, seconds: float, frames: int) -> None:
        with self._lock:
            self.steps += 1
            self.frames_in += frames
            self._step_s.append(seconds)

    def record_output(self, frame: OutputFrame) -> None:
        with self._lock:
            self.frames_out += 1
            self._latency_s.append(frame.latency)
            self._out_times.append(frame.t_out)

    def record_fusion(self) -> None:
        with self._lock:
            self.fusions += 1

    def record_malformed(self, error: BaseException) -> int:
        with self._lock:
            self.malformed += 1
            return self.malformed

    def record_error(self, error: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"

    def snapshot(self) -> dict:
        with self._lock:
            steps = list(self._step_s)
            latency = sorted(self._latency_s)
            times = list(self._out_times)
            counts = dict(frames_in=self.frames_in, frames_out=self.frames_out, malformed=self.malformed,
                          steps=self.steps, fusions=self.fusions, errors=self.errors, last_error=self.last_error)
        now = time.monotonic()
        recent = [t for t in times if now - t <= 2.0]
        # fps over the last 2 s of outputs; a stalled stream reads 0 rather than its old rate.
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 and recent[-1] > recent[0] else 0.0
        return {
            **counts,
            "fps": round(fps, 2),
            "step_ms": round(1000 * steps[-1], 1) if steps else None,
            "step_ms_mean": round(1000 * sum(steps) / len(steps), 1) if steps else None,
            "latency_ms_p50": round(1000 * percentile(latency, 50), 1) if latency else None,
            "latency_ms_p95": round(1000 * percentile(latency, 95), 1) if latency else None,
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[rank]


class AnimationWorker:
    """Owns ``animator`` on a thread; frames come from :attr:`inbox`, results go to ``emit``.

    ``emit(OutputFrame)`` and ``on_error(exc)`` run on the worker thread: keep them short (hand the frame to a
    slot/ring, encode a JPEG). Call :meth:`start` with a reference image (already framed to the animator's
    resolution) and a ``prepare(data) -> (R, R, 3) uint8`` function (decode, frame the face). Only a
    :class:`MalformedFrameError` (from ``prepare``, or a prepared frame of the wrong shape) marks a frame
    malformed: it is counted, logged and skipped, and ``max_malformed_in_a_row`` of them in a row end the
    stream with :class:`MalformedStreamError`. Any other exception -- in ``prepare``, the animator (a
    ``NonFiniteError`` included) or ``emit`` -- ends the stream too. A stream that ends reports its exception
    to ``on_error`` once; the thread stays, ready for the next :meth:`start`.

    Liveness: :attr:`animator_failure` is what the animator itself raised (``step``, ``reset``,
    ``fuse_reference``) when a stream ended that way, and None while it works; a restart whose reset and fuse
    succeed clears it. Bad input (``prepare``) and a failing ``emit`` are not the animator's failure.
    """

    def __init__(self, animator, emit: Callable[[OutputFrame], None],
                 on_error: Callable[[BaseException], None] | None = None, name: str = "animation-worker",
                 max_malformed_in_a_row: int = MAX_MALFORMED_IN_A_ROW) -> None:
        if max_malformed_in_a_row < 1:
            raise ValueError(f"max_malformed_in_a_row must be >= 1, got {max_malformed_in_a_row}")
        self.animator = animator
        self.max_malformed_in_a_row = max_malformed_in_a_row
        self._malformed_run = 0  # malformed frames since the last good one
        self.config = animator.config
        self.emit = emit
        self.on_error = on_error
        self.inbox: LatestSlot[StampedFrame] = LatestSlot()
        self.stats = WorkerStats()
        self._control: tuple[str, Any] | None = None  # the one pending command (module docstring: coalesced)
        self._control_lock = threading.Lock()
        self._submitted = self._applied = 0  # commands given / applied or dropped (wait_idle)
        self._wake = threading.Event()
        self._closing = False
        self._active = False
        self._prepare: Callable[[Any], np.ndarray] | None = None
        self._tag: Any = None
        self._pending: deque[list[StampedFrame]] = deque()
        self.stepping = False  # True while animator.step runs
        self.animator_failure: BaseException | None = None  # see the class docstring (liveness)
        self.last_step_end = 0.0  # time.monotonic() of the last step's end
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------------------- control
    @property
    def active(self) -> bool:
        return self._active

    @property
    def ready(self) -> bool:
        """True while frames put in :attr:`inbox` are animated: a stream runs and no command is pending or
        being applied (a start or swap is a fusion, and a frame that waits through it is dropped as stale)."""
        applied = self._applied  # read first: once every command given so far is applied, _active is its result
        return applied >= self._submitted and self._active

    def start(self, reference: np.ndarray, prepare: Callable[[Any], np.ndarray], tag: Any = None) -> None:
        """Begin a stream: reset the animator, fuse ``reference``, then animate frames from :attr:`inbox`.

        Outputs carry ``tag``: a step that was running when a stream stopped still emits its frames, and the
        tag tells a consumer that they belong to the previous stream (e.g. another client's session).
        """
        self._command("start", (reference, prepare, tag))

    def swap_reference(self, reference: np.ndarray) -> None:
        """Swap the portrait mid-stream (the stream restarts from its warm-up); a no-op on a stopped stream."""
        self._command("swap", reference)

    def stop(self) -> None:
        """End the stream; frames still in the pipeline and a pending start or swap are discarded. The thread
        stays for the next start."""
        self._command("stop", None)

    def close(self, timeout: float | None = 60.0) -> bool:
        """Stop and end the thread; returns whether it ended within ``timeout``.

        A running step cannot be interrupted, so this waits for it: an interpreter that exits while a daemon
        thread is inside native (torch/CUDA) code aborts instead of exiting.
        """
        self.request_close()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def request_close(self) -> None:
        """Ask the thread to end after the current step, without waiting (see :meth:`close`)."""
        self._closing = True
        self.inbox.close()
        self._wake.set()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every command given so far has been applied or dropped (a start's fuse included)."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        while self._applied < target and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._applied >= target

    def _command(self, name: str, value: Any) -> None:
        """Make ``(name, value)`` the pending command, folding in or dropping the one it replaces."""
        with self._control_lock:
            self._submitted += 1
            pending = self._control
            if name == "swap" and pending is not None:
                if pending[0] == "stop":  # a swap after a stop has no stream to swap in
                    self._applied += 1
                    return
                if pending[0] == "start":  # the start not yet applied fuses the newer reference instead
                    _, prepare, tag = pending[1]
                    name, value = "start", (value, prepare, tag)
            if pending is not None:
                self._applied += 1  # replaced: it will never run
            self._control = (name, value)
        self._wake.set()

    def _take_command(self) -> tuple[str, Any] | None:
        with self._control_lock:
            command, self._control = self._control, None
            return command

    # ---------------------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        while not self._closing:
            if self._control is not None:
                self._apply_command()
                continue
            if not self._active:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                frames = self._gather()
            except Exception as exc:  # a failing prepare (not bad data) or too many bad frames ends the stream
                self._fail(exc)
                continue
            if frames is not None:
                self._step(frames)

    def _apply_command(self) -> None:
        command = self._take_command()
        if command is None:
            return
        name, value = command
        try:
            if name == "start":
                reference, self._prepare, self._tag = value
                self._restart(reference)
            elif name == "swap" and self._active:
                self._restart(value)
            elif name == "stop":
                self._active = False
                self._pending.clear()
                self.inbox.clear()
        except Exception as exc:  # a bad reference or a failing animator ends the stream, not the thread
            self._fail(exc)
        finally:
            with self._control_lock:  # _command counts dropped commands from another thread
                self._applied += 1

    def _restart(self, reference: np.ndarray) -> None:
        self._active = False
        self._pending.clear()
        self.stats.record_fusion()
        try:
            self.animator.reset()
            self.animator.fuse_reference(reference)
        except Exception as exc:
            self.animator_failure = exc
            raise
        self.animator_failure = None
        self.inbox.discard()  # a frame that waited through the (slow) fuse is stale: dropped, and counted
        self._malformed_run = 0
        self._active = True

    def _gather(self) -> list[StampedFrame] | None:
        """Collect ``window`` fresh, well-formed frames; None when a command or close interrupts.

        Raises what ``prepare`` raises other than :class:`MalformedFrameError`, and
        :class:`MalformedStreamError` at ``max_malformed_in_a_row`` malformed frames in a row.
        """
        window, resolution = self.config.window, self.config.resolution
        batch: list[StampedFrame] = []
        while len(batch) < window:
            if self._control is not None or self._closing:
                return None
            item = self.inbox.get(timeout=0.05)
            if item is None:
                if self.inbox.closed:  # the source ended: idle until a command or close, do not spin
                    self._wake.wait(0.05)
                    self._wake.clear()
                continue
            try:
                image = self._prepare(item.data)
                if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                        and image.shape == (resolution, resolution, 3)):
                    raise MalformedFrameError(f"prepared frame has shape {getattr(image, 'shape', None)} "
                                              f"dtype {getattr(image, 'dtype', None)}, expected ({resolution}, "
                                              f"{resolution}, 3) uint8")
            except MalformedFrameError as exc:
                count = self.stats.record_malformed(exc)
                self._malformed_run += 1
                if self._malformed_run >= self.max_malformed_in_a_row:
                    raise MalformedStreamError(f"{self._malformed_run} malformed driving frames in a row; the "
                                               f"last (frame {item.index}): {exc}") from exc
                if count <= 5 or count % LOG_EVERY == 0:
                    log.warning("malformed driving frame %d skipped (%d so far): %s", item.index, count, exc)
                continue
            self._malformed_run = 0
            batch.append(StampedFrame(image, item.t_capture, item.index))
        return batch

    def _step(self, batch: list[StampedFrame]) -> None:
        delay = self.config.steps - 1
        start = time.monotonic()
        self.stepping = True
        try:
            out = self.animator.step(np.stack([f.data for f in batch]))
        except Exception as exc:
            self.animator_failure = exc
            self._fail(exc)
            return
        finally:
            self.stepping = False
        t_out = self.last_step_end = time.monotonic()
        self.stats.record_step(t_out - start, len(batch))
        self._pending.append(batch)
        if self.animator.count <= delay:
            return  # warm-up output: it animates no driving frame
        for image, source in zip(out, self._pending.popleft()):
            frame = OutputFrame(image=image, index=source.index, t_capture=source.t_capture, t_out=t_out,
                                tag=self._tag)
            self.stats.record_output(frame)
            try:
                self.emit(frame)
            except Exception as exc:
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        self._active = False
        self._pending.clear()
        self.stats.record_error(exc)
        log.error("animation stopped: %s: %s", type(exc).__name__, exc, exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("error handler failed")
