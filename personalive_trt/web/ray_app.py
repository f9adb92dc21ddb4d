"""``serve --ray``: the web app as Ray Serve applications, animators on many replicas (GPUs, machines).

Ray routes, back-pressures, scales and replaces; what is ours is unchanged: every replica runs the same routes
(:mod:`.routes`), session protocol (:mod:`.session`), animator pool (:mod:`.pool`) and reference store
(:mod:`.references`) as the single-process ``serve``. Three deployments:

* ``Animators`` (application ``personalive-animate``, route prefix ``/api/ws``): the replicas that own the GPU
  work. Each loads its animators and captures its graphs once, at start (``EnginePool.create``), and serves the
  WebSocket session protocol. An open socket is one of Ray's ongoing requests on the replica that accepted
  it, for its whole life: a session never moves. Admission, autoscaling and draining follow from that
  (:mod:`.cluster` says how). A replica whose animator fails leases it to no new session and fails Ray's
  health check (``check_health``), so Ray replaces it (the failed session was closed with 1011 at once).
* ``Front`` (application ``personalive``, route prefix ``/``): the page, static files, uploads, MJPEG and
  ``/api/health``. Kept off the animator replicas so that the page and uploads never wait behind sessions
  holding every request slot of a full cluster.
* ``Registry`` (one replica in ``personalive``): the uploaded references (verified, framed images by id: an
  upload through any front replica starts or swaps a session on any animator replica), each animator
  replica's health report (pushed every 0.5 s; a report older than 3 s is dropped, so a dead replica's sessions
  leave every count within seconds), and each live session's MJPEG feed by key (:mod:`.mjpeg`). The replicas
  announce their sessions' keys at least every ``SYNC_INTERVAL`` s (and at once when one starts or ends) and
  push a session's output JPEGs only while the registry says someone watches it; a replica that stops
  announcing has died, and its sessions' viewers stop after ``REPORT_TTL`` s.

  Every Registry method is ``async``: Ray Serve runs a deployment's plain methods on a thread pool, where
  concurrent calls raced on its dicts (``health()`` iterated what ``report()`` changed) and set the MJPEG
  viewers' ``asyncio.Event`` from a thread that is not the loop's. Async methods all run on the replica's one
  event loop and interleave only at an ``await``, and the methods do not await between reading and writing
  their state, so no lock is needed (a lock would not have made ``Event.set`` from a thread safe either).

The replicas' report and MJPEG loops survive a Registry that dies (Ray restarts it): each call has a timeout,
a failure is logged once and retried with back-off (:func:`keep_going`), and the new Registry hears every
replica's report and session keys again within a second or two.

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
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException
from ray.serve.request_router import RequestRouter
from starlette.concurrency import run_in_threadpool

from personalive_trt.web.cluster import ClusterOptions, animator_deployment_options
from personalive_trt.web.health import aggregate, replica_report
from personalive_trt.web.mjpeg import ENDED, SessionFeeds, Viewer, ViewerRefused
from personalive_trt.web.pool import EnginePool
from personalive_trt.web.references import ReferenceStore
from personalive_trt.web.routes import mount
from personalive_trt.web.settings import ServeSettings
from personalive_trt.web.state import ClusterUnavailable, ServerState

log = logging.getLogger("personalive_trt.web")

APP = "personalive"  # front + registry, route prefix "/"
ANIMATE_APP = "personalive-animate"  # animator replicas, route prefix WEBSOCKET_PATH
WEBSOCKET_PATH = "/api/ws"
REPORT_INTERVAL = 0.5  # seconds between an animator replica's health reports
REPORT_TTL = 3.0  # a report older than this is a replica that has gone
ROUTING_STATS_PERIOD = 0.5  # seconds between Ray's polls of each animator replica's routing stats
FAILED_ANIMATORS = "failed_animators"  # routing stats key: how many of the replica's animators have failed
SYNC_INTERVAL = 1.0  # longest gap between a replica's announcements of its sessions' keys (and of new viewers)
CALL_TIMEOUT = 5.0  # seconds a registry call may take (a long poll: this beyond its own timeout)
ANNOUNCE_TIMEOUT = 1.0  # seconds a session's start waits for its key to reach the registry (then the loop retries)
RETRY_FIRST, RETRY_MAX = 0.2, 2.0  # back-off of a replica's loops while the registry does not answer (seconds)
FRONT_REQUESTS = 256  # the front's request slots (max_ongoing_requests): page, uploads, health, MJPEG viewers
FRONT_VIEWERS = FRONT_REQUESTS // 2  # MJPEG responses one front holds at most: the page never waits behind them
#: What a registry call raises when the registry is down or restarting (or the call timed out).
REGISTRY_ERRORS = (RayError, RayServeException, asyncio.TimeoutError)


class LeastLoadedRouter(RequestRouter):
    """Each new socket goes to the replica with the fewest sockets, counting those still being routed.

    Ray's default router samples two replicas at random, so with three or more a session could meet two full
    replicas while a third has a free slot. Asking every replica its load is not enough either: sockets that
    arrive together are routed concurrently, all probe the same idle loads and all pick the same replica. (4
    sessions at once on 2 replicas x 2 put 3 on one in 3 rounds of 4, and the third was told ``busy`` while the
    other replica had a free slot: measured 2026-12-06.) So this router (one per Ray proxy, run in its event
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


async def call(response, timeout: float = CALL_TIMEOUT):
    """Await a registry call (a ``DeploymentResponse``) for at most ``timeout`` s; a registry that is down or
    restarting raises one of :data:`REGISTRY_ERRORS` instead of leaving the caller waiting for it."""
    return await asyncio.wait_for(response, timeout)


async def or_unavailable(response, what: str):
    """A registry call on behalf of a request: its failure is :class:`ClusterUnavailable` (503, one line)."""
    try:
        return await call(response)
    except REGISTRY_ERRORS as exc:
        raise ClusterUnavailable(f"{what}: the cluster registry does not answer (restarting?); try again in a few "
                                 "seconds") from exc


class RemoteReferences:
    """The :class:`ReferenceStore` interface, answered by the registry replica."""

    def __init__(self, registry) -> None:
        self.registry = registry

    async def add(self, image) -> str:
        return await or_unavailable(self.registry.add_reference.remote(image), "storing the reference")

    async def get(self, key):
        return await or_unavailable(self.registry.get_reference.remote(key), "reading the reference")


class RemoteFeeds:
    """``/api/stream.mjpg`` on the front: viewers admitted and fed by the registry, which knows every replica's
    sessions. One front holds at most ``max_open`` MJPEG responses (429 beyond), so viewers never take the
    request slots that the page, uploads and health need."""

    def __init__(self, registry, max_open: int) -> None:
        self.registry = registry
        self.max_open = max_open
        self.open = 0

    async def open_viewer(self, key: str) -> Viewer:
        if self.open >= self.max_open:
            raise ViewerRefused(429, f"this server already streams {self.max_open} MJPEG responses; try again later")
        answer = await or_unavailable(self.registry.watch.remote(key), "opening the MJPEG stream")
        if "viewer" not in answer:
            raise ViewerRefused(answer["status"], answer["message"])
        viewer = answer["viewer"]
        self.open += 1

        async def next_frame(version: int, timeout: float):
            try:
                return await call(self.registry.next_frame.remote(key, viewer, version, timeout), timeout + CALL_TIMEOUT)
            except REGISTRY_ERRORS as exc:  # a restarted registry has forgotten this viewer: its stream ends
                log.info("MJPEG viewer %d: the registry did not answer (%s); ending its stream", viewer,
                         type(exc).__name__)
                return ENDED

        async def close() -> None:
            self.open -= 1
            try:
                await call(self.registry.unwatch.remote(key, viewer))
            except REGISTRY_ERRORS as exc:  # its lease runs out on its own (mjpeg.VIEWER_TTL)
                log.info("MJPEG viewer %d: could not sign off at the registry (%s)", viewer, type(exc).__name__)

        return Viewer(next_frame, close)


#: Seconds between Ray's checks of the Registry replica: a dead one is noticed (and restarted) within about this.
REGISTRY_HEALTH_CHECK_PERIOD = 1.0


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=REGISTRY_HEALTH_CHECK_PERIOD)
class Registry:
    """References, replica reports and the sessions' MJPEG feeds; every method async (module docstring)."""

    def __init__(self, references_kept: int, max_viewers: int) -> None:
        self.references = ReferenceStore(references_kept)
        self.reports: dict[str, tuple[float, dict]] = {}
        self.feeds = SessionFeeds(max_viewers)
        self.keys: dict[str, tuple[float, frozenset[str]]] = {}  # replica -> (last announcement, its session keys)

    async def add_reference(self, image) -> str:
        return await self.references.add(image)

    async def get_reference(self, key):
        return await self.references.get(key)

    async def report(self, replica: str, report: dict) -> None:
        self.reports[replica] = (time.monotonic(), report)

    async def forget(self, replica: str) -> None:
        self.reports.pop(replica, None)
        self._set_keys(replica, frozenset())

    async def health(self) -> dict:
        self._expire()
        return aggregate([report for _, report in sorted(self.reports.values(), key=lambda item: item[1]["pid"])])

    async def sync(self, replica: str, keys: list[str], frames: dict[str, bytes]) -> list[str]:
        """A replica's live session keys and the newest JPEG of those watched; returns the keys watched now."""
        self._expire()
        live = frozenset(keys)
        self._set_keys(replica, live)
        for key, jpeg in frames.items():
            if key in live:
                self.feeds.publish(key, jpeg)
        return [key for key in self.feeds.watched() if key in live]

    async def watch(self, key: str) -> dict:
        """``{"viewer": id}``, or ``{"status": 404 | 429, "message": ...}`` (an answer, not an exception: it
        crosses Ray as plain data)."""
        self._expire()
        try:
            return {"viewer": self.feeds.watch(key)}
        except ViewerRefused as exc:
            return {"status": exc.status, "message": str(exc)}

    async def unwatch(self, key: str, viewer: int) -> None:
        self.feeds.unwatch(key, viewer)

    async def next_frame(self, key: str, viewer: int, version: int, timeout: float):
        return await self.feeds.next_frame(key, viewer, version, timeout)

    def _set_keys(self, replica: str, keys: frozenset[str]) -> None:
        _, old = self.keys.pop(replica, (0.0, frozenset()))
        for key in old - keys:
            self.feeds.end(key)  # that session ended: its viewers stop
        for key in keys - old:
            self.feeds.open(key)
        if keys:
            self.keys[replica] = (time.monotonic(), keys)

    def _expire(self) -> None:
        """A replica that stopped reporting (announcing) has died: its sessions, counts and feeds are gone."""
        now = time.monotonic()
        for replica in [r for r, (t, _) in self.reports.items() if now - t > REPORT_TTL]:
            del self.reports[replica]
        for replica in [r for r, (t, _) in self.keys.items() if now - t > REPORT_TTL]:
            self._set_keys(replica, frozenset())


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=FRONT_REQUESTS)
@serve.ingress()
class Front:
    def __init__(self, registry, settings: ServeSettings, resolution: int) -> None:
        self.state = ServerState(settings=settings, references=RemoteReferences(registry), resolution=resolution,
                                 health=lambda: or_unavailable(registry.health.remote(), "health"),
                                 mjpeg_feed=RemoteFeeds(registry, FRONT_VIEWERS))

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="personalive-trt", docs_url=None, redoc_url=None)
        mount(app, self.state, websocket_path=None)
        return app


@serve.ingress()
class Animators:
    """One replica: ``settings.max_sessions`` animators created now, the WebSocket protocol on ``/``."""

    def __init__(self, animator_factory: Callable[[], object], settings: ServeSettings) -> None:
        self.registry = serve.get_deployment_handle("Registry", app_name=APP)
        self.replica = serve.get_replica_context().replica_id.unique_id
        pool = EnginePool.create(animator_factory, settings, reuse_failed=False)  # Ray replaces the replica
        context = ray.get_runtime_context()
        resources = {name: round(amount, 4) for name, amount in context.get_assigned_resources().items()}
        self.state = ServerState(settings=settings, references=RemoteReferences(self.registry),
                                 resolution=pool.engines[0].resolution, pool=pool, resources=resources,
                                 node=f"{socket.gethostname()}/{context.get_node_id()[:8]}")

    def record_routing_stats(self) -> dict:
        """Polled by Ray every ``ROUTING_STATS_PERIOD`` s for the router: a replica whose animator failed gets
        no new session while Ray's health checks (``check_health``) take it out."""
        return {FAILED_ANIMATORS: len(self.state.pool.failures)}

    def check_health(self) -> None:
        """Ray's health check: raises while an animator of this replica has failed (Ray then replaces it)."""
        failures = self.state.pool.failures
        if failures:
            raise AnimatorFailedError(f"{len(failures)} of {len(self.state.pool.engines)} animator(s) failed; "
                                      f"first: {failures[0]}")

    def __serve_build_asgi_app__(self) -> FastAPI:
        state, registry, replica = self.state, self.registry, self.replica

        async def report():
            await call(registry.report.remote(replica, replica_report(state)))
            await asyncio.sleep(REPORT_INTERVAL)

        @asynccontextmanager
        async def lifespan(app):
            state.reset_mjpeg()
            announcer = KeyAnnouncer(registry, replica, state.mjpeg)
            state.mjpeg.announce = announcer.announce
            tasks = [asyncio.create_task(keep_going(f"replica {replica}: health report", report)),
                     asyncio.create_task(keep_going(f"replica {replica}: MJPEG keys and frames", announcer.step))]
            yield
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await call(registry.forget.remote(replica))
            except REGISTRY_ERRORS as exc:  # its report and keys expire on their own (REPORT_TTL)
                log.info("replica %s: could not sign off at the registry (%s)", replica, type(exc).__name__)
            await run_in_threadpool(state.pool.close)

        app = FastAPI(title="personalive-trt animators", lifespan=lifespan, docs_url=None, redoc_url=None)
        mount(app, state, http=False, websocket_path=WEBSOCKET_PATH)
        app.add_middleware(FullPath)
        return app


async def keep_going(what: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step()`` until cancelled. A failing step (the registry restarting) is logged once, when it starts
    failing, and retried with back-off from ``RETRY_FIRST`` to ``RETRY_MAX`` s; the recovery is logged too."""
    delay, failing_since = RETRY_FIRST, None
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever broke, the loop must outlive it: the replica vanishes without it
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("%s failed (%s: %s); retrying with back-off until it works", what, type(exc).__name__,
                            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)
            continue
        if failing_since is not None:
            log.warning("%s works again after %.1f s", what, time.monotonic() - failing_since)
            delay, failing_since = RETRY_FIRST, None


class KeyAnnouncer:
    """An animator replica's side of the MJPEG feeds: tells the registry which sessions live here (at once when
    one starts or ends, else every ``SYNC_INTERVAL`` s, so a restarted registry learns them again) and pushes the
    newest JPEG of each session the registry says is watched (frames made while a push is in flight are
    skipped: viewers get the newest frame, never a backlog)."""

    def __init__(self, registry, replica: str, feeds: SessionFeeds) -> None:
        self.registry, self.replica, self.feeds = registry, replica, feeds
        self.watched: set[str] = set()
        self.sent: dict[str, int] = {}  # key -> version last pushed
        self.announced: frozenset[str] | None = None
        self.last_sync = 0.0

    async def step(self) -> None:
        feeds = self.feeds
        changed = feeds.changed  # taken first: a change made while this step runs wakes the next one
        fresh = self._fresh()
        wait = SYNC_INTERVAL - (time.monotonic() - self.last_sync)
        if not fresh and frozenset(feeds.feeds) == self.announced and wait > 0:
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except asyncio.TimeoutError:
                pass
            return
        await self.sync(fresh, CALL_TIMEOUT)

    async def announce(self) -> None:
        """The session keys now, at once (a session starting: its MJPEG URL must work when it is handed out).
        A registry that does not answer delays the start by ``ANNOUNCE_TIMEOUT`` at most; the loop retries."""
        try:
            await self.sync({}, ANNOUNCE_TIMEOUT)
        except REGISTRY_ERRORS as exc:
            log.info("replica %s: announcing a new session's key failed (%s); the MJPEG loop retries",
                     self.replica, type(exc).__name__)

    def _fresh(self) -> dict:
        """The watched feeds with a frame not pushed yet."""
        return {key: feed for key, feed in self.feeds.feeds.items()
                if key in self.watched and feed.jpeg is not None and feed.version != self.sent.get(key)}

    async def sync(self, fresh: dict, timeout: float) -> None:
        keys = frozenset(self.feeds.feeds)
        versions = {key: feed.version for key, feed in fresh.items()}
        self.watched = set(await call(self.registry.sync.remote(
            self.replica, sorted(keys), {key: feed.jpeg for key, feed in fresh.items()}), timeout))
        self.sent = {key: version for key, version in {**self.sent, **versions}.items() if key in keys}
        self.announced, self.last_sync = keys, time.monotonic()


class AnimatorFailedError(RuntimeError):
    """An animator replica's health check: one of its animators failed (Ray replaces the replica)."""


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


class DeployError(RuntimeError):
    """``serve --ray`` could not start: the cluster could not be joined, or the animator replicas failed to start
    (bad weights, engines, device...). One line with the cause."""


def serve_forever(animator_factory: Callable[[], object], settings: ServeSettings, options: ClusterOptions,
                  resolution: int, host: str, port: int, status: Callable[[str], None]) -> None:
    """Start (or join, with ``options.address``) Ray, deploy, and block until Ctrl-C or SIGTERM.

    Without an address a new local Ray instance is started (``address="local"``: never one left running) and
    shut down on exit; with one, only this app's two applications are deleted on exit.
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
