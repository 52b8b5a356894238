"""The process's server: uvicorn, with a drain before its shutdown (`server/drain.py`), and an
exit with a non-zero status when the start fails or the engine dies (`server/engine_watch.py`).

uvicorn's own shutdown closes every WebSocket at once with 1012, in the middle of whatever answer
is being spoken. So the first SIGTERM (or Ctrl+C) starts a drain instead (`DrainingServer`), and
uvicorn's shutdown runs only when the drain is over. A second signal skips what is left of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from voxgate.server.drain import CLOSE_GRACE_S
from voxgate.server.engine_watch import EXIT_ENGINE_DEAD, EngineWatch

if TYPE_CHECKING:
    from voxgate.server.services import Services
    from voxgate.server.settings import Settings

log = logging.getLogger(__name__)

EXIT_START_FAILED = 3
"""The exit status when the start fails (uvicorn's own when a lifespan's start fails)."""
ENGINE_DEAD_GRACE_S = 2.0
"""After the engine died, the longest the server waits for live sessions to be told."""
WS_PROTOCOL = "websockets-sansio"
"""uvicorn's WebSocket implementation, named rather than "auto" (which falls back to wsproto
when `websockets` is missing): the receive bound below is this one's.

It has no queue-size setting (`ws_max_queue` is read only by the legacy "websockets" one): it
stops reading the socket as soon as one read of bytes (at most about 256 KB) has completed a
message, and reads again once the app has taken every message queued. So a client that
outpaces its session parks at most the messages of one read plus one partial message (under
`ws_max_size`) in the server; the rest waits in TCP buffers and, once those are full, in the
client (tests/unit/test_limits.py measures it). That holds for bytes as sent: with
permessage-deflate, one read of a few KB could hold dozens of messages that each inflate to
`ws_max_size` (and inflating runs on the event loop), so the server declines compression."""


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its shutdown: the first SIGTERM/SIGINT runs `drain()` while
    the server keeps serving (and refusing new work), then uvicorn shuts down as usual.

    It also ends, with `EXIT_START_FAILED`, when a start in the background fails
    (`start_failed()`), and when the engine dies (`engine_watch()` returns the app's
    `EngineWatch`):
    once the live sessions have been told and closed (or after `ENGINE_DEAD_GRACE_S`), it
    shuts down and `exit_status` becomes `EXIT_ENGINE_DEAD`; a watchdog ends the process if
    the shutdown itself hangs.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]],
        engine_watch: Callable[[], EngineWatch | None] = lambda: None,
        sessions: Callable[[], int] = lambda: 0,
        exit_deadline_s: float = 15.0,
        start_failed: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_requested = False
        self._draining: asyncio.Task[None] | None = None
        self._engine_watch = engine_watch
        self._sessions = sessions
        self._exit_deadline_s = exit_deadline_s
        self._engine_dead_at: float | None = None
        self._start_failed = start_failed
        self.exit_status = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it may only set flags. `on_tick` (uvicorn's 100 ms loop) acts.
        if self._drain_requested:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._drain_requested = True
        self._captured_signals.append(sig)  # uvicorn re-raises it once it has shut down

    async def on_tick(self, counter: int) -> bool:
        self._end_if_engine_died()
        if self._start_failed() and not self.should_exit:
            log.error("exiting with status %d: the server could not start", EXIT_START_FAILED)
            self.exit_status = EXIT_START_FAILED
            self.should_exit = True
        if self._drain_requested and self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        if self._draining is not None and self._draining.done() and not self.should_exit:
            if not self._draining.cancelled() and (error := self._draining.exception()):
                log.error("the drain failed; shutting down now", exc_info=error)
            self.should_exit = True
        return await super().on_tick(counter)

    def _end_if_engine_died(self) -> None:
        watch = self._engine_watch()
        if watch is None or not watch.dead or self.should_exit:
            return
        now = asyncio.get_running_loop().time()
        if self._engine_dead_at is None:
            self._engine_dead_at = now
            self.exit_status = EXIT_ENGINE_DEAD
            watch.arm_exit(self._exit_deadline_s)
        # uvicorn's shutdown closes sockets with 1012 at once: let the sessions send their
        # `engine_unavailable` and close 1011 first.
        if self._sessions() == 0 or now - self._engine_dead_at >= ENGINE_DEAD_GRACE_S:
            log.error("exiting with status %d: the engine is dead", EXIT_ENGINE_DEAD)
            self.should_exit = True

    async def shutdown(self, sockets: list | None = None) -> None:
        if self._draining is not None and not self._draining.done():
            self._draining.cancel()  # a second signal cut the drain short
        await super().shutdown(sockets=sockets)


def serve(app: FastAPI, settings: Settings) -> int:
    """Run `app` with uvicorn until SIGTERM or SIGINT (draining before the shutdown), or until
    the engine dies; return the process's exit status."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # the root logger's handler (`logs.configure`) formats uvicorn's too
        # The transport refuses a message over the event cap before holding it whole (1009),
        # and stops reading a socket while the app has not taken its messages (WS_PROTOCOL).
        ws=WS_PROTOCOL,
        ws_max_size=settings.realtime.max_event_bytes,
        ws_per_message_deflate=False,  # see WS_PROTOCOL
        ws_ping_interval=settings.realtime.ping_interval_s,
        ws_ping_timeout=settings.realtime.ping_interval_s,
        # After the drain, only what outlived its deadline is left: cut it short.
        timeout_graceful_shutdown=CLOSE_GRACE_S,
    )

    def services() -> Services | None:
        return getattr(app.state, "services", None)  # None: the lifespan never finished

    def engine_watch() -> EngineWatch | None:
        running = services()
        return None if running is None else running.engine_watch

    def sessions() -> int:
        running = services()
        return 0 if running is None else running.sessions.active

    async def drain() -> None:
        if (running := services()) is not None:
            await running.drain.run()

    server = DrainingServer(
        config,
        drain,
        engine_watch,
        sessions,
        exit_deadline_s=settings.engine_exit_deadline_s,
        start_failed=lambda: getattr(app.state, "start_failed", False),
    )
    server.run()
    return server.exit_status
