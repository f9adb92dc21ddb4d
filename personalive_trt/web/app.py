"""``personalive-trt serve``: a FastAPI app that animates a browser's camera over a WebSocket.

The pieces, each in its own module so that another server (several replicas, several GPUs) reuses them:

* :mod:`.settings` -- :class:`ServeSettings`, the limits;
* :mod:`.references` -- upload verification and the bounded reference store;
* :mod:`.pool` -- the animators, one worker thread each, leased to one session at a time;
* :mod:`.session` -- the WebSocket session protocol (messages, threads, back-pressure, per-client limits);
* :mod:`.frames`, :mod:`.image_header` -- driving frames: size read from the header, then decoded and framed;
* :mod:`.routes` -- the page, the REST API, the MJPEG stream and the WebSocket route, on one router;
* :mod:`.auth` -- the token that guards every route but ``/api/health`` when the server is exposed;
* :mod:`.mjpeg` -- each session's own MJPEG stream, by its unguessable key;
* :mod:`.state` -- what the routes and sessions of one process share;
* :mod:`.health` -- ``/api/health``, one report per animator process, summed;
* :mod:`.ray_app`, :mod:`.registry` -- the same routes and protocol as a Ray Serve application (``serve --ray``);
* :mod:`.listening` -- which addresses a server's process tree listens on (tests, ``scripts/abuse.py``).

Safety: ``max_sessions`` animations at once (one animator each; others get ``busy``), uploads capped in
bytes and pixels and decoded before they are trusted, WebSocket messages capped in size (close code 1009),
driving frames checked by their header before they are decoded, malformed frames counted and skipped (too
many in a row end the session: 1007), control messages rate-limited (1008) and coalesced in the worker, a
connection without driving frames closed (4408), a failing animator or a failing sender ends its session with
1011, a disconnect frees the session; each session's MJPEG viewers bounded and ended with it; with a token set,
nothing but ``/api/health`` answers without it.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from personalive_trt.web.pool import EnginePool
from personalive_trt.web.references import ReferenceStore
from personalive_trt.web.routes import mount
from personalive_trt.web.settings import ServeSettings
from personalive_trt.web.state import ServerState

__all__ = ["ServeSettings", "create_app"]


def create_app(animator_factory: Callable[[], object], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app; ``animator_factory()`` is called ``settings.max_sessions`` times, now.

    The animators are created eagerly so that bad weights fail ``serve`` at start, not at the first click.
    """
    settings = settings or ServeSettings()
    pool = EnginePool.create(animator_factory, settings)
    state = ServerState(settings=settings, pool=pool, references=ReferenceStore(settings.references_kept),
                        resolution=pool.engines[0].resolution)

    @asynccontextmanager
    async def lifespan(app):
        state.reset_mjpeg()
        yield
        await run_in_threadpool(pool.close)  # waits for running steps without freezing the loop

    app = FastAPI(title="personalive-trt", lifespan=lifespan, docs_url=None, redoc_url=None)
    mount(app, state)
    return app
