"""``personalive-trt serve``: a FastAPI app that animates a browser's camera over a WebSocket.

The pieces, each in its own module so that another server (several replicas, several GPUs) reuses them:

* :mod:`.settings` -- :class:`ServeSettings`, the limits;
* :mod:`.references` -- upload verification and the bounded reference store;
* :mod:`.pool` -- the animators, one worker thread each, leased to one session at a time;
* :mod:`.session` -- the WebSocket session protocol (messages, threads, back-pressure);
* :mod:`.routes` -- the page, the REST API, the MJPEG stream and the WebSocket route, on one router;
* :mod:`.state` -- what the routes and sessions of one process share;
* :mod:`.health` -- ``/api/health``, one report per animator process, summed;
* :mod:`.ray_app` -- the same routes and protocol as a Ray Serve application (``serve --ray``);
* :mod:`.launch` -- starting either one (``serve`` and ``python -m personalive_trt.web --echo``).

Safety: ``max_sessions`` animations at once (one animator each; others get ``busy``), uploads capped in
bytes and pixels and decoded before they are trusted, WebSocket messages capped in size (close code 1009),
malformed frames counted and skipped (too many in a row end the session: 1007), a failing animator or a
failing sender ends its session with 1011, a disconnect frees the session.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from personalive_trt.web.pool import AnimatorPool
from personalive_trt.web.references import ReferenceStore
from personalive_trt.web.routes import mount
from personalive_trt.web.settings import ServeSettings
from personalive_trt.web.state import ServerState

__all__ = ["ServeSettings", "build_app", "create_app"]


def build_app(state: ServerState, *, title: str = "personalive-trt", http: bool = True,
              websocket_path: str | None = "/api/ws",
              background: Sequence[Callable[[], Awaitable[None]]] = (),
              on_exit: Sequence[Callable[[], Awaitable[object]]] = ()) -> FastAPI:
    """The one way an app is built (``serve``, and each of the Ray app's deployments): the routes of
    :func:`~personalive_trt.web.routes.mount` on ``state``, and one lifespan.

    The lifespan starts a fresh local MJPEG broadcast (its events belong to the loop now running) and the
    ``background`` tasks; on the way out it cancels them, awaits each ``on_exit``, and ends the animator pool's
    worker threads (waiting for running steps, off the event loop)."""

    @asynccontextmanager
    async def lifespan(app):
        state.reset_mjpeg()
        tasks = [asyncio.create_task(task()) for task in background]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cleanup in on_exit:
            await cleanup()
        if state.pool is not None:
            await run_in_threadpool(state.pool.close)  # waits for running steps without freezing the loop

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    mount(app, state, http=http, websocket_path=websocket_path)
    return app


def create_app(animator_factory: Callable[[], object], settings: ServeSettings | None = None) -> FastAPI:
    """The single-process app; ``animator_factory()`` is called ``settings.max_sessions`` times, now.

    The animators are created eagerly so that bad weights fail ``serve`` at start, not at the first click.
    """
    settings = settings or ServeSettings()
    pool = AnimatorPool.create(animator_factory, settings)
    state = ServerState(settings=settings, pool=pool, references=ReferenceStore(settings.references_kept),
                        resolution=pool.slots[0].resolution)
    return build_app(state)
