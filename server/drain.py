"""Graceful shutdown's state: stop taking new work, let live turns finish, then close.

    SERVING --begin()--> DRAINING --sessions and REST requests done, or the deadline--> DRAINED

The first SIGTERM (or Ctrl+C) begins the drain (`server/draining.py` runs uvicorn around it).
While DRAINING:
- new realtime sessions get an `error` (`server_shutting_down`) and close 1013 (try again later,
  elsewhere); new REST requests get 503 with `Retry-After`; `/ready` answers 503, so a load
  balancer sends new clients to other replicas. `/health` stays 200: the process is fine.
- each live session closes with 1001 (going away) at its first quiet moment: no response running,
  no committed turn waiting for its answer, the user not in the middle of a turn (`TurnActivity`,
  from the events its writer sent). A turn under way is answered first, up to the deadline
  (`drain_deadline_s`); at the deadline every session still open closes with 1001 whatever it is
  doing. REST requests in flight run to their end, up to the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import StrEnum
from typing import TYPE_CHECKING

from voxgate.server import metrics
from voxgate.streaming.events import (
    InputCleared,
    InputCommitted,
    ItemDone,
    ResponseFinished,
    ResponseStarted,
    SessionEvent,
    SpeechStartedEvent,
)

if TYPE_CHECKING:
    from voxgate.streaming.config import TurnDetection
    from voxgate.streaming.slots import Slots

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_GRACE_S = 5.0
"""After the deadline, time for the last sessions' close handshakes before shutdown goes on."""


class DrainState(StrEnum):
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"


class Drain:
    """The server's shutdown state; `begin()` starts the drain, `run()` waits it out."""

    def __init__(self, deadline_s: float, sessions: Slots, rest: Slots) -> None:
        self.deadline_s = deadline_s
        self.state = DrainState.SERVING
        self._sessions = sessions
        self._rest = rest
        self._started = asyncio.Event()
        self._deadline = 0.0
        metrics.DRAINING.set(0)

    @property
    def draining(self) -> bool:
        return self.state is not DrainState.SERVING

    def begin(self) -> None:
        if self.state is not DrainState.SERVING:
            return
        self.state = DrainState.DRAINING
        self._deadline = asyncio.get_running_loop().time() + self.deadline_s
        self._started.set()
        metrics.DRAINING.set(1)
        log.info(
            "draining: refusing new sessions and requests; %d realtime sessions and %d REST "
            "requests may finish within %.0f s",
            self._sessions.active,
            self._rest.active,
            self.deadline_s,
        )

    async def run(self) -> None:
        """Drain: begin, then wait until every session and REST request is done (sessions
        close themselves by the deadline; see `until_quiet`)."""
        self.begin()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._deadline + CLOSE_GRACE_S):
                await self._sessions.wait_empty()
                await self._rest.wait_empty()
        self.state = DrainState.DRAINED
        log.info(
            "drained: %d realtime sessions and %d REST requests left",
            self._sessions.active,
            self._rest.active,
        )

    async def until_quiet(self, quiet: asyncio.Event) -> None:
        """Return once the drain has begun and `quiet` is set, or at the drain's deadline."""
        await self._started.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._deadline):
                await quiet.wait()


class TurnActivity:
    """Whether a realtime session is between turns, from the events its writer has sent.

    Busy: a response is running, or a committed user turn is still to be answered (its
    transcript is not known yet, or its answer has not started), or the user is speaking.
    """

    def __init__(self) -> None:
        self.quiet = asyncio.Event()
        self.quiet.set()
        self._speaking = False
        self._running: set[str] = set()
        self._unanswered: set[str] = set()

    def observe(self, event: SessionEvent, detection: TurnDetection | None) -> None:
        """`detection` is the session's turn detection when the event was sent."""
        match event:
            case SpeechStartedEvent():
                self._speaking = True
                if detection is not None and detection.interrupt_response:
                    # The session drops a turn the user talks over: it is answered with this one.
                    self._unanswered.clear()
            case InputCommitted(item_id=item_id):
                self._speaking = False
                if detection is not None and detection.create_response:
                    self._unanswered.add(item_id)
            case InputCleared():
                self._speaking = False
            case ItemDone(item=item) if item.audio and not (item.transcript or "").strip():
                self._unanswered.discard(item.id)  # no words: the session does not answer it
            case ResponseStarted(response=response):
                self._running.add(response.id)
                if response.in_conversation:
                    self._unanswered.clear()  # it answers everything committed so far
            case ResponseFinished(response=response):
                self._running.discard(response.id)
        if self._speaking or self._running or self._unanswered:
            self.quiet.clear()
        else:
            self.quiet.set()
