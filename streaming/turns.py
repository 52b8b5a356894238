"""Turn-taking input side: the bounded input audio buffer and the VAD-driven turn detector.

`InputAudioBuffer` holds the 16 kHz audio appended since the last commit or clear. Positions are
counted in samples from the start of the session's input stream, so the VAD's millisecond times
and the buffer agree. `TurnDetector` runs the VAD over new audio and keeps the buffer trimmed to
the prefix padding while nobody speaks, so silence does not pile up.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming import audio
from voxgate.streaming.echo import EchoGuard
from voxgate.streaming.vad import (
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    VadParams,
    VadState,
    VadStateMachine,
)

ARRIVALS_KEPT = 512
"""Append arrival times remembered to date the end of speech (~10-50 s of audio)."""


class InputBufferFull(Exception):
    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"the input audio buffer holds at most {max_seconds:g} s; commit or clear")


def ms_to_samples(ms: int) -> int:
    return audio.ms_to_samples(ms, INPUT_SAMPLE_RATE)


def samples_to_ms(n: int) -> int:
    return audio.samples_to_ms(n, INPUT_SAMPLE_RATE)


class InputAudioBuffer:
    """Audio appended since the last commit/clear, bounded by `max_seconds`."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self._max_samples = int(max_seconds * INPUT_SAMPLE_RATE)
        self._chunks: list[np.ndarray] = []
        self._size = 0
        self.start = 0
        """Stream position (in samples) of the first buffered sample."""
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)

    @property
    def end(self) -> int:
        """Stream position just past the last buffered sample."""
        return self.start + self._size

    @property
    def duration_ms(self) -> int:
        return samples_to_ms(self._size)

    def has_room(self, n: int) -> bool:
        return self._size + n <= self._max_samples

    def append(self, samples: np.ndarray, arrived_at: float | None = None) -> None:
        """Add audio; `arrived_at` is when its message came off the socket (default: now)."""
        if not self.has_room(len(samples)):
            raise InputBufferFull(self.max_seconds)
        if len(samples):
            self._chunks.append(samples)
            self._size += len(samples)
            self._arrivals.append(
                (self.end, time.monotonic() if arrived_at is None else arrived_at)
            )

    def arrival_time(self, position: int) -> float | None:
        """Monotonic time the sample at stream `position` arrived (None if too old)."""
        for end, at in self._arrivals:
            if end > position:
                return at
        return None

    def fits(self, n: int) -> bool:
        """Whether `n` samples fit at all, even in an empty buffer."""
        return n <= self._max_samples

    def peek(self, end: int) -> np.ndarray:
        """A copy of the audio before stream position `end`, left in the buffer."""
        buffered = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return buffered[: min(max(end - self.start, 0), self._size)].copy()

    def take(self, end: int | None = None) -> np.ndarray:
        """Remove and return the audio before stream position `end` (default: everything)."""
        buffered = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        cut = self._size if end is None else min(max(end - self.start, 0), self._size)
        kept = buffered[cut:].copy()
        self._chunks = [kept] if len(kept) else []
        self._size -= cut
        self.start += cut
        return buffered[:cut]

    def drop_before(self, position: int) -> None:
        """Forget audio before stream `position` (used to keep only the prefix padding)."""
        cut = min(max(position - self.start, 0), self._size)
        if cut == 0:
            return
        kept = np.concatenate(self._chunks)[cut:]
        self._chunks = [kept] if len(kept) else []
        self._size -= cut
        self.start += cut

    def clear(self) -> None:
        self.take()


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The VAD closed a turn: `audio` is the committed buffer."""

    audio: np.ndarray
    audio_end_ms: int
    speech_end_at: float | None
    """Monotonic arrival time of the last voiced audio (the start of turn latency)."""


@dataclass(frozen=True, slots=True)
class TurnMayEnd:
    """The speaker has paused long enough that the turn probably ends here (not yet certain):
    a chance to start on the answer early. `audio` is the turn so far (a copy)."""

    audio: np.ndarray
    audio_end_ms: int
    speech_end_at: float | None


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Speech came back after a TurnMayEnd: the turn goes on; anything started early is void."""


TurnEvent = SpeechStarted | SpeechStopped | TurnEnded | TurnMayEnd | SpeechResumed


class TurnDetector:
    """Server VAD over the input buffer. `feed` does the ONNX work: call it off the event loop."""

    def __init__(self, vad: SileroVad, params: VadParams, buffer: InputAudioBuffer) -> None:
        self._vad = vad
        self._machine = VadStateMachine(params)
        self._params = params
        self._buffer = buffer
        self.echo: EchoGuard | None = None
        """Removes the agent's voice from the input before the VAD hears it."""
        self.early_ms: int | None = None
        """Silence after which a TurnMayEnd is reported (None: never)."""
        self.restart()

    def set_thresholds(
        self, *, min_speech_ms: int | None = None, silence_duration_ms: int | None = None
    ) -> None:
        """Tune the VAD live (see `VadStateMachine.set_thresholds`); they outlast `restart`.
        Safe while `feed` runs in a thread: each window reads them once."""
        self._machine.set_thresholds(
            min_speech_ms=min_speech_ms, silence_duration_ms=silence_duration_ms
        )

    def restart(self) -> None:
        """Start listening afresh from the buffer's end (after a commit, or when switched on)."""
        self._vad.reset()
        self._machine.reset()
        # The VAD counts time from its own start; map it onto the session's input stream.
        self._origin = self._buffer.end
        self._origin_ms = samples_to_ms(self._origin)
        self._consumed = 0  # samples the VAD has turned into windows
        self._may_end = False  # a TurnMayEnd was reported for the current pause

    @property
    def speaking(self) -> bool:
        return self._machine.state in (VadState.SPEAKING, VadState.STOPPING)

    def feed(self, samples: np.ndarray, arrived_at: float | None = None) -> list[TurnEvent]:
        """Append `samples` to the buffer and return the turn events they complete.

        A turn that would overflow the buffer is ended first (a forced end of turn), so a long
        monologue is still answered instead of refused.
        """
        if not self._buffer.fits(len(samples)):
            raise InputBufferFull(self._buffer.max_seconds)  # refused whole, nothing changed
        events: list[TurnEvent] = []
        if not self._buffer.has_room(len(samples)):
            if (stopped := self._machine.force_stop()) is not None:
                events += self._end_turn(stopped, self._buffer.end)
            else:  # silence or a start not yet confirmed: nothing worth keeping
                self._buffer.drop_before(self._buffer.end)
        if self.echo is not None:
            samples = self.echo.clean(samples, self._buffer.end)
        self._buffer.append(samples, arrived_at)
        for prob in self._vad.probabilities(samples):
            self._consumed += SileroVad.WINDOW
            was_pausing = self._machine.state == VadState.STOPPING
            match self._machine.step(float(prob)):
                case SpeechStarted(audio_start_ms=start_ms):
                    started = SpeechStarted(self._origin_ms + start_ms)
                    self._buffer.drop_before(ms_to_samples(started.audio_start_ms))
                    events.append(started)
                case SpeechStopped() as stopped:
                    # The turn ends with the window that confirmed the stop; the audio after it
                    # (in this append) belongs to what comes next, as it would in a later append.
                    events += self._end_turn(stopped, self._origin + self._consumed)
                case None:
                    pass
            events += self._pause_events(was_pausing)
        if self._machine.state == VadState.QUIET:
            # Nobody speaks: keep only what a future turn's prefix padding may need.
            padding = ms_to_samples(self._params.prefix_padding_ms)
            self._buffer.drop_before(self._origin + self._consumed - padding)
        return events

    def _pause_events(self, was_pausing: bool) -> list[TurnEvent]:
        state = self._machine.state
        if state == VadState.SPEAKING and was_pausing and self._may_end:
            self._may_end = False
            return [SpeechResumed()]
        if state != VadState.STOPPING or self._may_end or self.early_ms is None:
            return []
        if self._machine.silence_ms < self.early_ms:
            return []
        self._may_end = True
        end_ms = self._origin_ms + self._machine.position_ms - self._machine.silence_ms
        arrival = self._buffer.arrival_time(max(ms_to_samples(end_ms) - 1, 0))
        turn = self._buffer.peek(self._origin + self._consumed)
        return [TurnMayEnd(turn, end_ms, arrival)]

    def end_turn_now(self) -> list[TurnEvent]:
        """End the turn at once (semantic end of turn: the thought is complete)."""
        if (stopped := self._machine.force_stop()) is None:
            return []
        return self._end_turn(stopped, self._origin + self._consumed)

    def _end_turn(self, stopped: SpeechStopped, position: int) -> list[TurnEvent]:
        """Close the turn: commit the buffered audio before stream `position`."""
        self._may_end = False
        end_ms = self._origin_ms + stopped.audio_end_ms
        arrival = self._buffer.arrival_time(max(ms_to_samples(end_ms) - 1, 0))
        return [SpeechStopped(end_ms), TurnEnded(self._buffer.take(position), end_ms, arrival)]
