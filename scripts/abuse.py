#!/usr/bin/env python3
"""Abuse test of ``personalive-trt serve``: hostile clients against the echo app on loopback, and what each cost.

    python scripts/abuse.py                       # the single-process server
    python scripts/abuse.py --ray                 # the Ray Serve app (a local Ray; slow to start)
    python scripts/abuse.py --json abuse.json     # also write the report

It spawns ``python -m personalive_trt.web --echo`` (the app and start-up of ``personalive-trt serve``, around the
EchoAnimator TEST DOUBLE, personalive_trt/live/testing.py: a reference fusion costs ``--fuse-ms``, a step
``--step-ms``) with a token in ``PERSONALIVE_TOKEN``, ``--idle-timeout 2`` and the other limits at their
defaults, and runs:

* ``outsider``: every route and the WebSocket without the token, with a wrong one, with it in another header;
* ``bomb``: a started session sends 20 PNGs of 20000 x 20000 pixels (each under 2 MiB on the wire, 1.2 GB
  decoded), then ordinary frames: malformed frames counted, the server's peak memory, the session goes on;
* ``swap_storm``: a client starts, sends 400 ``swap`` as fast as it can and leaves (rate limited: closed 1008);
  ``swap_storm_unlimited``: the same against a server without the rate limit (the worker's one control slot
  alone); each reports the fusions the animator ran and the next client's time to its first frame;
* ``control_flood``: 1000 pings as fast as it can: when the socket is closed, and with which code;
* ``idle_bytes``: one byte every 0.1 s without ever starting: when the socket is closed (the idle timeout);
* ``viewers``: a session's MJPEG URL opened by ``max_viewers + 2`` viewers (the extra ones get 429), a URL
  without a key (404), and how long the page, an upload and ``/api/health`` take while every slot is taken.

For each case: bytes sent, what the server answered, and the peak resident memory of the server's processes
(``VmHWM`` of every process in its tree, summed: an upper bound of the tree's peak); at the end, the listening
sockets of the server's process tree (any not on loopback is flagged) and the server's start-up notes (under
``--ray``, the line naming what Ray leaves beyond loopback). Bounded and loopback only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import free_port, wait_healthy  # noqa: E402  (the script beside this one)

TOKEN = "abuse-test-token-0123456789abcdef"  # the spawned server's; the test clients are its (hostile) users
IDLE_TIMEOUT = 2.0
MAX_VIEWERS = 4  # the default of --max-viewers, given explicitly
MIB = 2**20


# ------------------------------------------------------------------------------------------ the server side


class Server:
    """A spawned ``python -m personalive_trt.web --echo`` on a free loopback port (its stderr kept in a file)."""

    def __init__(self, args, control_rate: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "personalive_trt.web", "--echo", "--port", str(self.port),
                        "--echo-fuse-ms", f"{args.fuse_ms:g}", "--echo-step-ms", f"{args.step_ms:g}",
                        "--resolution", str(args.resolution), "--no-crop", "--max-sessions", "1",
                        "--idle-timeout", f"{IDLE_TIMEOUT:g}", "--control-rate", f"{control_rate:g}",
                        "--max-viewers", str(MAX_VIEWERS)]
        if args.ray:
            self.command += ["--ray", "--replicas", "1", "--cpus-per-replica", "0.5"]
        self.stderr = tempfile.TemporaryFile("w+")  # a file: Ray's logs would fill a pipe and block the server
        self.process = subprocess.Popen(self.command, stderr=self.stderr,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", "PERSONALIVE_TOKEN": TOKEN})
        deadline = time.monotonic() + 240
        while not wait_healthy(self.base, 240, self.process).get("replicas"):  # Ray: until a replica reports
            if time.monotonic() > deadline:
                raise SystemExit("error: the spawned server reported no replica within 240 s")
            time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()  # SIGTERM: the Ray app shuts its local Ray down
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stderr.close()

    def notes(self) -> list[str]:
        """The server's start-up warnings and notes so far."""
        self.stderr.seek(0)
        return [line for line in self.stderr.read().splitlines() if line.startswith(("note:", "warning:"))]

    def peak_memory_mib(self) -> dict:
        """``VmHWM`` (peak resident set) of each process in the server's tree, and their sum."""
        from personalive_trt.web.listening import process_tree

        peaks = {}
        for pid in process_tree(self.process.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            peaks[f"{name}[{pid}]"] = round(kib / 1024, 1)
        return {"sum": round(sum(peaks.values()), 1), "max_process": max(peaks.values(), default=None),
                "processes": len(peaks)}

    def listening(self) -> list[dict]:
        from personalive_trt.web.listening import listening_sockets

        return [{"socket": str(s), "loopback": s.loopback} for s in listening_sockets(self.process.pid)]

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.base}/api/health", params={"token": TOKEN}, timeout=10).json()


# ------------------------------------------------------------------------------------------ clients


def ws_url(server: Server, token: str | None = TOKEN) -> str:
    return server.base.replace("http://", "ws://") + "/api/ws" + (f"?token={token}" if token else "")


@contextmanager
def connect(server: Server, token: str | None = TOKEN):
    """A client's socket, past the server's ``hello``."""
    from websockets.sync.client import connect as ws_connect

    # an unbounded queue: these clients read little, and a full queue would hide the server's close
    with ws_connect(ws_url(server, token), open_timeout=60, max_size=16 * MIB, max_queue=None) as ws:
        assert json.loads(ws.recv(timeout=60))["type"] == "hello"
        yield ws


def start(ws, reference: str) -> dict:
    ws.send(json.dumps({"type": "start", "reference": reference}))
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, str) and json.loads(message)["type"] in ("started", "error"):
            return json.loads(message)


def close_code(ws, seconds: float) -> tuple[int | None, float]:
    """Read until the server closes the socket: its close code and when (None if it stayed open)."""
    from websockets.exceptions import ConnectionClosed

    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            try:
                ws.recv(timeout=0.2)
            except TimeoutError:
                continue
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd is not None else 1006), round(time.monotonic() - t0, 2)
    return None, round(time.monotonic() - t0, 2)


def driving_jpeg(value: int) -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".jpg", np.full((96, 128, 3), value, np.uint8))[1].tobytes()


def time_to_first_frame(server: Server, reference: str, seconds: float = 60.0) -> float | None:
    """Seconds from a new client's ``start`` to its first animated frame (None: refused, or none came)."""
    with connect(server) as ws:
        t0 = time.monotonic()
        if start(ws, reference)["type"] != "started":
            return None
        value = 0
        while time.monotonic() - t0 < seconds:
            ws.send(driving_jpeg(value % 250))
            value += 10
            try:
                while True:
                    if isinstance(ws.recv(timeout=0.03), bytes):
                        return round(time.monotonic() - t0, 3)
            except TimeoutError:
                pass
        return None


def fusions(server: Server) -> int:
    return sum(w.get("fusions", 0) for w in server.health().get("workers", []))


def wait_free(server: Server, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while server.health()["sessions_active"] and time.monotonic() < deadline:
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ the cases


def outsider(server: Server, reference: str) -> dict:
    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    answers, sent = {}, 0
    attempts = {"no token": ({}, {}), "wrong token": ({}, {"token": "x" * 32}),
                "token in Authorization": ({"authorization": f"Bearer {TOKEN}"}, {}),
                "token as a cookie of another name": ({"cookie": f"token={TOKEN}"}, {})}
    for name, (headers, params) in attempts.items():
        for path in ("/", "/static/app.js", "/api/reference/x.jpg", "/api/stream.mjpg?key=x"):
            response = httpx.get(server.base + path, headers=headers, params=params, timeout=10)
            sent += len(path) + sum(len(k) + len(v) for k, v in headers.items())
            answers.setdefault(f"GET ({name})", set()).add(response.status_code)
        upload = httpx.post(f"{server.base}/api/reference", headers=headers, params=params, timeout=10,
                            files={"file": ("x.png", b"x" * 1000, "image/png")})
        sent += 1000
        answers.setdefault(f"POST /api/reference ({name})", set()).add(upload.status_code)
        try:
            with ws_connect(server.base.replace("http://", "ws://") + "/api/ws", additional_headers=headers,
                            open_timeout=10):
                answers[f"WebSocket ({name})"] = {"accepted"}
        except InvalidStatus as refused:
            answers.setdefault(f"WebSocket ({name})", set()).add(refused.response.status_code)
    health = httpx.get(f"{server.base}/api/health", timeout=10).json()
    return {"bytes_sent": sent, "answers": {k: sorted(v, key=str) for k, v in answers.items()},
            "health_without_token": health}


def bomb(server: Server, reference: str) -> dict:
    from personalive_trt.live.testing import png_bomb

    data = png_bomb()
    before = server.peak_memory_mib()
    with connect(server) as ws:
        assert start(ws, reference)["type"] == "started"
        sent = 0
        for _ in range(20):
            ws.send(data)
            sent += len(data)
            time.sleep(0.05)
        got, t0 = 0, time.monotonic()
        while not got and time.monotonic() - t0 < 30:  # the session goes on
            frame = driving_jpeg(100)
            ws.send(frame)
            sent += len(frame)
            try:
                while True:
                    got += isinstance(ws.recv(timeout=0.03), bytes)
            except TimeoutError:
                pass
        time.sleep(0.6)
        stats = server.health()["workers"]
    wait_free(server)
    return {"bytes_sent": sent, "png_bytes": len(data), "png_pixels": "20000x20000", "pngs_sent": 20,
            "malformed_counted": sum(w["malformed"] for w in stats), "session_animated_after": bool(got),
            "peak_memory_mib_before": before, "peak_memory_mib_after": server.peak_memory_mib()}


def swap_storm(server: Server, reference: str) -> dict:
    from websockets.exceptions import ConnectionClosed

    wait_free(server)
    before = fusions(server)
    swap = json.dumps({"type": "swap", "reference": reference})
    sent = swaps = 0
    with connect(server) as ws:
        assert start(ws, reference)["type"] == "started"
        try:
            for _ in range(400):
                ws.send(swap)
                sent += len(swap)
                swaps += 1
        except ConnectionClosed:
            pass
        code, _ = close_code(ws, 0.5)  # did the server close it (rate limit) while we sent?
    wait_free(server)
    time.sleep(1.0)  # a fusion under way when the client left finishes
    run = fusions(server) - before
    waited = time_to_first_frame(server, reference)
    wait_free(server)
    return {"bytes_sent": sent, "swaps_sent": swaps, "closed_with": code, "fusions_run": run,
            "next_client_first_frame_s": waited}


def control_flood(server: Server, reference: str) -> dict:
    from websockets.exceptions import ConnectionClosed

    sent = pings = pongs = 0
    with connect(server) as ws:
        t0 = time.monotonic()
        try:
            for i in range(1000):
                message = json.dumps({"type": "ping", "t": i})
                ws.send(message)
                sent += len(message)
                pings += 1
        except ConnectionClosed:
            pass
        try:
            while True:
                pongs += json.loads(ws.recv(timeout=5)).get("type") == "pong"
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
        except TimeoutError:
            code = None
    # pings_written counts what the client wrote before it saw the close; pongs, what the server answered
    return {"bytes_sent": sent, "pings_written": pings, "pongs": pongs, "closed_with": code,
            "closed_after_s": round(time.monotonic() - t0, 2)}


def idle_bytes(server: Server, reference: str) -> dict:
    from websockets.exceptions import ConnectionClosed

    sent, t0, code = 0, time.monotonic(), None
    with connect(server) as ws:
        try:
            while time.monotonic() - t0 < 10 * IDLE_TIMEOUT:
                ws.send(b"\0")
                sent += 1
                try:
                    ws.recv(timeout=0.1)
                except TimeoutError:
                    pass
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
    closed_after = round(time.monotonic() - t0, 2)
    deadline = time.monotonic() + 5  # under Ray, health is a replica's report of up to 0.5 s ago
    while server.health()["counters"]["connections"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return {"bytes_sent": sent, "idle_timeout_s": IDLE_TIMEOUT, "closed_with": code, "closed_after_s": closed_after,
            "connections_after": server.health()["counters"]["connections"]}


def viewers(server: Server, reference: str) -> dict:
    import httpx

    max_viewers = MAX_VIEWERS
    opened: list[int] = []
    holders = []
    with connect(server) as ws:
        started = start(ws, reference)
        url = f"{server.base}{started['mjpeg']}&token={TOKEN}"

        def hold():  # one viewer, reading until its response ends
            with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=60)) as response:
                opened.append(response.status_code)
                for _ in response.iter_raw():
                    pass

        for _ in range(max_viewers):
            holder = threading.Thread(target=hold, daemon=True)
            holder.start()
            holders.append(holder)
        deadline = time.monotonic() + 30
        while len(opened) < max_viewers and time.monotonic() < deadline:
            time.sleep(0.05)
        extra = [httpx.get(url, timeout=30).status_code for _ in range(2)]
        no_key = httpx.get(f"{server.base}/api/stream.mjpg", params={"token": TOKEN}, timeout=30).status_code
        timings = {}
        for name, request in {"page": lambda: httpx.get(server.base + "/", params={"token": TOKEN}, timeout=30,
                                                        follow_redirects=True),  # ?token= -> cookie -> the page
                              "health": lambda: httpx.get(server.base + "/api/health", timeout=30),
                              "upload": lambda: httpx.post(f"{server.base}/api/reference", params={"token": TOKEN},
                                                           timeout=30, files={"file": ("r.png", reference_png(),
                                                                                       "image/png")})}.items():
            t0 = time.monotonic()
            status = request().status_code
            timings[name] = {"status": status, "ms": round(1000 * (time.monotonic() - t0), 1)}
    t0 = time.monotonic()  # the client has gone: its session ended, and with it every viewer's response
    for holder in holders:
        holder.join(10)
    ended_after = round(time.monotonic() - t0, 2)
    return {"viewers_admitted": opened, "extra_viewers": extra, "no_key": no_key, "while_full": timings,
            "viewers_ended_with_session": not any(h.is_alive() for h in holders), "viewers_ended_after_s": ended_after}


def reference_png() -> bytes:
    from personalive_trt.media.sample import sample_reference

    return sample_reference().read_bytes()


CASES = {"outsider": outsider, "bomb": bomb, "swap_storm": swap_storm, "control_flood": control_flood,
         "idle_bytes": idle_bytes, "viewers": viewers}


def run(args) -> dict:
    import httpx

    report: dict = {"date": datetime.date.today().isoformat(),
                    "command": "python scripts/abuse.py " + " ".join(sys.argv[1:]),
                    "app": "ray" if args.ray else "single-process",
                    "echo": {"fuse_ms": args.fuse_ms, "step_ms": args.step_ms, "resolution": args.resolution}}
    server = Server(args, control_rate=10.0)
    try:
        reference = httpx.post(f"{server.base}/api/reference", params={"token": TOKEN}, timeout=60,
                               files={"file": ("ref.png", reference_png(), "image/png")}).json()["id"]
        report["peak_memory_mib_at_start"] = server.peak_memory_mib()
        for name, case in CASES.items():
            t0 = time.monotonic()
            report[name] = case(server, reference) | {"seconds": round(time.monotonic() - t0, 1)}
            print(f"{name}: {json.dumps(report[name])}", file=sys.stderr)
        report["listening"] = server.listening()
        report["server"] = {"command": " ".join(server.command[1:]), "notes": server.notes()}
        report["peak_memory_mib_at_end"] = server.peak_memory_mib()
    finally:
        server.close()
    if not args.ray:  # Ray's start costs a minute; the unlimited storm is about the worker, not the transport
        unlimited = Server(args, control_rate=0.0)
        try:
            reference = httpx.post(f"{unlimited.base}/api/reference", params={"token": TOKEN}, timeout=60,
                                   files={"file": ("ref.png", reference_png(), "image/png")}).json()["id"]
            report["swap_storm_unlimited"] = swap_storm(unlimited, reference)
        finally:
            unlimited.close()
    report["exposed_sockets"] = [s["socket"] for s in report["listening"] if not s["loopback"]]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", action="store_true", help="the Ray Serve app (a local Ray)")
    parser.add_argument("--fuse-ms", type=float, default=200.0, help="echo: reference fusion time")
    parser.add_argument("--step-ms", type=float, default=20.0, help="echo: step time (4 frames)")
    parser.add_argument("--resolution", type=int, default=128, help="echo: canvas")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
