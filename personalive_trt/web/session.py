"""The WebSocket session protocol (``/api/ws``): one browser tab, one connection, at most one animation.

* server -> client, text JSON: ``hello`` (limits, animator), ``started`` (with ``mjpeg``: this session's own
  MJPEG URL, see :mod:`.mjpeg`), ``swapped``, ``stopped``, ``fps``
  (the rate the client asked for, echoed), ``pong``, ``stats`` (every ``stats_interval`` s while an animator is
  leased: server fps, step latency, drops, malformed frames, and ``ready``), ``frame`` (the ``index`` of the
  driving frame the next binary message animates), ``error`` (``code``: ``busy``, ``bad_message``, ``no_reference``,
  ``not_started``, ``unavailable`` (the Ray app's registry is restarting) -- the session goes on;
  ``animation_failed``, ``malformed_frames``, ``idle`` -- the session ends).
* client -> server, text JSON: ``start`` (``reference`` id from ``POST /api/reference``, ``fps``), ``swap``
  (``reference``), ``fps``, ``stop``, ``ping`` (``t``, echoed in the ``pong``).
* ``started`` and ``swapped`` answer at once; the portrait's fusion then runs on the worker (seconds on a slow
  device). Until it ends ``stats.ready`` is false, and the newest driving frame sent meanwhile is dropped as
  stale once it ends (counted in ``dropped_input``), so a client that must not lose a frame waits for
  ``ready``.
* ``hello`` also names the ``replica`` (``pid``, ``node``) that holds the session: under Ray a session stays on
  the replica that accepted its socket for its whole life.
* binary, both ways: one JPEG per message. The server numbers the client's binary messages 0, 1, 2... in
  arrival order (WebSocket messages are ordered), so the client can match an output's ``index`` with the
  moment it grabbed that camera frame: that is the glass-to-glass latency the page shows.

Threads: the event loop only moves bytes. Decoding and face framing of driving frames, the animator step and
JPEG encoding run on the leased slot's :class:`~personalive_trt.live.worker.AnimationWorker` thread.
Driving frames reach the worker through a latest-frame-wins slot (frames that arrive during a step are
dropped and counted, never queued); outputs come back through a small ring per session that evicts its
oldest frame when the client reads too slowly. Unlike the original app's unbounded queues, nothing can build
up latency.

No client can starve another: a driving frame's header is checked before it is decoded (:mod:`.frames`);
control reaches the worker through one slot that a newer command replaces (a flood of ``swap`` costs at most
the fusion under way and one more, and a session's pending command is dropped when it ends:
:mod:`personalive_trt.live.worker`); control messages over ``control_rate`` per second (after a burst of
:data:`~.settings.CONTROL_BURST_SECONDS` of them) close the socket with 1008; only driving frames of a started
session count as activity, so a socket that never starts, or stops sending frames, is closed after
``idle_timeout``.

How a session ends: the client disconnects or sends ``stop``-then-leaves; a message over ``max_message_bytes``
closes it with 1009; ``max_malformed_in_a_row`` malformed driving frames in a row send ``malformed_frames`` and
close it with 1007; no driving frame for ``idle_timeout`` s (counted from the connection, then from each
driving frame of a started session) sends ``idle`` and closes it with 4408 (an idle page holds no slot);
control messages over the rate close it with 1008; a failing animator step (an exception, a
``NonFiniteError``) or a failing prepare (not bad data) sends ``animation_failed`` and closes it with 1011; a
sender task that dies (an exception while the
socket is still open), or a bug in the receive loop, is logged at error level and closes it with 1011. In
every case the animator goes back to the pool at once and the session's MJPEG viewers stop; nothing keeps
animating for a client that is gone.

The protocol only needs a :class:`~personalive_trt.web.state.ServerState` and a Starlette ``WebSocket``, so
any server that accepts the socket can run it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import deque

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from personalive_trt.live.slots import PlayoutClock
from personalive_trt.live.worker import MalformedStreamError, OutputFrame, StampedFrame
from personalive_trt.web.frames import make_frame_decoder
from personalive_trt.web.mjpeg import MJPEG_PATH
from personalive_trt.web.settings import CONTROL_BURST_SECONDS
from personalive_trt.web.state import ClusterUnavailable, ServerState

log = logging.getLogger("personalive_trt.web")

#: Close code for a server at its ``max_connections``, or busy under Ray (RFC 6455 1013, "try again later").
CLOSE_TRY_AGAIN = 1013
#: Close code for a message over ``max_message_bytes`` (RFC 6455 1009, "message too big").
CLOSE_TOO_BIG = 1009
#: Close code after ``max_malformed_in_a_row`` malformed driving frames (RFC 6455 1007, "invalid payload data").
CLOSE_BAD_DATA = 1007
#: Close code for a connection that sent no driving frame for ``idle_timeout`` s (4000-4999: application codes).
CLOSE_IDLE = 4408
#: Close code for a server-side failure: the animator, a sender, a bug (RFC 6455 1011, "internal error").
CLOSE_INTERNAL = 1011
#: Close code for control messages over ``control_rate`` (RFC 6455 1008, "policy violation").
CLOSE_POLICY = 1008


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame's reason may hold (UTF-8, never mid-character)."""
    return text.encode()[:123].decode(errors="ignore")


class RateLimit:
    """A token bucket: ``rate`` events per second sustained, ``burst`` at once (``rate`` 0: no limit)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.at = self.burst, time.monotonic()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Session:
    """One client's animation: an animator slot leased from the pool, and the outputs waiting to be sent."""

    def __init__(self, session_id: int, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.id = session_id
        self.loop = loop
        self.outputs: deque[tuple[bytes, OutputFrame]] = deque()
        self.capacity = capacity
        self.dropped_output = 0
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None  # why the worker ended the stream
        self.slot = None  # personalive_trt.web.pool.AnimatorSlot while leased
        self.key: str | None = None  # its MJPEG feed's key while started

    def deliver(self, item: tuple[bytes, OutputFrame]) -> None:
        """Event-loop side of the hand-over; evicts the oldest output when the client lags."""
        if len(self.outputs) >= self.capacity:
            self.outputs.popleft()
            self.dropped_output += 1
        self.outputs.append(item)
        self.ready.set()

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.ready.set()


async def accept(ws: WebSocket, state: ServerState) -> None:
    """Accept the socket, refuse it over ``max_connections`` (close 1013), else run the session to its end."""
    settings, counters = state.settings, state.counters
    await ws.accept()
    if counters["connections"] >= settings.max_connections:
        counters["refused_connections"] += 1
        await ws.close(CLOSE_TRY_AGAIN, f"too many connections ({settings.max_connections}); try again later")
        return
    counters["connections"] += 1
    try:
        await WebSocketSession(ws, state).run()
    finally:
        counters["connections"] -= 1


class WebSocketSession:
    """The protocol on one accepted socket: a receive loop and two sender tasks (outputs, stats)."""

    def __init__(self, ws: WebSocket, state: ServerState) -> None:
        self.ws = ws
        self.state = state
        self.settings = state.settings
        self.pool = state.pool
        state.counters["sessions"] += 1
        self.session = Session(state.counters["sessions"], asyncio.get_running_loop(),
                               capacity=2 * self.pool.animator.config.window)
        self.received = 0
        self.last_frame_at = time.monotonic()  # connection time, then each driving frame of a started session
        self.control = RateLimit(self.settings.control_rate, self.settings.control_rate * CONTROL_BURST_SECONDS)

    async def send_json(self, payload: dict) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            await self.ws.send_text(json.dumps(payload))

    async def error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    # ------------------------------------------------------------------------------------------ senders
    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            await self.ws.close(code, close_reason(reason))

    def end_stream(self) -> None:
        """The session's animation ends (stop, failure, close): its animator goes back to the pool, its pending
        control is dropped (``release`` stops the worker) and its MJPEG viewers stop."""
        session = self.session
        self.pool.release(session)
        self.state.mjpeg.end(session.key)
        session.key = None
        session.outputs.clear()

    async def send_outputs(self) -> None:
        """Play outputs out spaced like their driving frames arrived (they leave the animator in windows).

        Returns (ending the session) after a stream failure: the error message, then the close.
        """
        session = self.session
        clock = PlayoutClock()
        while True:
            await session.ready.wait()
            session.ready.clear()
            if session.failure is not None:
                exc, session.failure = session.failure, None
                self.end_stream()
                message = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, MalformedStreamError):
                    await self.error("malformed_frames", message)
                    await self.close(CLOSE_BAD_DATA, message)
                else:
                    await self.error("animation_failed", message)
                    await self.close(CLOSE_INTERNAL, message)
                return
            while session.outputs:
                jpeg, frame = session.outputs.popleft()
                wait = clock.wait(frame.t_capture, time.monotonic(), frame.t_out)
                if wait > 0:
                    await asyncio.sleep(wait)
                now = time.monotonic()
                await self.send_json({"type": "frame", "index": frame.index,
                                      "server_latency_ms": round(1000 * (now - frame.t_capture), 1)})
                await self.ws.send_bytes(jpeg)
                if session.key is not None:
                    self.state.mjpeg.publish(session.key, jpeg)

    async def send_stats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            slot = self.session.slot
            if slot is None:
                continue
            await self.send_json({"type": "stats", **slot.worker.stats.snapshot(), "ready": slot.worker.ready,
                                  "received": self.received, "dropped_input": slot.worker.inbox.dropped,
                                  "dropped_output": self.session.dropped_output})

    async def watch_idle(self) -> None:
        """Close a connection that sends no driving frame for ``idle_timeout`` s: its slot goes back."""
        timeout = self.settings.idle_timeout
        while True:
            idle = time.monotonic() - self.last_frame_at
            if idle >= timeout:
                self.state.counters["idle_closes"] += 1
                message = f"no driving frame for {timeout:g} s; session ended (start again to continue)"
                await self.error("idle", message)
                await self.close(CLOSE_IDLE, message)
                return
            await asyncio.sleep(min(timeout - idle, 1.0))

    # ------------------------------------------------------------------------------------------ commands
    async def start(self, message: dict, swap: bool) -> None:
        session, settings = self.session, self.settings
        try:
            image = await self.state.references.get(message.get("reference"))
        except ClusterUnavailable as exc:  # the Ray registry restarting: this message fails, the session goes on
            await self.error("unavailable", str(exc))
            return
        if image is None:
            await self.error("no_reference", "upload a reference image first (POST /api/reference)")
            return
        if swap:
            if session.slot is None:
                await self.error("not_started", "start before swapping")
                return
            session.slot.worker.swap_reference(image)
            await self.send_json({"type": "swapped"})
            return
        if session.slot is None and self.pool.acquire(session) is None:
            self.state.counters["busy_refusals"] += 1
            message = (f"busy: {settings.max_sessions} animation session(s) already running; try again when it ends"
                       if not settings.close_when_busy else
                       "busy: every animation slot of every replica is in use; try again later")
            await self.error("busy", message)
            if settings.close_when_busy:
                await self.close(CLOSE_TRY_AGAIN, message)
            return
        session.outputs.clear()
        self.state.mjpeg.end(session.key)  # a start while started begins a new session: the old viewers stop
        session.key = await self.state.mjpeg.open_announced()
        session.slot.worker.start(image, make_frame_decoder(self.state.resolution, settings), tag=session)
        await self.send_json({"type": "started", "resolution": self.state.resolution,
                              "mjpeg": f"{MJPEG_PATH}?key={session.key}"})

    async def command(self, text: str | None) -> None:
        try:
            command = json.loads(text or "")
            kind = command["type"]
        except (ValueError, KeyError, TypeError):
            self.state.counters["bad_messages"] += 1
            await self.error("bad_message", "expected a JSON object with a 'type' field")
            return
        if kind in ("start", "swap"):
            await self.start(command, swap=kind == "swap")
        elif kind == "stop":
            self.end_stream()
            await self.send_json({"type": "stopped"})
        elif kind == "fps":
            await self.send_json({"type": "fps", "fps": command.get("fps")})
        elif kind == "ping":
            await self.send_json({"type": "pong", "t": command.get("t")})
        else:
            self.state.counters["bad_messages"] += 1
            await self.error("bad_message", f"unknown type {kind!r}")

    # ------------------------------------------------------------------------------------------ receive loop
    async def receive_loop(self) -> None:
        """Until the client disconnects, sends a message over the limit (closed with 1009) or control messages
        over the rate (closed with 1008)."""
        ws, session, settings = self.ws, self.session, self.settings
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            size = len(data) if data is not None else len(text or "")
            if size > settings.max_message_bytes:
                self.state.counters["oversize_messages"] += 1
                log.warning("session %d: %d-byte message over the %d-byte limit; closing", session.id, size,
                            settings.max_message_bytes)
                await ws.close(CLOSE_TOO_BIG, f"message over {settings.max_message_bytes} bytes")
                return
            if data is not None:
                index, self.received = self.received, self.received + 1
                if session.slot is not None:  # only a started session's frames are activity (idle_timeout)
                    self.last_frame_at = time.monotonic()
                    session.slot.worker.inbox.put(StampedFrame(data, self.last_frame_at, index))
                continue
            if not self.control.allow():
                self.state.counters["rate_limited"] += 1
                log.warning("session %d: control messages over %g/s; closing", session.id, settings.control_rate)
                await self.close(CLOSE_POLICY, f"control messages over {settings.control_rate:g} per second")
                return
            await self.command(text)

    async def run(self) -> None:
        """The receive loop on this task, the two senders beside it, until the socket is closed or gone.

        A sender that ends the session (a stream failure) or fails closes the socket; the ASGI server then
        hands the receive loop its ``websocket.disconnect``, so there is one way out, through ``finally``.
        """
        pool, session = self.pool, self.session
        tasks = [asyncio.create_task(self._guarded("outputs", self.send_outputs())),
                 asyncio.create_task(self._guarded("stats", self.send_stats()))]
        if self.settings.idle_timeout > 0:
            tasks.append(asyncio.create_task(self._guarded("idle", self.watch_idle())))
        try:
            await self.send_json({"type": "hello", "resolution": self.state.resolution,
                                  "max_message_bytes": self.settings.max_message_bytes,
                                  "animator": pool.animator.description, "vae": pool.animator.config.vae,
                                  "max_sessions": self.settings.max_sessions, "sessions_active": pool.active,
                                  "replica": {"pid": os.getpid(), "node": self.state.node or socket.gethostname()}})
            await self.receive_loop()
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # a bug in the protocol: the client is told by the close, we by the log
            await self._task_failed("receive", exc)
        finally:
            self.end_stream()  # a vanished client frees its animator at once
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("session %d closed after %d frames", session.id, self.received)

    async def _guarded(self, name: str, coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._task_failed(name, exc)

    async def _task_failed(self, name: str, exc: BaseException) -> None:
        """A task of the session raised: the session ends. A send to a client that has gone is the client's
        leaving (info); anything while the socket is still open is our failure (error, close 1011)."""
        gone = isinstance(exc, WebSocketDisconnect) or WebSocketState.DISCONNECTED in (
            self.ws.client_state, self.ws.application_state)
        if gone:
            log.info("session %d: %s task stopped, the client has gone: %s: %s", self.session.id, name,
                     type(exc).__name__, exc)
            return
        log.error("session %d: %s task failed; closing the socket (1011)", self.session.id, name, exc_info=exc)
        try:
            await self.close(CLOSE_INTERNAL, f"server error ({name}): {type(exc).__name__}: {exc}")
        except Exception as close_exc:  # the socket broke as well: nothing more can reach the client
            log.info("session %d: close after the failure failed too: %s", self.session.id, close_exc)
