"""What one server process shares between its routes and its WebSocket sessions: settings, the animator pool,
the reference store, the counters, the access check and the sessions' MJPEG feeds. Routes and sessions read it
from ``app.state.server``, so any FastAPI app that sets it (see :func:`personalive_trt.web.routes.mount`)
serves the same API.

A process without animators (the Ray app's front, which serves the page, uploads and health while the
animators live in other replicas) has ``pool=None`` and gets its health, references and MJPEG frames from the
cluster through the same small interfaces: ``health()``, ``references.add/get``, ``mjpeg.open_viewer``.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from personalive_trt.web.auth import AccessControl
from personalive_trt.web.mjpeg import SessionFeeds
from personalive_trt.web.pool import AnimatorPool
from personalive_trt.web.settings import ServeSettings

class ClusterUnavailable(RuntimeError):
    """A piece of state this process reads from elsewhere (the Ray app's registry) did not answer: the request
    gets 503 with this one line, the process keeps serving."""


COUNTERS = ("sessions", "connections", "busy_refusals", "refused_connections", "oversize_messages", "bad_messages",
            "idle_closes", "rate_limited")


@dataclass
class ServerState:
    settings: ServeSettings
    references: object  # async add(image) -> id, async get(id) -> image | None (ReferenceStore or a remote one)
    resolution: int
    pool: AnimatorPool | None = None  # None in a process whose animators run elsewhere (the Ray app's front)
    health: Callable[[], Awaitable[dict]] | None = None  # default: this process's own report
    node: str | None = None  # where this process runs (default: the host name)
    resources: dict | None = None  # what the cluster granted this replica (Ray: num_cpus, num_gpus)
    mjpeg_feed: object | None = None  # has open_viewer(key) (and open/end/publish where sessions run); default:
    # a local SessionFeeds
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    access: AccessControl = field(init=False)

    def __post_init__(self) -> None:
        self.access = AccessControl(self.settings.token)

    @property
    def mjpeg(self):
        if self.mjpeg_feed is None:  # apps driven without their lifespan (plain TestClient calls)
            self.mjpeg_feed = SessionFeeds(self.settings.max_viewers)
        return self.mjpeg_feed

    def reset_mjpeg(self) -> None:
        """Fresh local feeds for a (re)started app: their events belong to the event loop now running. Feeds from
        elsewhere (the Ray app's front reads the registry's) are kept."""
        if self.mjpeg_feed is None or isinstance(self.mjpeg_feed, SessionFeeds):
            self.mjpeg_feed = SessionFeeds(self.settings.max_viewers)
