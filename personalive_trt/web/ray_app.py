"""``serve --ray``: the web app as Ray Serve applications, animators on many replicas (GPUs, machines).

Ray routes, back-pressures, scales and replaces; what is ours is unchanged: every replica runs the same routes
(:mod:`.routes`), session protocol (:mod:`.session`), animator pool (:mod:`.pool`) and reference store
(:mod:`.references`) as the single-process ``serve``. Three deployments:

* ``Animators`` (application ``personalive-animate``, route prefix ``/api/ws``): the replicas that own the GPU
  work. Each loads its animators and captures its graphs once, at start (``AnimatorPool.create``), and serves the
  WebSocket session protocol. An open socket is one of Ray's ongoing requests on the replica that accepted
  it, for its whole life: a session never moves. Admission, autoscaling and draining follow from that
  (:mod:`.cluster` says how). A replica whose animator fails leases it to no new session and fails Ray's
  health check (``check_health``), so Ray replaces it (the failed session was closed with 1011 at once). A
  replica whose start-up self-check stops its animators (:class:`~personalive_trt.runtime.self_check.
  SelfCheckError`: a path asked for explicitly computes something else on this GPU) fails it the same way, with the
  self-check's line as the reason, and admits no session; Ray (2.60) runs the first health check before it counts
  a replica started, so such a replica counts as failed to start (``deploy_animators`` reports it).
* ``Front`` (application ``personalive``, route prefix ``/``): the page, static files, uploads, MJPEG and
  ``/api/health``. Kept off the animator replicas so that the page and uploads never wait behind sessions
  holding every request slot of a full cluster.
* ``Registry`` (one replica in ``personalive``, :mod:`.registry`): the uploaded references, each animator
  replica's health report and each live session's MJPEG feed by key; the front and the replicas reach it
  through small clients (:class:`~.registry.RemoteReferences`, :class:`~.registry.RemoteFeeds`,
  :class:`~.registry.KeyAnnouncer`) whose loops survive its restart.

Rejected: one application whose replicas serve both HTTP and WebSockets. Each replica's request slots would be
shared by sessions and page loads, so a full cluster would refuse the page and the health check as well.
The registry is a single replica: if it dies, Ray restarts it and uploaded references are lost (clients
upload again); sessions already running keep their reference.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable

import ray
from fastapi import FastAPI, WebSocket
from ray import serve
from ray.serve.request_router import RequestRouter

from personalive_trt.runtime.self_check import SelfCheckError
from personalive_trt.web.app import build_app
from personalive_trt.web.cluster import ClusterOptions, DeployError, animator_deployment_options
from personalive_trt.web.health import replica_report
from personalive_trt.web.pool import AnimatorPool
from personalive_trt.web.registry import (REGISTRY_ERRORS, KeyAnnouncer, Registry, RemoteFeeds, RemoteReferences,
                                          call, keep_going, or_unavailable)
from personalive_trt.web.settings import ServeSettings
from personalive_trt.web.state import ServerState

log = logging.getLogger("personalive_trt.web")

APP = "personalive"  # front + registry, route prefix "/"
ANIMATE_APP = "personalive-animate"  # animator replicas, route prefix WEBSOCKET_PATH
WEBSOCKET_PATH = "/api/ws"
REPORT_INTERVAL = 0.5  # seconds between an animator replica's health reports
ROUTING_STATS_PERIOD = 0.5  # seconds between Ray's polls of each animator replica's routing stats
FAILED_ANIMATORS = "failed_animators"  # routing stats key: how many of the replica's animators have failed
FRONT_REQUESTS = 256  # the front's request slots (max_ongoing_requests): page, uploads, health, MJPEG viewers
FRONT_VIEWERS = FRONT_REQUESTS // 2  # MJPEG responses one front holds at most: the page never waits behind them


class LeastLoadedRouter(RequestRouter):
    """Each new socket goes to the replica with the fewest sockets, counting those still being routed.

    Ray's default router samples two replicas at random, so with three or more a session could meet two full
    replicas while a third has a free slot. Asking every replica its load is not enough either: sockets that
    arrive together are routed concurrently, all probe the same idle loads and all pick the same replica, and a
    session is told ``busy`` while another replica has a free slot (benchmarks/RESULTS.md, "serve --ray
    admission"). So this router (one per Ray proxy, run in its event
    loop) counts per replica the sockets it routed that are still open, and those it chose a replica for but
    has not sent yet (a reservation, dropped when Ray sends one to that replica or asks again for the same
    request, and after ``RESERVATION_TTL`` s at most). It takes the larger of its count and Ray's cached load
    (which also counts sockets from other proxies) and offers Ray the least loaded replica alone; if Ray finds
    it full it asks again. When every replica looks full it offers them all, so that Ray probes their loads
    afresh (a cached load can be stale) and waits for a spare slot to free up.

    A replica with a failed animator (its routing stats, polled every ``ROUTING_STATS_PERIOD`` s) is offered
    only when no other replica is: it would tell every new session ``busy`` until Ray replaces it.

    Exact within one proxy. Across nodes (a proxy each), two sockets that arrive at the same instant through
    different proxies can still meet at one replica's spare slot, and one of them is told ``busy``.
    """

    RESERVATION_TTL = 5.0  # seconds; routing a handshake takes milliseconds, this only bounds a leak

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[str, object] = {}  # request id -> replica id: sockets this proxy routed, still open
        self._reserved: dict[str, tuple[object, float]] = {}  # request id -> (replica id, when chosen)

    def _load(self, replica) -> int:
        rid = replica.replica_id
        routed = sum(1 for r in self._open.values() if r == rid)
        reported = self.replica_queue_len_cache.get(rid) or 0
        return max(routed, reported) + sum(1 for r, _ in self._reserved.values() if r == rid)

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        if not candidate_replicas:
            return []
        now = time.monotonic()
        for key in [k for k, (_, t) in self._reserved.items() if now - t > self.RESERVATION_TTL]:
            del self._reserved[key]
        key = pending_request.metadata.internal_request_id if pending_request is not None else None
        self._reserved.pop(key, None)  # asked again for this request: the last choice was full or is gone
        healthy = [r for r in candidate_replicas if not r.routing_stats.get(FAILED_ANIMATORS)]
        candidate_replicas = healthy or candidate_replicas  # none healthy: they answer busy until replaced
        loads = [(self._load(r), i, r) for i, r in enumerate(candidate_replicas)]
        open_ = [(load, i, r) for load, i, r in loads if load < r.max_ongoing_requests]
        if not open_:  # all look full: let Ray probe them all (counts can be stale) and wait for a free slot
            return [list(candidate_replicas)]
        _, _, best = min(open_, key=lambda item: item[:2])
        if key is not None:
            self._reserved[key] = (best.replica_id, now)
        return [[best]]

    def on_send_request(self, replica_id) -> None:
        super().on_send_request(replica_id)  # Ray's cached load counts the socket from now on: drop a reservation
        key = next((k for k, (r, _) in self._reserved.items() if r == replica_id), None)
        self._reserved.pop(key, None)

    def on_request_routed(self, pending_request, replica_id, result) -> None:
        self._open[pending_request.metadata.internal_request_id] = replica_id

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        self._open.pop(internal_request_id, None)
        self._reserved.pop(internal_request_id, None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=FRONT_REQUESTS)
@serve.ingress()
class Front:
    def __init__(self, registry, settings: ServeSettings, resolution: int) -> None:
        self.state = ServerState(settings=settings, references=RemoteReferences(registry), resolution=resolution,
                                 health=lambda: or_unavailable(registry.health.remote(), "health"),
                                 mjpeg_feed=RemoteFeeds(registry, FRONT_VIEWERS))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.state, websocket_path=None)


@serve.ingress()
class Animators:
    """One replica: ``settings.max_sessions`` animators created now, the WebSocket protocol on ``/``."""

    def __init__(self, animator_factory: Callable[[], object], settings: ServeSettings) -> None:
        self.registry = serve.get_deployment_handle("Registry", app_name=APP)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.not_started: str | None = None  # the self-check's line when it stopped this replica's animators
        try:
            pool = AnimatorPool.create(animator_factory, settings, reuse_failed=False)  # Ray replaces the replica
        except SelfCheckError as exc:  # recorded for check_health, which Ray runs before it counts us started
            self.not_started = str(exc)  # and no state: nothing of this replica serves
            return
        context = ray.get_runtime_context()
        resources = {name: round(amount, 4) for name, amount in context.get_assigned_resources().items()}
        self.state = ServerState(settings=settings, references=RemoteReferences(self.registry),
                                 resolution=pool.slots[0].resolution, pool=pool, resources=resources,
                                 node=f"{socket.gethostname()}/{context.get_node_id()[:8]}")

    def record_routing_stats(self) -> dict:
        """Polled by Ray every ``ROUTING_STATS_PERIOD`` s for the router: a replica whose animator failed gets
        no new session while Ray's health checks (``check_health``) take it out."""
        return {FAILED_ANIMATORS: 1 if self.not_started is not None else len(self.state.pool.failures)}

    def check_health(self) -> None:
        """Ray's health check: raises while an animator of this replica has failed, or when its self-check stopped
        them at start (the reason is the self-check's line); Ray then replaces the replica."""
        if self.not_started is not None:
            raise AnimatorFailedError(self.not_started)
        failures = self.state.pool.failures
        if failures:
            raise AnimatorFailedError(f"{len(failures)} of {len(self.state.pool.slots)} animator(s) failed; "
                                      f"first: {failures[0]}")

    def __serve_build_asgi_app__(self) -> FastAPI:
        if self.not_started is not None:
            return refusing_app(self.not_started)
        state, registry, replica = self.state, self.registry, self.replica

        async def report():
            await call(registry.report.remote(replica, replica_report(state)))
            await asyncio.sleep(REPORT_INTERVAL)

        announcer = KeyAnnouncer(registry, replica, state.mjpeg)

        def announce_keys() -> None:  # the lifespan's fresh feeds announce each new key before it is handed out
            announcer.feeds = state.mjpeg
            state.mjpeg.announce = announcer.announce

        async def forget():
            try:
                await call(registry.forget.remote(replica))
            except REGISTRY_ERRORS as exc:  # its report and keys expire on their own (REPORT_TTL)
                log.info("replica %s: could not sign off at the registry (%s)", replica, type(exc).__name__)

        app = build_app(state, title="personalive-trt animators", http=False, websocket_path=WEBSOCKET_PATH,
                        on_start=(announce_keys,),
                        background=(lambda: keep_going(f"replica {replica}: health report", report),
                                    lambda: keep_going(f"replica {replica}: MJPEG keys and frames", announcer.step)),
                        on_exit=(forget,))
        app.add_middleware(FullPath)
        return app


class AnimatorFailedError(RuntimeError):
    """An animator replica's health check: one of its animators failed, or its self-check stopped them at start
    (Ray replaces the replica)."""


def refusing_app(reason: str) -> FastAPI:
    """The app of a replica whose animators did not start: every socket is closed at once with 1011 and the reason
    (cut to the 123 bytes a close frame carries); no session is admitted."""
    app = FastAPI(title="personalive-trt animators (not started)")

    @app.websocket(WEBSOCKET_PATH)
    async def refuse(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(code=1011, reason=reason.encode()[:123].decode(errors="ignore"))

    app.add_middleware(FullPath)
    return app


class FullPath:
    """ASGI middleware: route on the request's full path. Ray gives the application's route prefix as the
    ``root_path``, which would leave the WebSocket at the empty path (a route Starlette cannot declare)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            scope = {**scope, "root_path": ""}
        await self.app(scope, receive, send)


def deploy(animator_factory: Callable[[], object], settings: ServeSettings, options: ClusterOptions,
           resolution: int) -> None:
    """Run the two applications on the Ray cluster this process is connected to (``serve.start`` done).

    ``animator_factory`` runs on the animator replicas (it travels pickled): resolve devices inside it, where
    the GPU is. ``resolution`` is what the front frames uploads to; it must match the animators'.
    """
    settings = dataclasses.replace(settings, close_when_busy=True)
    registry = Registry.bind(settings.references_kept, settings.max_viewers)
    serve.run(Front.bind(registry, settings, resolution), name=APP, route_prefix="/")
    deploy_animators(animator_factory, settings, options)


def deploy_animators(animator_factory: Callable[[], object], settings: ServeSettings,
                     options: ClusterOptions) -> None:
    """(Re)deploy the animator replicas alone (the front, registry and its references stay).

    A redeploy replaces every replica (``serve.run`` gives each run a new version): the old ones drain, taking
    no new session and leaving when their last one ends or ``options.drain_timeout`` runs out.
    """
    settings = dataclasses.replace(settings, close_when_busy=True)
    animators = serve.deployment(Animators, name="Animators").options(
        request_router_config={"request_router_class": LeastLoadedRouter,
                               "request_routing_stats_period_s": ROUTING_STATS_PERIOD},
        **animator_deployment_options(options, settings.max_sessions))
    try:
        serve.run(animators.bind(animator_factory, settings), name=ANIMATE_APP, route_prefix=WEBSOCKET_PATH)
    except RuntimeError as exc:  # Ray says only that the deployment failed; its status holds the replica's error
        status = serve.status().applications.get(ANIMATE_APP)
        detail = status.deployments["Animators"].message if status and "Animators" in status.deployments else ""
        lines = [line.strip() for line in detail.splitlines() if line.strip()]
        raise DeployError(f"the animator replicas failed to start: {lines[-1] if lines else exc}") from exc


def serve_forever(animator_factory: Callable[[], object], settings: ServeSettings, options: ClusterOptions,
                  resolution: int, host: str, port: int, status: Callable[[str], None],
                  deployed: Callable[[], None] = lambda: None) -> None:
    """Start (or join, with ``options.address``) Ray, deploy, and block until Ctrl-C or SIGTERM.

    Without an address a new local Ray instance is started (``address="local"``: never one left running) and
    shut down on exit; with one, only this app's two applications are deleted on exit. ``deployed()`` runs once
    the applications are up, before the "serving on" line.
    """
    try:
        ray.init(address=options.address or "local", include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:  # a wrong address, a cluster that is down, or a token it does not accept
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise DeployError(f"cannot join the Ray cluster at {options.address}: {lines[0] if lines else exc} (a "
                          "cluster with token authentication needs RAY_AUTH_MODE=token and its token)") from exc
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        deploy(animator_factory, settings, options, resolution)
        deployed()
        status(f"serving on http://{'[' + host + ']' if ':' in host else host}:{port} with Ray Serve "
               f"({'cluster ' + options.address if options.address else 'local Ray'}; Ctrl-C stops)")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if options.address:
                serve.delete(ANIMATE_APP)
                serve.delete(APP)
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
