"""A session's input audio: decoding, noise suppression, the bounded buffer and the turn detector.

`Listener.hear` takes one client append and returns the turn events it completes (server VAD
on), or just buffers the audio (turn detection off). The noise suppressor and the VAD run in a
thread. With the echo guard on, the agent's own voice (what the session sent) is taken out of
the input before the VAD hears it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming.audio import AudioFormat, AudioFormatError, InputDecoder
from voxgate.streaming.config import TurnDetection
from voxgate.streaming.denoise import NoiseSuppressor
from voxgate.streaming.echo import EchoGuard
from voxgate.streaming.requests import SessionRejected
from voxgate.streaming.turn_policy import pause_ms
from voxgate.streaming.turns import InputAudioBuffer, InputBufferFull, TurnDetector, TurnEvent
from voxgate.streaming.vad import SileroVad

MIN_COMMIT_MS = 100
"""A commit needs at least this much audio (as OpenAI's API requires)."""


class Listener:
    """One session's input side; `set_turn_detection` switches server VAD on or off."""

    def __init__(
        self,
        vad_factory: Callable[[], SileroVad],
        noise_suppressor: Callable[[], NoiseSuppressor] | None,
        max_buffer_seconds: float,
        input_format: AudioFormat,
    ) -> None:
        self._vad_factory = vad_factory
        self._vad: SileroVad | None = None
        self._new_denoiser = noise_suppressor
        """Makes this session's noise suppressor, when the server has one switched on."""
        self._denoiser: NoiseSuppressor | None = None
        self._decoder = InputDecoder(input_format)
        self.buffer = InputAudioBuffer(max_buffer_seconds)
        self.detector: TurnDetector | None = None
        """Server VAD over the buffer (None: turn detection is off)."""
        self.echo: EchoGuard | None = None
        self._lock = asyncio.Lock()
        """Held while the VAD runs (in a thread) or while the session ends a turn itself."""

    def set_format(self, fmt: AudioFormat) -> None:
        if fmt != self._decoder.format:
            self._decoder = InputDecoder(fmt)

    async def set_turn_detection(self, detection: TurnDetection | None) -> None:
        """Start listening for turns afresh with `detection` (None: stop)."""
        if detection is None:
            self.detector = None
            return
        if self._vad is None:
            self._vad = await asyncio.to_thread(self._vad_factory)
        self.detector = TurnDetector(self._vad, detection.vad, self.buffer)
        if detection.echo_guard:
            self.echo = self.echo or EchoGuard()
            self.detector.echo = self.echo
        else:
            self.echo = None
        self.detector.early_ms = pause_ms(detection)

    def set_noise_reduction(self, on: bool) -> None:
        if on and self._denoiser is None and self._new_denoiser is not None:
            self._denoiser = self._new_denoiser()
        elif not on and self._denoiser is not None:
            self._denoiser.close()
            self._denoiser = None

    def set_thresholds(
        self, *, min_speech_ms: int | None = None, silence_duration_ms: int | None = None
    ) -> None:
        if self.detector is not None:
            self.detector.set_thresholds(
                min_speech_ms=min_speech_ms, silence_duration_ms=silence_duration_ms
            )

    async def hear(self, data: bytes, arrived_at: float | None) -> list[TurnEvent]:
        """input_audio_buffer.append; `arrived_at` (monotonic) is when the message was read."""
        # Refuse what cannot fit before the decoder's resampler has seen any of it.
        fmt = self._decoder.format
        arriving = len(data) // fmt.bytes_per_sample * INPUT_SAMPLE_RATE // fmt.sample_rate
        fits = self.buffer.has_room if self.detector is None else self.buffer.fits
        if not fits(arriving):
            raise SessionRejected(
                "input_audio_buffer_full", str(InputBufferFull(self.buffer.max_seconds)), "audio"
            )
        try:
            samples = self._decoder.feed(data)
        except AudioFormatError as e:
            raise SessionRejected("invalid_audio", str(e), "audio") from e
        try:
            if (detector := self.detector) is None:
                if self._denoiser is not None:
                    samples = await asyncio.to_thread(self._denoiser.process, samples)
                self.buffer.append(samples, arrived_at)
                return []
            async with self._lock:
                return await asyncio.to_thread(self._detect, detector, samples, arrived_at)
        except InputBufferFull as e:
            raise SessionRejected("input_audio_buffer_full", str(e), "audio") from e

    def _detect(
        self, detector: TurnDetector, samples: np.ndarray, arrived_at: float | None
    ) -> list[TurnEvent]:
        """Input audio through the noise suppressor (if on) and the turn detector (a thread)."""
        if self._denoiser is not None:
            samples = self._denoiser.process(samples)
        return detector.feed(samples, arrived_at)

    def commit(self) -> np.ndarray:
        """input_audio_buffer.commit: take the buffered audio (at least MIN_COMMIT_MS of it)."""
        tail = self._decoder.flush()
        if len(tail) and self.buffer.has_room(len(tail)):
            self.buffer.append(tail)
        if self.buffer.duration_ms < MIN_COMMIT_MS:
            raise SessionRejected(
                "input_audio_buffer_commit_empty",
                f"buffer too small: {self.buffer.duration_ms} ms of audio, "
                f"a commit needs at least {MIN_COMMIT_MS} ms",
            )
        if self.detector is not None:
            self.detector.restart()  # the VAD's turn is over, whether it saw the end or not
        return self.buffer.take()

    def clear(self) -> None:
        """input_audio_buffer.clear: forget the buffered audio (and a turn under way)."""
        self._decoder.flush()
        self.buffer.clear()
        if self.detector is not None:
            self.detector.restart()

    async def end_turn_now(self, still: Callable[[], bool]) -> list[TurnEvent]:
        """End the turn under way at once if `still()` holds once the VAD is idle (semantic end
        of turn); the events that closes it."""
        async with self._lock:
            if self.detector is None or not still():
                return []
            return self.detector.end_turn_now()

    def stop_echo(self) -> None:
        """The client stops playing the agent's audio now."""
        if self.echo is not None:
            self.echo.stop(self.buffer.end)

    def close(self) -> None:
        self.set_noise_reduction(False)
