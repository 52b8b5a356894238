"""Echo guard: take the agent's own voice back out of the microphone input.

A client that plays the answer on a speaker without an echo canceller of its own sends the
agent's voice back to us; the VAD would hear "speech" and the agent would interrupt itself. The
server knows exactly what it sent, so it can subtract it: the reference is the audio it sent,
laid out on the input stream's timeline from when it was sent (the client plays a response's
chunks back to back), and the echo is that reference, delayed (network, playback buffer, room)
and scaled.

Per block of input we estimate the delay by cross-correlation over the last second (GCC-PHAT),
fit a short filter around that delay by least squares, and subtract it. What is left is the
user (and noise); the VAD and ASR get that residual. This handles the direct echo path; rooms
with long reverberation leave a tail, which a client-side canceller handles better.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE

MAX_DELAY_S = 0.6
"""Longest playback + acoustic delay searched (jitter buffers add 100-300 ms)."""
HISTORY_S = 1.0
"""Input kept to estimate the delay."""
TAPS = 16
"""Filter length around the estimated delay (1 ms): the direct path and its first smear."""
MIN_REFERENCE_RMS = 1e-3
"""Below this the agent is silent here: nothing to cancel."""
REESTIMATE_S = 0.25
"""How often the delay is estimated again once cancelling works (rooms and buffers drift)."""
UNLOCKED_RETRY_S = 0.05
"""How often it is estimated while no estimate cancels well yet."""
LOCKED_RESIDUAL = 0.3
"""Residual/input energy below which the delay estimate is trusted (~5 dB of cancellation)."""
MAX_REFERENCE_S = 600.0
"""Reference kept ahead of the input. A client that sends no audio while the agent talks
(text-only, push-to-talk) never moves the input on, so without a bound the reference of a long
session would grow without end; the oldest is dropped first."""


class EchoGuard:
    """One session's echo canceller. `play` records what was sent; `clean` filters the input.

    `play` is called from the event loop and `clean` from the VAD thread: a lock guards both.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # What was sent, as (input-stream position, samples) chunks in order; gaps are silence.
        # Chunks, not one array: appending stays cheap however long the answer.
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._ref_end = 0  # input-stream position just past the last sample sent
        self._history = np.zeros(0, np.float32)
        self._history_end = 0  # input-stream position just past self._history
        self._delay: int | None = None
        self._locked = False  # the current delay estimate cancels the echo well
        self._estimated_at = 0  # input position of the last estimate

    @property
    def delay_ms(self) -> float | None:
        return None if self._delay is None else self._delay * 1000 / INPUT_SAMPLE_RATE

    def play(self, samples: np.ndarray, sent_at: int) -> None:
        """Audio (16 kHz) the client will play, sent when the input stream was at `sent_at`.

        Chunks of one answer play back to back, so each starts where the previous ended (or at
        `sent_at` if the client had run dry)."""
        if not len(samples):
            return
        with self._lock:
            start = max(sent_at, self._ref_end)
            self._chunks.append((start, samples.astype(np.float32)))
            self._ref_end = start + len(samples)
            limit = self._ref_end - int(MAX_REFERENCE_S * INPUT_SAMPLE_RATE)
            while self._chunks and self._chunks[0][0] < limit:
                self._chunks.popleft()

    def stop(self, at: int) -> None:
        """The client stopped playing (barge-in, cancel): nothing after `at` will echo."""
        with self._lock:
            while self._chunks and self._chunks[-1][0] >= at:
                self._chunks.pop()
            if self._chunks:
                start, samples = self._chunks[-1]
                self._chunks[-1] = (start, samples[: at - start])
            self._ref_end = min(self._ref_end, at)

    def clean(self, samples: np.ndarray, position: int) -> np.ndarray:
        """The input block starting at stream `position` with the agent's echo removed."""
        with self._lock:
            self._remember(samples, position)
            reach = int(MAX_DELAY_S * INPUT_SAMPLE_RATE) + TAPS
            # The delay estimate lines the last HISTORY_S of input up with the reference up to
            # `reach` before it: keep that much.
            self._forget_before(position - reach - int(HISTORY_S * INPUT_SAMPLE_RATE))
            ref_start = self._chunks[0][0] if self._chunks else self._ref_end
            if position + len(samples) <= ref_start or position - reach >= self._ref_end:
                return samples
            reference = self._reference(position - reach, position + len(samples))
        if not len(samples) or np.sqrt(np.mean(reference**2)) < MIN_REFERENCE_RMS:
            return samples
        since = position - self._estimated_at
        # Until an estimate cancels well, each new 50 ms of echo is worth another look; once
        # it does (or when the client plays nothing at all), every REESTIMATE_S is enough.
        retry = not self._locked and since >= UNLOCKED_RETRY_S * INPUT_SAMPLE_RATE
        if self._delay is None or retry or since >= REESTIMATE_S * INPUT_SAMPLE_RATE:
            self._estimate_delay()
            self._estimated_at = position
        cleaned = self._subtract(samples, reference, reach)
        energy = float(np.dot(samples, samples))
        if energy > 0:
            self._locked = float(np.dot(cleaned, cleaned)) < LOCKED_RESIDUAL * energy
        return cleaned

    # --- internals ------------------------------------------------------------------------

    def _remember(self, samples: np.ndarray, position: int) -> None:
        if position != self._history_end:
            self._history = np.zeros(0, np.float32)
        keep = int(HISTORY_S * INPUT_SAMPLE_RATE)
        self._history = np.concatenate([self._history, samples])[-keep:]
        self._history_end = position + len(samples)

    def _reference(self, start: int, end: int) -> np.ndarray:
        """Reference samples for stream positions [start, end) (zeros where none was played)."""
        out = np.zeros(end - start, np.float32)
        for at, samples in self._chunks:  # those before the input were forgotten already
            if at >= end:
                break
            if at + len(samples) <= start:
                continue
            lo, hi = max(start, at), min(end, at + len(samples))
            out[lo - start : hi - start] = samples[lo - at : hi - at]
        return out

    def _forget_before(self, position: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= position:
            self._chunks.popleft()

    def _estimate_delay(self) -> None:
        """GCC-PHAT between the recent input and the reference: the lag of the echo."""
        with self._lock:
            history = self._history.copy()
            end = self._history_end
            reach = int(MAX_DELAY_S * INPUT_SAMPLE_RATE)
            reference = self._reference(end - len(history) - reach, end)
        if (
            len(history) < INPUT_SAMPLE_RATE // 4
            or np.sqrt(np.mean(reference**2)) < MIN_REFERENCE_RMS
        ):
            return
        n = 1 << int(np.ceil(np.log2(len(reference) + len(history))))
        spectrum = np.fft.rfft(reference, n) * np.conj(np.fft.rfft(history, n))
        corr = np.fft.irfft(spectrum / (np.abs(spectrum) + 1e-9), n)
        # corr[k] = sum_i reference[i + k] * history[i]; an echo `lag` samples late lines
        # history[i] up with reference[i + reach - lag]: lag 0..reach is corr[reach - lag].
        lags = corr[: reach + 1][::-1]
        self._delay = int(np.argmax(lags))

    def _subtract(self, samples: np.ndarray, reference: np.ndarray, reach: int) -> np.ndarray:
        delay = self._delay or 0
        first = max(delay - TAPS // 2, 0)
        # Column j: the reference delayed by (first + j) samples, aligned with `samples`.
        n = len(samples)
        columns = np.stack(
            [reference[reach - (first + j) : reach - (first + j) + n] for j in range(TAPS)],
            axis=1,
        )
        weights, *_ = np.linalg.lstsq(columns, samples, rcond=None)
        echo = columns @ weights
        # A least-squares projection never explains more energy than there is; if it seems to
        # (an ill-conditioned fit, not rounding), keep the input as it was.
        if np.dot(echo, echo) > 1.01 * np.dot(samples, samples):
            return samples
        return (samples - echo).astype(np.float32)
