"""Driving a `RealtimeSession` directly, as the server would: client audio cut into appends, and
the session's events read as the server's writer reads them (the `make` fixture that starts
such sessions is in conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming import audio
from voxgate.streaming.audio import AudioFormat, StreamResampler
from voxgate.streaming.config import TurnDetection
from voxgate.streaming.events import OutputAudioDelta, OutputTextDelta, SessionEvent
from voxgate.streaming.session import RealtimeSession

EVENT_TIMEOUT_S = 10.0
LEAD_S = 0.3
"""Silence before the speech of a turn."""
TAIL_S = 1.0
"""Silence after it: long enough for the default 500 ms end of turn."""
CHUNK_MS = (20, 40, 100, 60)
"""Append sizes, cycled: what clients send."""
# The base behaviour: plain silence-based turns (the turn-taking extensions have their own tests).
SERVER_VAD = TurnDetection(speculative_start_ms=None, min_interruption_ms=0, echo_guard=False)

SessionMaker = Callable[..., Any]
"""`make(backbone, limits=None, **config)` -> (a started session, its `Events`)."""


# --- audio ----------------------------------------------------------------------------------


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * INPUT_SAMPLE_RATE), np.float32)


def to_wire(samples: np.ndarray, fmt: AudioFormat = AudioFormat.PCM) -> bytes:
    """16 kHz float32 -> the client's bytes (24 kHz pcm16 by default)."""
    resampler = StreamResampler(INPUT_SAMPLE_RATE, fmt.sample_rate)
    return audio.encode(np.concatenate([resampler.process(samples), resampler.flush()]), fmt)


def pieces(data: bytes, chunk_ms: Iterable[int] = CHUNK_MS, fmt=AudioFormat.PCM) -> list[bytes]:
    """`data` cut into appends of the given durations, cycled."""
    sizes = itertools.cycle(
        [audio.ms_to_samples(ms, fmt.sample_rate) * fmt.bytes_per_sample for ms in chunk_ms]
    )
    out, start = [], 0
    while start < len(data):
        size = next(sizes)
        out.append(data[start : start + size])
        start += size
    return out


async def feed(session: RealtimeSession, samples: np.ndarray, chunk_ms=CHUNK_MS) -> None:
    for piece in pieces(to_wire(samples), chunk_ms):
        await session.append_audio(piece)


def turn(speech: np.ndarray) -> np.ndarray:
    return np.concatenate([silence(LEAD_S), speech, silence(TAIL_S)])


# --- the session's events -------------------------------------------------------------------


class Events:
    """Reads a session's events as the server's writer would, keeping what it read."""

    def __init__(self, session: RealtimeSession) -> None:
        self._queue = session.events
        self.seen: list[SessionEvent] = []

    async def next(self) -> SessionEvent:
        event = await asyncio.wait_for(self._queue.get(), EVENT_TIMEOUT_S)
        self.seen.append(event)
        return event

    async def until(self, kind: type, limit: int = 5000) -> list[SessionEvent]:
        """Events up to and including the first of `kind`."""
        got: list[SessionEvent] = []
        for _ in range(limit):
            got.append(event := await self.next())
            if isinstance(event, kind):
                return got
        raise AssertionError(f"no {kind.__name__} in {limit} events: {kinds(got)[-20:]}")

    def ready(self) -> list[SessionEvent]:
        """What the session has queued so far (without waiting)."""
        got = []
        while not self._queue.empty():
            got.append(self._queue.get_nowait())
        self.seen += got
        return got


def kinds(events: Sequence[SessionEvent]) -> list[str]:
    """Event class names, with runs of deltas collapsed into one "deltas"."""
    names = [
        "deltas" if isinstance(e, OutputTextDelta | OutputAudioDelta) else type(e).__name__
        for e in events
    ]
    return [name for name, _ in itertools.groupby(names)]


def only(events: Sequence[SessionEvent], kind: type) -> Any:
    (event,) = [e for e in events if isinstance(e, kind)]
    return event


def of(events: Sequence[SessionEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]
