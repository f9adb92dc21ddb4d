"""``personalive-trt serve``: the live web page, in this process or on Ray Serve replicas (``--ray``)."""
from __future__ import annotations

from typing import Optional

import typer

from personalive_trt.cli import params
from personalive_trt.cli.params import fail, user_errors, warn


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind. Anything but loopback exposes the camera "
                             "stream to the network (a warning is printed)."),
    port: int = typer.Option(7860, help="TCP port."),
    weights: params.Weights = "auto",
    backend: params.Backend = "torch",
    engines: params.Engines = None,
    device: params.Device = "auto",
    dtype: params.Dtype = "auto",
    seed: params.Seed = 42,
    window: params.Window = 4,
    no_crop: params.NoCrop = False,
    max_sessions: int = typer.Option(1, help="Animations at once (one animator each); others are told 'busy'."),
    max_upload_mb: float = typer.Option(10.0, help="Largest reference upload, MiB."),
    max_message_kb: int = typer.Option(2048, help="Largest WebSocket message (one driving JPEG), KiB."),
    vae: params.Vae = "full",
    idle_timeout: float = typer.Option(60.0, help="Close a connection that sends no driving frame for this many "
                                       "seconds (frees its slot); 0: never."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve: animator replicas on many GPUs/machines "
                             "(needs the cluster extra). --max-sessions is then per replica."),
    replicas: Optional[int] = typer.Option(None, help="--ray: fixed number of animator replicas (default 1)."),
    min_replicas: Optional[int] = typer.Option(None, help="--ray: autoscale on live sessions from this many..."),
    max_replicas: Optional[int] = typer.Option(None, help="--ray: ...to this many replicas."),
    gpus_per_replica: float = typer.Option(0.0, help="--ray: GPUs each replica reserves (fractions share a GPU)."),
    cpus_per_replica: float = typer.Option(1.0, help="--ray: CPUs each replica reserves (fractions allowed)."),
    address: Optional[str] = typer.Option(None, help="--ray: join this Ray cluster (e.g. ray://head:10001 or "
                                          "auto); default: start a local Ray and stop it on exit."),
    drain_timeout: float = typer.Option(3600.0, help="--ray: seconds a replica being scaled down keeps its live "
                                        "sessions before it is stopped anyway."),
    compile_mode: params.Compile = "auto",
) -> None:
    """Serve the live web page: upload a portrait, animate it with your camera in the browser."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        fail(f"serve needs the web extra ({exc.name} is missing): pip install 'personalive-trt[serve]'")
    from personalive_trt.web.cluster import DeployError
    from personalive_trt.web.launch import check_server, cluster_options
    from personalive_trt.web.settings import ServeSettings

    try:
        settings = ServeSettings(max_sessions=max_sessions, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                                 max_message_bytes=max_message_kb * 1024, crop=not no_crop, idle_timeout=idle_timeout)
        for warning in check_server(host, port, settings):
            warn(warning)
        cluster = cluster_options(ray, replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                                  gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                                  address=address, drain_timeout=drain_timeout)
        _serve(settings, cluster, host, port, weights=weights, backend=backend, engines=engines, device=device,
               dtype=dtype, seed=seed, window=window, vae=vae, compile=compile_mode)
    except (*user_errors(), DeployError) as exc:
        fail(str(exc))


def _serve(settings, cluster, host: str, port: int, **choices) -> None:
    """The animators of ``choices`` (one :class:`AnimatorOptions`), checked, then served until Ctrl-C."""
    from personalive_trt.devices import describe
    from personalive_trt.runtime.animator import AnimatorOptions, open_replica_animator
    from personalive_trt.web.launch import run_server, url

    options = AnimatorOptions(**choices)
    config = options.check_choices()
    status = lambda message: typer.echo(message, err=True)  # noqa: E731
    if cluster is not None:  # each replica checks and opens its own animators, on its own GPU
        import functools

        factory = functools.partial(open_replica_animator, options.for_replicas())
        run_server(factory, settings, config.resolution, host=host, port=port, cluster=cluster, status=status)
        return
    animation = options.check()
    run_server(animation.open, settings, config.resolution, host=host, port=port, cluster=None, status=status,
               started=f"serving on {url(host, port)} with {options.backend} on "
                       f"{describe(animation.device, animation.dtype)}  (Ctrl-C stops)")
