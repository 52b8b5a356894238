"""What the feedback tests capture and the clock they move (plain helpers; the fixtures that
use them are in `feedback_fixtures.py`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from voxgate.model.types import Role
from voxgate.server.feedback_types import (
    AnswerAudio,
    CapturedResponse,
    ContextMessage,
    Outcome,
    Regime,
)

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
AUDIO_RATE = 24_000


class Clock:
    """The store's clock: it says `now` until the test moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


CONTEXT = (
    ContextMessage(Role.SYSTEM, "Be brief."),
    ContextMessage(Role.USER, "What is the capital of France?"),
)


def tone(ms: int) -> AnswerAudio:
    """`ms` of 16-bit audio at `AUDIO_RATE` (a ramp, so that cut audio is recognisable)."""
    samples = AUDIO_RATE * ms // 1000
    return AnswerAudio(
        b"".join((i % 30000).to_bytes(2, "little", signed=True) for i in range(samples)),
        AUDIO_RATE,
    )


def captured(response_id: str, session_id: str = "sess_a", **changes: Any) -> CapturedResponse:
    """A spoken realtime answer with its audio; `changes` replace any field."""
    fields: dict[str, Any] = {
        "response_id": response_id,
        "session_id": session_id,
        "regime": Regime.REALTIME,
        "model": "voxgate-cascade",
        "context": CONTEXT,
        "text": f"Paris ({response_id}).",
        "voice": "joe",
        "audio_ms": 200,
        "timings": {"asr": 0.12, "turn_latency": 0.61},
        "outcome": Outcome.COMPLETED,
        "audio": tone(200),
    }
    return CapturedResponse(**(fields | changes))
