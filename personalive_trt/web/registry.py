"""The Ray app's registry: one replica that holds what every replica shares, and the clients that reach it.

``Registry`` (a deployment of the ``personalive`` application, one replica) holds the uploaded references
(verified, framed images by id: an upload through any front replica starts or swaps a session on any animator
replica), each animator replica's health report (pushed every 0.5 s; a report older than :data:`REPORT_TTL` s is
dropped, so a dead replica's sessions leave every count within seconds) and each live session's MJPEG feed by key
(:mod:`.mjpeg`). The animator replicas announce their sessions' keys at least every :data:`SYNC_INTERVAL` s, and at
once when one starts (before its ``started`` message, so its URL works when handed out) or ends
(:class:`KeyAnnouncer`); they push a session's output JPEGs only while the registry says someone watches it. A
replica that stops announcing has died: its sessions' viewers stop after :data:`REPORT_TTL` s.

Every Registry method is ``async``: Ray Serve runs a deployment's plain methods on a thread pool, where concurrent
calls raced on its dicts (``health()`` iterated what ``report()`` changed) and set the MJPEG viewers'
``asyncio.Event`` from a thread that is not the loop's. Async methods all run on the replica's one event loop and
interleave only at an ``await``, and no method awaits between reading and writing its state, so no lock is needed
(a lock would not have made ``Event.set`` from a thread safe either).

The replicas' report and MJPEG loops survive a Registry that dies (Ray restarts it within about
:data:`REGISTRY_HEALTH_CHECK_PERIOD` s plus a replica's start): each call has a timeout, a failure is logged once
and retried with back-off (:func:`keep_going`), and the new Registry hears every replica's report and session keys
again within a second or two. Uploaded references are lost with it (clients upload again); sessions already running
keep their reference.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from personalive_trt.web.health import aggregate
from personalive_trt.web.mjpeg import ENDED, SessionFeeds, Viewer, ViewerRefused
from personalive_trt.web.references import ReferenceStore
from personalive_trt.web.state import ClusterUnavailable

log = logging.getLogger("personalive_trt.web")

REPORT_TTL = 3.0  # a report (or key announcement) older than this is a replica that has gone
SYNC_INTERVAL = 1.0  # longest gap between a replica's announcements of its sessions' keys (and of new viewers)
CALL_TIMEOUT = 5.0  # seconds a registry call may take (a long poll: this beyond its own timeout)
ANNOUNCE_TIMEOUT = 1.0  # seconds a session's start waits for its key to reach the registry (then the loop retries)
RETRY_FIRST, RETRY_MAX = 0.2, 2.0  # back-off of a replica's loops while the registry does not answer (seconds)
#: What a registry call raises when the registry is down or restarting (or the call timed out).
REGISTRY_ERRORS = (RayError, RayServeException, asyncio.TimeoutError)


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
                return await call(self.registry.next_frame.remote(key, viewer, version, timeout),
                                  timeout + CALL_TIMEOUT)
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
