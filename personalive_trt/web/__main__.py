"""``python -m personalive_trt.web --echo``: the web app around the EchoAnimator TEST DOUBLE (no model).

For load and soak tests of the serving path (``scripts/soak.py --spawn-echo``): same app, same limits, same
threads as ``personalive-trt serve``, with the animator replaced by :class:`~personalive_trt.live.testing.
EchoAnimator` (sleeps ``--echo-step-ms`` per step, blends input with the reference). Its frames mean nothing;
its timings and memory say how the server path behaves. Use ``personalive-trt serve`` for the real thing.

``--ray`` (with ``--replicas``, ``--min-replicas``/``--max-replicas``, ``--cpus-per-replica``,
``--gpus-per-replica``, ``--address``, ``--drain-timeout``) serves it as the Ray Serve app of ``serve --ray``;
both start through :func:`personalive_trt.web.launch.run_server`.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalive_trt.web", description=__doc__.splitlines()[0])
    parser.add_argument("--echo", action="store_true", help="required: serve the echo test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--echo-step-ms", type=float, default=20.0, help="simulated step time (4 frames)")
    parser.add_argument("--no-crop", action="store_true", help="resize instead of face framing")
    parser.add_argument("--max-sessions", type=int, default=1, help="animations at once (per replica with --ray)")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="close after this long without frames")
    parser.add_argument("--ray", action="store_true", help="serve as the Ray Serve app (serve --ray)")
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--min-replicas", type=int, default=None)
    parser.add_argument("--max-replicas", type=int, default=None)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--address", default=None, help="join this Ray cluster (default: a local Ray)")
    parser.add_argument("--drain-timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if not args.echo:
        print("error: this entry point only serves the echo test double (--echo); use `personalive-trt serve`",
              file=sys.stderr)
        return 2
    from personalive_trt.config import StreamConfig
    from personalive_trt.live.testing import EchoAnimator
    from personalive_trt.web.cluster import DeployError
    from personalive_trt.web.launch import cluster_options, run_server
    from personalive_trt.web.settings import ServeSettings

    settings = ServeSettings(crop=not args.no_crop, max_sessions=args.max_sessions, idle_timeout=args.idle_timeout)
    resolution, step_s = args.resolution, args.echo_step_ms / 1000

    def animator():
        return EchoAnimator(StreamConfig(resolution=resolution), step_s)

    try:
        cluster = cluster_options(args.ray, replicas=args.replicas, min_replicas=args.min_replicas,
                                  max_replicas=args.max_replicas, gpus_per_replica=args.gpus_per_replica,
                                  cpus_per_replica=args.cpus_per_replica, address=args.address,
                                  drain_timeout=args.drain_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_server(animator, settings, resolution, host=args.host, port=args.port, cluster=cluster, log_level="warning",
                   status=lambda message: print(message, file=sys.stderr))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
