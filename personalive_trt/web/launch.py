"""Starting a server: the single-process app under uvicorn, or the Ray Serve applications (``--ray``).

``personalive-trt serve`` and ``python -m personalive_trt.web --echo`` (the test double's entry point) both come
through here with the same options and checks; only their animators differ. Ray is imported only for ``--ray``.

What listens where is decided here. The HTTP port binds ``--host`` (127.0.0.1 by default; anything else needs a
token or ``--no-auth``: :func:`check_server`). A local Ray (``--ray`` without ``--address``) is kept on this
machine (:func:`keep_local_ray_on_loopback`): its node address is 127.0.0.1, so the GCS, raylets, workers and
agents bind loopback, and Ray's token authentication is on. Stock Ray (2.60) binds one thing to every interface
whatever it is told: each Serve replica's inter-deployment gRPC server (``replica.py`` adds ``[::]:0``). With
token authentication it refuses any call without the cluster's token; without it, it runs what it is sent. So a
local Ray with ``RAY_AUTH_MODE`` set to anything but ``token`` is refused unless ``--no-auth``, and the start-up
names every socket left beyond loopback (:func:`exposure_notes`).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, MutableMapping

from personalive_trt.web.auth import TOKEN_ENV, ExposureError, check_exposure, is_loopback
from personalive_trt.web.cluster import DEFAULT_DRAIN_TIMEOUT, ClusterOptions, DeployError
from personalive_trt.web.listening import exposed, listening_sockets
from personalive_trt.web.settings import ServeSettings


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


#: Read by Ray when it is imported: "0" makes a new local Ray's node address 127.0.0.1 (its daemons then bind
#: loopback; Ray's own switch against firewall prompts on macOS and Windows, which is off on Linux by default).
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray's authentication mode: "token" makes every Ray gRPC server refuse calls without the cluster's token.
RAY_AUTH_ENV = "RAY_AUTH_MODE"


def check_server(host: str, port: int, settings: ServeSettings, *, no_auth: bool = False,
                 cluster: ClusterOptions | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Refuse what cannot serve, or would serve the network without a token (one line each: ValueError, or
    :class:`~personalive_trt.web.auth.ExposureError` for a non-loopback ``host`` without ``settings.token`` or
    ``no_auth``, or a local Ray (``cluster`` without an address) whose ``RAY_AUTH_MODE`` in ``environ`` is not
    ``token`` without ``no_auth``), before anything starts; returns warnings about what can serve but may not be
    meant."""
    environ = os.environ if environ is None else environ
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: expected 1..65535")
    if settings.max_sessions < 1 or settings.max_upload_bytes <= 0 or settings.max_message_bytes <= 0:
        raise ValueError("--max-sessions, --max-upload-mb and --max-message-kb must be positive")
    if settings.idle_timeout < 0:
        raise ValueError(f"--idle-timeout {settings.idle_timeout}: expected >= 0 seconds")
    check_exposure(host, settings.token, no_auth)
    warnings = []
    ray_auth = environ.get(RAY_AUTH_ENV, "token")
    if cluster is not None and cluster.address is None and ray_auth.lower() != "token":
        if not no_auth:
            raise ExposureError(f"{RAY_AUTH_ENV}={ray_auth}: the local Ray's Serve replicas listen on every "
                                "interface and would run code for anyone who reaches them; unset it (serve --ray "
                                "turns Ray's token authentication on) or pass --no-auth if you mean it")
        warnings.append(f"{RAY_AUTH_ENV}={ray_auth} with --no-auth: anyone who reaches this machine's Ray Serve "
                        "replica ports can run code on it")
    if is_loopback(host):
        return warnings
    if settings.token is None:
        return [*warnings, f"binding {host} with --no-auth: anyone who can reach this address can use the camera "
                f"page and the GPU. Bind 127.0.0.1, or set {TOKEN_ENV}, unless you mean it."]
    return [*warnings, f"binding {host}: the token and the camera frames cross the network unencrypted over http; "
            "put a TLS reverse proxy in front (docs/security.md)."]


def keep_local_ray_on_loopback(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Before a local Ray starts (and before ``ray`` is imported, which reads the first variable): its node address
    127.0.0.1 and Ray's token authentication on, unless ``environ`` already says otherwise (``check_server``
    refused a mode other than ``token`` without ``--no-auth``). Children (Ray's daemons) inherit both. Returns a
    note when ``ray`` was imported before with its node on the network address, which is then too late to change."""
    environ = os.environ if environ is None else environ
    environ.setdefault(RAY_LOOPBACK_ENV, "0")
    environ.setdefault(RAY_AUTH_ENV, "token")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and constants.ENABLE_RAY_CLUSTER:
        return (f"note: ray was imported before {RAY_LOOPBACK_ENV}=0 was set; the local Ray's daemons listen on "
                "the machine's network address (token-authenticated)")
    return None


def exposure_notes(listeners: list, host: str, port: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line naming every socket of ``listeners`` beyond loopback but the HTTP port ``--host`` asked for (none
    under the defaults but the Ray Serve replicas' gRPC), and whether Ray checks its token on them (the mode in
    ``environ``: a local Ray's was set by :func:`keep_local_ray_on_loopback`; Ray does not turn it on by itself
    for a client given ``--address``)."""
    environ = os.environ if environ is None else environ
    others = [s for s in exposed(listeners) if is_loopback(host) or s.port != port]
    if not others:
        return []
    mode = environ.get(RAY_AUTH_ENV)
    guarded = (f"each refuses calls without the cluster's token ({RAY_AUTH_ENV}=token)" if mode == "token"
               else f"{RAY_AUTH_ENV}={mode or '(unset)'}: anyone who reaches them can run code here")
    why = (" (Ray Serve binds its replicas' gRPC to every interface, no option)"
           if all(s.command.startswith("ray::ServeRepli") for s in others) else "")
    names = ", ".join(f"{where(s.address)}:{s.port} ({s.command})" for s in others)
    return [f"note: listening beyond loopback: {names}{why}; {guarded}"]


def where(host: str) -> str:
    """``host`` as it is written before ``:port`` (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def url(host: str, port: int) -> str:
    return f"http://{where(host)}:{port}"


def run_server(animator_factory: Callable[[], object], settings: ServeSettings, resolution: int, *, host: str,
               port: int, cluster: ClusterOptions | None, status: Callable[[str], None], log_level: str = "info",
               started: str | None = None) -> None:
    """Serve until Ctrl-C: ``settings.max_sessions`` animators from ``animator_factory`` in this process, or per
    replica on Ray (``cluster``; the factory then runs on each replica). ``started``: a line ``status`` gets once
    the single-process app is built (Ray says its own)."""
    if cluster is not None:
        if cluster.address is None:
            late = keep_local_ray_on_loopback()
            if late:
                status(late)
        try:
            from personalive_trt.web.ray_app import serve_forever
        except ImportError as exc:
            raise DeployError(f"serve --ray needs the cluster extra ({exc.name} is missing): pip install "
                              "'personalive-trt[cluster]'") from exc

        def deployed() -> None:  # the ports of Ray's processes change with every start: named once they exist
            try:
                listeners = listening_sockets()
            except OSError:  # not Linux: nothing to list (the docs name the component)
                return
            for note in exposure_notes(listeners, host, port):
                status(note)

        serve_forever(animator_factory, settings, cluster, resolution, host, port, status=status, deployed=deployed)
        return
    import uvicorn

    from personalive_trt.web.app import create_app

    app = create_app(animator_factory, settings)
    if started:
        status(started)
    uvicorn.run(app, host=host, port=port, ws_max_size=settings.max_message_bytes, log_level=log_level)


__all__ = ["RAY_AUTH_ENV", "RAY_LOOPBACK_ENV", "check_server", "cluster_options", "exposure_notes",
           "keep_local_ray_on_loopback", "run_server", "url"]
