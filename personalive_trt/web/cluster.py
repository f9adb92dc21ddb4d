"""``serve --ray`` options and the Ray Serve deployment options they become (no Ray import here).

Kept apart from :mod:`personalive_trt.web.ray_app` so that the mapping (what Ray receives for ``num_gpus``,
``num_cpus``, admission and autoscaling) is checked without Ray, and validated before Ray starts.

Admission: each open WebSocket is one of Ray's ongoing requests on the replica that accepted it, for the
socket's whole life (sticky sessions come from that). A replica takes ``max_sessions + 1`` sockets: the extra
one lets a socket that arrives at a full replica be told ``busy`` by the protocol and closed at once, instead
of waiting in Ray's queue for a live session to end. The router (:class:`~personalive_trt.web.ray_app.
LeastLoadedRouter`) sends each socket to the least loaded replica, counting the sockets being routed at the
same moment, so a session meets a full replica only when every replica is full. Sockets wait in the proxy's
queue only while they are routed or while every replica's spare slot holds a socket being told ``busy``
(milliseconds each; measured in benchmarks/RESULTS.md, "serve --ray admission"). The queue is bounded by
:data:`HANDSHAKE_QUEUE` sockets per proxy; over it Ray sheds the socket (its proxy answers the handshake with
HTTP 500), which a browser sees as a refused connection. A queue of 1 (Ray's smallest) refused sockets that
arrived together although slots were free: Ray counts a socket as queued while it is being routed.

Health: Ray calls each replica's ``check_health`` every ``health_check_period`` s; it raises when one of the
replica's animators has failed, and after 3 failed checks in a row (Ray's threshold) Ray stops the replica the
graceful way (its other sessions drain, as below) and starts a new one. A check that does not answer within
``health_check_timeout`` s counts as failed (a hung replica). The period is short so a failed animator is
replaced within seconds; the timeout is long because a replica stopped by mistake takes its sessions with it.

Scale-down and redeploys: a replica Ray stops is *drained*: Ray routes no new socket to it and waits for its
open sockets (live sessions) to end, for at most ``drain_timeout`` s (``graceful_shutdown_timeout_s``), before
it kills the replica. Which replica the autoscaler stops is Ray's choice (Ray 2.60: replicas still starting,
then those on the node with the fewest replicas, newest first), so it may be one with live sessions; they go on.
"""
from __future__ import annotations

from dataclasses import dataclass

class DeployError(RuntimeError):
    """``serve --ray`` could not start: the cluster could not be joined, or the animator replicas failed to start
    (bad weights, engines, device...). One line with the cause."""


#: Sockets one Ray proxy may hold while they are routed to a replica (``max_queued_requests``; module docstring).
HANDSHAKE_QUEUE = 64

#: Seconds a draining replica keeps its live sessions before Ray stops it anyway (``graceful_shutdown_timeout_s``).
DEFAULT_DRAIN_TIMEOUT = 3600.0


@dataclass(frozen=True)
class ClusterOptions:
    """How the Ray app runs its animator replicas (every field is a ``serve --ray`` option)."""

    replicas: int | None = None  # fixed count; None with min/max set: autoscaling
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    address: str | None = None  # join this Ray cluster; None: start a local Ray and stop it on exit
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    # Autoscaler pacing (seconds); tests shorten them.
    upscale_delay: float = 5.0
    downscale_delay: float = 60.0
    metrics_window: float = 30.0  # seconds of load the autoscaler averages (Ray's look_back_period_s)
    # Replica health checks (seconds; module docstring); tests shorten the period.
    health_check_period: float = 2.0
    health_check_timeout: float = 30.0

    def __post_init__(self) -> None:
        autoscale = self.min_replicas is not None or self.max_replicas is not None
        if self.replicas is not None and autoscale:
            raise ValueError("--replicas and --min-replicas/--max-replicas exclude each other; give one")
        if autoscale and (self.min_replicas is None or self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"--replicas {self.replicas}: expected >= 1")
        if autoscale and not 0 <= self.min_replicas <= self.max_replicas or (autoscale and self.max_replicas < 1):
            raise ValueError(f"--min-replicas {self.min_replicas} --max-replicas {self.max_replicas}: expected "
                             "0 <= min <= max and max >= 1")
        if self.gpus_per_replica < 0 or self.cpus_per_replica <= 0:
            raise ValueError(f"--gpus-per-replica {self.gpus_per_replica} --cpus-per-replica "
                             f"{self.cpus_per_replica}: expected GPUs >= 0 and CPUs > 0 (fractions allowed)")
        if self.drain_timeout <= 0 or self.upscale_delay < 0 or self.downscale_delay < 0 or self.metrics_window <= 0:
            raise ValueError("the drain timeout and metrics window must be > 0 and the autoscaling delays >= 0")
        if self.health_check_period <= 0 or self.health_check_timeout <= 0:
            raise ValueError(f"health check period {self.health_check_period} and timeout "
                             f"{self.health_check_timeout}: expected > 0")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


def animator_deployment_options(options: ClusterOptions, max_sessions: int) -> dict:
    """Keyword arguments of ``Deployment.options`` for the animator replicas (what Ray receives)."""
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
    deployment = {
        "ray_actor_options": {"num_gpus": options.gpus_per_replica, "num_cpus": options.cpus_per_replica},
        "max_ongoing_requests": max_sessions + 1,  # + the socket being told 'busy' (module docstring)
        "max_queued_requests": HANDSHAKE_QUEUE,  # a burst of handshakes; over it Ray refuses them
        "graceful_shutdown_timeout_s": options.drain_timeout,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": options.health_check_period,
        "health_check_timeout_s": options.health_check_timeout,
    }
    if options.autoscaling:
        deployment["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "initial_replicas": max(options.min_replicas, 1),
            # Below one full replica: when every replica is full, one more is asked for before anyone is refused.
            "target_ongoing_requests": max_sessions * 0.75,
            "upscale_delay_s": options.upscale_delay,
            "downscale_delay_s": options.downscale_delay,
            "look_back_period_s": options.metrics_window,
        }
    else:
        deployment["num_replicas"] = options.replicas or 1
    return deployment
