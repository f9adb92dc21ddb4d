#!/usr/bin/env python3
"""Soak test of ``personalive-trt serve``: stream driving frames over loopback for a fixed time and report.

    python scripts/soak.py --duration 600 --fps 30 --spawn-echo          # server path only (echo test double)
    python scripts/soak.py --duration 600 --fps 30 --url http://127.0.0.1:7860   # a running `serve` (GPU)
    python scripts/soak.py --duration 60 --sessions 4 --spawn-echo --compare-ray --replicas 2 --max-sessions 2
                                    # single-process serve, then the Ray app, same load: Ray's proxy hop

The client uploads the sample portrait, starts a session and sends the sample clip's frames (JPEG, looped) at
``--fps`` on a fixed schedule; when it falls behind it skips a frame (counted) rather than bursting. For every
animated frame that comes back it measures the time since it sent the driving frame the server says it
animates (the protocol's ``index``): the loopback glass-to-glass latency minus camera and display. Its
``transport`` part is that latency minus the server's own (``server_latency_ms`` of the ``frame`` message, from
receiving the driving frame to sending the output): the two trips between client and server, which is what
Ray's proxy adds to (the rest is the stream's structure and the server's playout, the same in both servers).

It reports sent/received counts, output fps, latency percentiles, frames dropped at each stage (client, server
input slot, server output ring), malformed frames, and the server's host RSS / device memory at the start
(after ``--warmup`` s), every ``--sample-every`` s, and at the end, with the drift between start and end.

Bounded: at most ``--duration`` seconds (capped at 4 h) and ``fps * duration`` frames; loopback only.
``--spawn-echo`` runs ``python -m personalive_trt.web --echo``: the real app with the EchoAnimator test double
(personalive_trt/live/testing.py; it sleeps ``--echo-step-ms`` per 4-frame step and does no model work).

``--sessions N`` runs N clients at once (one thread each); the report sums their output fps and pools their
latencies, and lists each replica's host/device memory at the start and the end (``/api/health``'s
``replicas``). ``--ray`` spawns the echo server as the Ray Serve app (``--replicas`` x ``--max-sessions``);
``--compare-ray`` runs the single-process server (``--max-sessions`` x ``--replicas`` animators) and then the
Ray app under the same load, and reports both (``ray_added_transport_ms_p50``: the proxy hop's cost).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

MAX_DURATION = 4 * 3600


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driving_jpegs(limit: int = 120) -> list[bytes]:
    """The sample clip's frames as JPEG (what a browser sends), looped by the sender."""
    import cv2

    from personalive_trt.media import VideoReader
    from personalive_trt.media.sample import sample_driving

    out = []
    with VideoReader(sample_driving(), max_frames=limit) as reader:
        for frame in reader:
            ok, data = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
            out.append(data.tobytes())
    return out


def wait_healthy(base: str, seconds: float, process: subprocess.Popen | None = None) -> dict:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"error: the spawned server exited with code {process.returncode}")
        try:
            return httpx.get(f"{base}/api/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.2)
    raise SystemExit(f"error: {base} did not answer /api/health within {seconds:.0f} s")


def memory(base: str) -> dict:
    import httpx

    health = httpx.get(f"{base}/api/health", timeout=5).json()
    return {"host_bytes": health.get("host_memory_bytes"), "device_bytes": health.get("device_memory_bytes"),
            "replicas": {r["pid"]: (mib(r.get("host_memory_bytes")), mib(r.get("device_memory_bytes")))
                         for r in health.get("replicas", [])}}


def mib(value):
    return None if value is None else round(value / 2**20, 1)


def upload_reference(base: str) -> str:
    import httpx

    from personalive_trt.media.sample import sample_reference

    reference = httpx.post(f"{base}/api/reference", files={"file": ("ref.png", sample_reference().read_bytes(),
                                                                     "image/png")}, timeout=60)
    reference.raise_for_status()
    return reference.json()["id"]


def soak_many(base: str, sessions: int, duration: float, fps: float, warmup: float, sample_every: float) -> dict:
    """``sessions`` clients at once; one report with their sums, pooled latencies and each one's report."""
    reference, frames = upload_reference(base), driving_jpegs()
    reports: list[dict | None] = [None] * sessions
    failures: list[str] = []

    def one(i: int) -> None:
        try:
            reports[i] = soak(base, duration, fps, warmup, sample_every, reference, frames)
        except BaseException as exc:  # reported with the others; the run fails
            failures.append(f"session {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit("error: " + "; ".join(failures))
    if sessions == 1:
        return reports[0]
    latencies = [v for r in reports for v in r.pop("_latencies")]
    transports = [v for r in reports for v in r.pop("_transports")]
    return {
        "sessions": sessions, "server": reports[0]["server"], "resolution": reports[0]["resolution"],
        "duration_s": max(r["duration_s"] for r in reports), "input_fps_per_session": fps,
        "output_fps_total": round(sum(r["output_fps"] or 0 for r in reports), 2),
        "latency_ms": latency_summary(latencies),
        "transport_ms": latency_summary(transports),
        "client_skipped": sum(r["client_skipped"] for r in reports),
        "server_dropped_input": sum(r["server_dropped_input"] or 0 for r in reports),
        "server_dropped_output": sum(r["server_dropped_output"] or 0 for r in reports),
        "server_errors": sum(r["server_errors"] or 0 for r in reports),
        "client_errors": [e for r in reports for e in r["client_errors"]],
        "replicas": {"start": reports[0]["replicas_start"], "end": memory(base)["replicas"]},
        "per_session": [{k: r[k] for k in ("replica", "output_fps", "latency_ms", "server_dropped_input")}
                        for r in reports],
    }


def latency_summary(latencies: list[float]) -> dict:
    return {q: (round(1000 * v, 1) if (v := percentile(latencies, q)) is not None else None)
            for q in (50, 90, 95, 99, 100)}


class Receiver:
    """The session's receiving thread: counts output frames, matches each to the driving frame it animates (its
    ``frame`` message) for the client's latency and its transport part, and keeps the newest ``stats``."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.sent_at: dict[int, float] = {}  # driving frame index -> when it was sent
        self.latencies: list[float] = []
        self.transports: list[float] = []  # latency minus the server's part: both hops between client and server
        self.frames = 0
        self.last_stats: dict = {}
        self.errors: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        meta = None
        while not self.stop.is_set():
            try:
                message = self.ws.recv(timeout=1.0)
            except TimeoutError:
                continue
            except Exception as exc:  # connection closed: the main thread reports it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            now = time.monotonic()
            if isinstance(message, bytes):
                self.frames += 1
                if meta is not None and meta["index"] in self.sent_at:
                    self.latencies.append(now - self.sent_at.pop(meta["index"]))
                    self.transports.append(self.latencies[-1] - meta["server_latency_ms"] / 1000)
                    for key in [k for k in self.sent_at if k < meta["index"]]:  # frames dropped on the way
                        del self.sent_at[key]
                meta = None
                continue
            data = json.loads(message)
            if data.get("type") == "frame":
                meta = data
            elif data.get("type") == "stats":
                self.last_stats = data
            elif data.get("type") == "error":
                self.errors.append(data.get("message"))


def start_session(ws, reference: str, fps: float) -> dict:
    """``hello``, then ``start``; returns the hello (a refused session ends the script in one line)."""
    hello = json.loads(ws.recv(timeout=30))
    ws.send(json.dumps({"type": "start", "reference": reference, "fps": fps}))
    while True:
        message = json.loads(ws.recv(timeout=120))
        if message.get("type") == "started":
            return hello
        if message.get("type") == "error":
            raise SystemExit(f"error: server refused the session: {message.get('message')}")


def soak(base: str, duration: float, fps: float, warmup: float, sample_every: float, reference: str | None = None,
         frames: list[bytes] | None = None) -> dict:
    from websockets.sync.client import connect

    reference = reference or upload_reference(base)
    frames = frames or driving_jpegs()
    ws_url = base.replace("http://", "ws://", 1) + "/api/ws"
    memory_at_connect = memory(base)
    counters = {"sent": 0, "skipped": 0}
    max_frames = int(fps * duration) + 1

    with connect(ws_url, max_size=16 * 1024 * 1024, open_timeout=30) as ws:
        hello = start_session(ws, reference, fps)
        receiver = Receiver(ws)
        receiver.thread.start()
        start = time.monotonic()
        period = 1.0 / fps
        samples: list[dict] = []
        next_sample = start + warmup
        memory_start = None
        index = 0
        while counters["sent"] < max_frames:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= duration or receiver.errors:
                break
            if now >= next_sample:
                point = {"t": round(elapsed, 1), **memory(base), "received": receiver.frames}
                samples.append(point)
                memory_start = memory_start or point
                next_sample += sample_every
            due = start + index * period
            if now < due:
                time.sleep(min(due - now, 0.05))
                continue
            if now - due > period:  # behind schedule: skip rather than burst (latest-frame-wins)
                index += 1
                counters["skipped"] += 1
                continue
            receiver.sent_at[counters["sent"]] = time.monotonic()
            ws.send(frames[index % len(frames)])
            counters["sent"] += 1
            index += 1
        elapsed = time.monotonic() - start
        time.sleep(1.0)  # let the last frames and one stats message arrive
        memory_end = {"t": round(time.monotonic() - start, 1), **memory(base), "received": receiver.frames}
        receiver.stop.set()
        receiver.thread.join(5)
        ws.send(json.dumps({"type": "stop"}))
    return soak_report(hello, receiver, counters, elapsed, fps, memory_start or memory_at_connect,
                       memory_at_connect, memory_end, samples)


def soak_report(hello: dict, receiver: Receiver, counters: dict, elapsed: float, fps: float, start_mem: dict,
                memory_at_connect: dict, memory_end: dict, samples: list[dict]) -> dict:
    stats = receiver.last_stats
    return {
        "server": hello.get("animator"), "resolution": hello.get("resolution"), "replica": hello.get("replica"),
        "duration_s": round(elapsed, 1), "input_fps": fps,
        "sent": counters["sent"], "client_skipped": counters["skipped"], "received": receiver.frames,
        "output_fps": round(receiver.frames / elapsed, 2) if elapsed else None,
        "latency_ms": latency_summary(receiver.latencies), "_latencies": receiver.latencies,
        "transport_ms": latency_summary(receiver.transports), "_transports": receiver.transports,
        "server_dropped_input": stats.get("dropped_input"), "server_dropped_output": stats.get("dropped_output"),
        "server_malformed": stats.get("malformed"), "server_step_ms_mean": stats.get("step_ms_mean"),
        "server_errors": stats.get("errors"), "client_errors": receiver.errors,
        "memory_mib": {
            "host_at_connect": mib(memory_at_connect["host_bytes"]),
            "host_start": mib(start_mem["host_bytes"]), "host_end": mib(memory_end["host_bytes"]),
            "host_drift": mib((memory_end["host_bytes"] or 0) - (start_mem["host_bytes"] or 0)),
            "host_max": mib(max((s["host_bytes"] or 0) for s in samples + [memory_end])),
            "device_start": mib(start_mem["device_bytes"]), "device_end": mib(memory_end["device_bytes"]),
        },
        "memory_samples": [{"t": s["t"], "host_mib": mib(s["host_bytes"]), "device_mib": mib(s["device_bytes"]),
                            "received": s["received"]} for s in samples + [memory_end]],
        "replicas_start": start_mem["replicas"], "replicas_end": memory_end["replicas"],
    }


def run(args, ray: bool) -> dict:
    """One soak against ``--url`` or a spawned echo server (the Ray app when ``ray``)."""
    process = None
    replicas = args.replicas if ray else 1
    if args.spawn_echo:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "personalive_trt.web", "--echo", "--port", str(port),
                   "--resolution", str(args.resolution), "--echo-step-ms", str(args.echo_step_ms)]
        if ray:
            command += ["--ray", "--replicas", str(args.replicas), "--max-sessions", str(args.max_sessions),
                        "--cpus-per-replica", str(args.cpus_per_replica)]
        else:  # as many animators in one process as the Ray app has in all
            command += ["--max-sessions", str(args.max_sessions * (args.replicas if args.compare_ray else 1))]
        process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    else:
        base = args.url.rstrip("/")
    try:
        deadline = time.monotonic() + 180
        while len(wait_healthy(base, 180, process).get("replicas", [])) < replicas:  # Ray: until all report
            if time.monotonic() > deadline:
                raise SystemExit(f"error: fewer than {replicas} replicas reported within 180 s")
            time.sleep(0.5)
        report = soak_many(base, args.sessions, args.duration, args.fps, min(args.warmup, args.duration / 2),
                           args.sample_every)
    finally:
        if process is not None:
            process.terminate()  # SIGTERM: the Ray app shuts its local Ray down
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    report.pop("_latencies", None)
    report.pop("_transports", None)
    return {"server_kind": "ray" if ray else "single-process", **report}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server, e.g. http://127.0.0.1:7860 (loopback only)")
    parser.add_argument("--spawn-echo", action="store_true", help="start the echo test-double server for the run")
    parser.add_argument("--echo-step-ms", type=float, default=20.0, help="echo step time per 4 frames")
    parser.add_argument("--resolution", type=int, default=512, help="echo server canvas")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of streaming (max 4 h)")
    parser.add_argument("--fps", type=float, default=30.0, help="driving frames per second sent")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the 'start' memory reading")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between memory readings")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent client sessions")
    parser.add_argument("--ray", action="store_true", help="--spawn-echo: the Ray Serve app")
    parser.add_argument("--compare-ray", action="store_true", help="--spawn-echo: single-process, then Ray")
    parser.add_argument("--replicas", type=int, default=1, help="Ray: animator replicas")
    parser.add_argument("--max-sessions", type=int, default=1, help="sessions per replica (Ray) / per server")
    parser.add_argument("--cpus-per-replica", type=float, default=0.5, help="Ray: CPUs each replica reserves")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION}]")
    if not 0 < args.fps <= 120:
        parser.error("--fps must be in (0, 120]")
    if not 1 <= args.sessions <= 64:
        parser.error("--sessions must be in 1..64")
    if (args.url is None) == (not args.spawn_echo):
        parser.error("give exactly one of --url or --spawn-echo")
    if (args.ray or args.compare_ray) and not args.spawn_echo:
        parser.error("--ray and --compare-ray spawn the echo server: add --spawn-echo")
    if args.url is not None and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address (127.0.0.1)")
    if args.compare_ray:
        reports = [run(args, ray=False), run(args, ray=True)]
        p50 = [r["latency_ms"][50] for r in reports]
        hop50 = [r["transport_ms"][50] for r in reports]
        report = {"single_process": reports[0], "ray": reports[1],
                  "ray_added_latency_ms_p50": round(p50[1] - p50[0], 1) if None not in p50 else None,
                  "ray_added_transport_ms_p50": round(hop50[1] - hop50[0], 1) if None not in hop50 else None}
    else:
        reports = [run(args, ray=args.ray)]
        report = reports[0]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(not r["client_errors"] and not r["server_errors"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
