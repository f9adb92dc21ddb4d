"""``/api/health``: one report per animator process (a *replica*), and the app's view summed over them.

The single-process ``serve`` has one replica (itself); the Ray app has one per Ray Serve replica, each pushing
its report to the cluster registry. Both answer :func:`aggregate` of their reports, so the fields mean the same
thing whichever server runs: ``sessions_active`` and ``max_sessions`` are totals, ``replicas`` lists each
process (``pid``, ``node``, ``sessions``, fps, latency, host and device memory, ``animator_failures``: the
animators that failed and have not restarted).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from personalive_trt.web.state import ServerState

log = logging.getLogger("personalive_trt.web")


def replica_report(state: ServerState) -> dict:
    """This process's animators: sessions, per-worker stats, memory, counters."""
    pool = state.pool
    workers = [s.worker.stats.snapshot() | {"dropped_input": s.worker.inbox.dropped} for s in pool.slots]
    live = [w for w in workers if w["fps"]]
    return {
        "pid": os.getpid(),
        "node": state.node or socket.gethostname(),
        "animator": pool.animator.description,
        "resolution": state.resolution,
        "sessions": pool.active,
        "max_sessions": state.settings.max_sessions,
        "fps": round(sum(w["fps"] for w in live), 2),
        "latency_ms_p50": max((w["latency_ms_p50"] for w in live if w["latency_ms_p50"] is not None), default=None),
        "host_memory_bytes": host_memory_bytes(),
        "device_memory_bytes": device_memory_bytes(),
        "animator_failures": pool.failures,
        "counters": dict(state.counters),
        "workers": workers,
        **({"resources": state.resources} if state.resources is not None else {}),
    }


def aggregate(reports: list[dict]) -> dict:
    """The app's health from its replicas' reports (one for the single-process server).

    ``host_memory_bytes``/``device_memory_bytes`` are totals over the replicas (None when no replica reports
    one); ``latency_ms_p50`` is the worst replica's.
    """
    if not reports:
        return {"status": "starting", "sessions_active": 0, "max_sessions": 0, "replicas": []}

    def total(key):
        values = [r[key] for r in reports if r.get(key) is not None]
        return sum(values) if values else None

    counters: dict[str, int] = {}
    for report in reports:
        for name, value in report["counters"].items():
            counters[name] = counters.get(name, 0) + value
    return {
        "status": "ok",
        "animator": reports[0]["animator"],
        "resolution": reports[0]["resolution"],
        "sessions_active": total("sessions"),
        "max_sessions": total("max_sessions"),
        "fps": round(total("fps"), 2),
        "latency_ms_p50": max((r["latency_ms_p50"] for r in reports if r["latency_ms_p50"] is not None),
                              default=None),
        "host_memory_bytes": total("host_memory_bytes"),
        "device_memory_bytes": total("device_memory_bytes"),
        "counters": counters,
        "workers": [w for r in reports for w in r["workers"]],
        "replicas": [{k: v for k, v in r.items() if k not in ("counters", "workers", "animator", "resolution")}
                     for r in reports],
    }


def host_memory_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def device_memory_bytes() -> int | None:
    """CUDA memory allocated by torch in this process (None without CUDA)."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:  # memory reporting must never break a health check
        log.debug("device memory query failed", exc_info=True)
    return None
