"""Starting a server: the single-process app under uvicorn, or the Ray Serve applications (``--ray``).

``personalive-trt serve`` and ``python -m personalive_trt.web --echo`` (the test double's entry point) both come
through here with the same options and checks; only their animators differ. Ray is imported only for ``--ray``.
"""
from __future__ import annotations

from collections.abc import Callable

from personalive_trt.web.cluster import DEFAULT_DRAIN_TIMEOUT, ClusterOptions, DeployError
from personalive_trt.web.settings import ServeSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cluster_options(ray: bool, *, replicas: int | None = None, min_replicas: int | None = None,
                    max_replicas: int | None = None, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
                    address: str | None = None, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> ClusterOptions | None:
    """The ``--ray`` options as :class:`ClusterOptions` (checked, before Ray starts), or None without ``--ray``,
    where giving any of them is an error."""
    if not ray:
        if (any(v is not None for v in (replicas, min_replicas, max_replicas, address)) or gpus_per_replica
                or cpus_per_replica != 1.0 or drain_timeout != DEFAULT_DRAIN_TIMEOUT):
            raise ValueError("--replicas, --min-replicas, --max-replicas, --gpus-per-replica, --cpus-per-replica, "
                             "--address and --drain-timeout need --ray")
        return None
    return ClusterOptions(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                          gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica, address=address,
                          drain_timeout=drain_timeout)


def check_server(host: str, port: int, settings: ServeSettings) -> list[str]:
    """Refuse what cannot serve (one line each); returns warnings about what can but may not be meant."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: expected 1..65535")
    if settings.max_sessions < 1 or settings.max_upload_bytes <= 0 or settings.max_message_bytes <= 0:
        raise ValueError("--max-sessions, --max-upload-mb and --max-message-kb must be positive")
    if settings.idle_timeout < 0:
        raise ValueError(f"--idle-timeout {settings.idle_timeout}: expected >= 0 seconds")
    if host not in LOOPBACK:
        return [f"binding {host}: anyone who can reach this address can use the camera page and the GPU; there is "
                "no authentication. Bind 127.0.0.1 unless you mean it."]
    return []


def url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def run_server(animator_factory: Callable[[], object], settings: ServeSettings, resolution: int, *, host: str,
               port: int, cluster: ClusterOptions | None, status: Callable[[str], None], log_level: str = "info",
               started: str | None = None) -> None:
    """Serve until Ctrl-C: ``settings.max_sessions`` animators from ``animator_factory`` in this process, or per
    replica on Ray (``cluster``; the factory then runs on each replica). ``started``: a line ``status`` gets once
    the single-process app is built (Ray says its own)."""
    if cluster is not None:
        try:
            from personalive_trt.web.ray_app import serve_forever
        except ImportError as exc:
            raise DeployError(f"serve --ray needs the cluster extra ({exc.name} is missing): pip install "
                              "'personalive-trt[cluster]'") from exc
        serve_forever(animator_factory, settings, cluster, resolution, host, port, status=status)
        return
    import uvicorn

    from personalive_trt.web.app import create_app

    app = create_app(animator_factory, settings)
    if started:
        status(started)
    uvicorn.run(app, host=host, port=port, ws_max_size=settings.max_message_bytes, log_level=log_level)


__all__ = ["LOOPBACK", "check_server", "cluster_options", "run_server", "url"]
