"""The server's start, stage by stage: the stage under way and since when, and how long each
finished stage took. The lifespan and the backbone's start move it on (`begin`); each finished
stage is logged with its duration, and `/ready` shows where the start is.

    STARTING --ready()--> READY
    STARTING --failed()--> FAILED

A stage begun again later (the lifespan and a backbone both verify model files) adds its new
time to what it took before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from voxgate.model.startup import StartupStage

log = logging.getLogger(__name__)


class StartupState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StartupSnapshot:
    """Where the start was when the snapshot was taken."""

    state: StartupState
    stage: StartupStage | None
    """The stage under way, or the one a failed start stopped in (None: no stage begun yet, or
    the start is over)."""
    stage_elapsed_s: float
    stages_done: Mapping[StartupStage, float]
    """Seconds each finished stage took, in the order they were first begun."""


class StartupTracker:
    """Where the start is; kept in `app.state.startup`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.state = StartupState.STARTING
        self._began = clock()
        self._stage: StartupStage | None = None
        self._stage_began = self._began
        self._done: dict[StartupStage, float] = {}

    def begin(self, stage: StartupStage) -> None:
        """The start has moved on to `stage` (beginning the stage under way changes nothing)."""
        self._expect_starting(f"begin {stage}")
        if stage is self._stage:
            return
        self._end_stage()
        self._stage, self._stage_began = stage, self._clock()

    def ready(self) -> float:
        """The start is over; return how long it took, in seconds."""
        self._expect_starting("become ready")
        self._end_stage()
        self.state = StartupState.READY
        return self._clock() - self._began

    def failed(self) -> None:
        """The start has stopped with an error (the caller lets the error go on); the stage
        under way stays the one it stopped in."""
        self._expect_starting("fail")
        self.state = StartupState.FAILED
        log.error(
            "startup failed during %s, %.1f s after the start began",
            self._stage or "its first stage",
            self._clock() - self._began,
        )

    def snapshot(self) -> StartupSnapshot:
        now = self._clock()
        return StartupSnapshot(
            state=self.state,
            stage=self._stage,
            stage_elapsed_s=0.0 if self._stage is None else now - self._stage_began,
            stages_done=MappingProxyType(dict(self._done)),
        )

    def _end_stage(self) -> None:
        if self._stage is None:
            return
        took = self._clock() - self._stage_began
        self._done[self._stage] = self._done.get(self._stage, 0.0) + took
        log.info("%s in %.1f s", self._stage.done, took)
        self._stage = None

    def _expect_starting(self, what: str) -> None:
        if self.state is not StartupState.STARTING:
            raise RuntimeError(f"the start cannot {what}: it is {self.state}")


OPEN_WHILE_STARTING = frozenset({"/health", "/ready"})
"""The probes answer while the server starts; every other route waits for the start."""
STARTING_RETRY_AFTER_S = 5


class StartingGate:
    """While the start is under way (`app.state.services` not there yet), every route but the
    probes answers 503 `server_starting` with `Retry-After`, in OpenAI's error shape; a
    WebSocket handshake gets the same as an HTTP response, before it is accepted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in OPEN_WHILE_STARTING
            or hasattr(scope["app"].state, "services")
        ):
            await self.app(scope, receive, send)
            return
        failed = getattr(scope["app"].state, "start_failed", False)
        message = (
            "the server could not start and is shutting down"
            if failed
            else "the server is starting; GET /ready says which stage it is in"
        )
        body = {"error": {"message": message, "type": "server_error", "param": None}}
        body["error"]["code"] = "server_starting"
        response = JSONResponse(body, 503, headers={"Retry-After": str(STARTING_RETRY_AFTER_S)})
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        try:
            await websocket.send_denial_response(response)
        except RuntimeError:  # a server without the denial extension: refuse the handshake
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(1013)
