"""How the parts of a session (`Responder`, `TurnTaker`) reach the client and run work.

The session owns its bounded event queue and the plumbing around it; `Outbox` hands its parts
what they use of it, so they depend on these few calls and not on the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from voxgate.streaming.events import SessionEvent


@dataclass(frozen=True, slots=True)
class Outbox:
    """The session's plumbing, as its parts see it."""

    emit: Callable[[SessionEvent], Awaitable[None]]
    """Queue an event for the client, or keep it with its response while that is held."""
    put: Callable[[SessionEvent], Awaitable[None]]
    """Queue an event as it is (a held event being released); waits for room."""
    purge: Callable[[Callable[[SessionEvent], bool]], list[SessionEvent]]
    """Take back the queued events a test picks (in order)."""
    note_sent_audio: Callable[[SessionEvent], None]
    """Tell the echo guard about output audio queued with `put`."""
    spawn: Callable[..., asyncio.Task[Any]]
    """Run a coroutine as a task of the session (ended by `close`; a failure is reported)."""
