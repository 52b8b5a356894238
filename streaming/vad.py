"""Voice activity detection: the silero-vad ONNX wrapper and the turn state machine.

`SileroVad` turns 16 kHz mono float32 audio into one speech probability per 32 ms window.
`VadStateMachine` turns those probabilities into `SpeechStarted` / `SpeechStopped` events. The
two are separate so the turn logic is pure and tested with synthetic probability sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLE_RATE = 16_000


class SileroModel:
    """The loaded silero-vad 6 ONNX model. Stateless and thread-safe: share one per process."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # The model is tiny; extra threads cost more in synchronisation than they save.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, model_input: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One window (with its context) and the recurrent state -> (probability, next state)."""
        output, next_state = self._session.run(
            ["output", "stateN"], {"input": model_input, "state": state, "sr": self._sr}
        )
        return float(output[0, 0]), next_state


class SileroVad:
    """One audio stream's VAD: the recurrent state over a shared `SileroModel`."""

    WINDOW = 512
    """Samples per window (32 ms at 16 kHz); the only window size the model takes at 16 kHz."""
    CONTEXT = 64
    """Trailing samples of the previous window that the model sees before each new window."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next sample is the start of a new stream."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each window completed by `samples` (float32, may be empty).

        A remainder shorter than a window is kept for the next call, so the windows do not depend
        on how the stream was chunked.
        """
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            # int16 PCM passed here by mistake would read as constant full-scale noise.
            raise ValueError(f"expected 1-D float mono audio, got {samples.dtype} {samples.shape}")
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n_windows = len(audio) // self.WINDOW
        probs = np.empty(n_windows, dtype=np.float32)
        for i in range(n_windows):
            window = audio[i * self.WINDOW : (i + 1) * self.WINDOW]
            model_input = np.concatenate([self._context, window])[np.newaxis, :]
            probs[i], self._state = self._model.run(model_input, self._state)
            self._context = window[-self.CONTEXT :]
        # Copy so the buffer does not pin the whole (possibly large) input array.
        self._pending = audio[n_windows * self.WINDOW :].copy()
        return probs


class VadParams(BaseModel):
    """Thresholds and timings of turn detection (the names follow OpenAI's `server_vad`)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """Probability at or above which a window is speech."""
    neg_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Hysteresis: probability below which a window is silence; windows in between keep the
    current state. None means `threshold - 0.15`, floored at 0.01."""
    min_speech_ms: int = Field(default=96, ge=0)
    """Speech must last this long before speech_started is declared, so clicks do not start a
    turn."""
    silence_duration_ms: int = Field(default=500, ge=0)
    """Silence after speech before the turn ends."""
    prefix_padding_ms: int = Field(default=300, ge=0)
    """Audio kept before the detected start; the state machine only reports it, the audio
    buffer lives elsewhere."""

    @property
    def silence_threshold(self) -> float:
        """The resolved `neg_threshold`."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)

    @model_validator(mode="after")
    def _check_hysteresis(self) -> VadParams:
        if self.silence_threshold > self.threshold:
            raise ValueError("neg_threshold must not exceed threshold")
        return self


class VadState(StrEnum):
    QUIET = "quiet"
    STARTING = "starting"  # speech heard, not yet long enough to be a turn
    SPEAKING = "speaking"
    STOPPING = "stopping"  # silence heard, not yet long enough to end the turn


_ALLOWED: dict[VadState, frozenset[VadState]] = {
    VadState.QUIET: frozenset({VadState.STARTING}),
    VadState.STARTING: frozenset({VadState.SPEAKING, VadState.QUIET}),
    # SPEAKING -> QUIET only through force_stop (a turn cut short by a full buffer).
    VadState.SPEAKING: frozenset({VadState.STOPPING, VadState.QUIET}),
    VadState.STOPPING: frozenset({VadState.SPEAKING, VadState.QUIET}),
}


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    """Start of the first speech window minus the prefix padding, not below 0."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    """End of the last speech window, not of the silence that confirmed the stop."""


class VadStateMachine:
    """Turns window probabilities into turn events; pure, fed one window at a time.

    Time is counted from the first window ever stepped (or the last `reset`). A window between
    the two thresholds continues whatever is under way: it extends a STARTING run and it counts
    toward the silence of a STOPPING one, as silero's own iterator does.
    """

    def __init__(self, params: VadParams, window_ms: int = 32) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be positive")
        self._params = params
        self._window_ms = window_ms
        self._min_speech_ms = params.min_speech_ms
        self._silence_duration_ms = params.silence_duration_ms
        self.reset()

    def set_thresholds(
        self, *, min_speech_ms: int | None = None, silence_duration_ms: int | None = None
    ) -> None:
        """Change the speech needed to start a turn (raised while the agent talks, so short
        sounds do not interrupt it) or the silence that ends one (longer after a trailing
        thought); None keeps the current value. A run under way is judged by the new value
        from its next window on."""
        if min_speech_ms is not None:
            self._min_speech_ms = min_speech_ms
        if silence_duration_ms is not None:
            self._silence_duration_ms = silence_duration_ms

    def reset(self) -> None:
        self._state = VadState.QUIET
        self._position_ms = 0
        self._run_start_ms = 0  # start of the first speech window of the current run
        self._speech_end_ms = 0  # end of the last window that counted as speech

    @property
    def state(self) -> VadState:
        return self._state

    @property
    def position_ms(self) -> int:
        """Stream time consumed so far: the end of the last stepped window."""
        return self._position_ms

    def step(self, prob: float) -> SpeechStarted | SpeechStopped | None:
        """Consume one window's speech probability; return the event it completes, if any."""
        start_ms = self._position_ms
        end_ms = self._position_ms = start_ms + self._window_ms
        p = self._params
        speech = prob >= p.threshold
        silence = prob < p.silence_threshold

        match self._state:
            case VadState.QUIET:
                if not speech:
                    return None
                self._run_start_ms = start_ms
                self._go(VadState.STARTING)
                # Fall through on purpose: with min_speech_ms <= window_ms one window suffices.
                return self._maybe_started(end_ms)
            case VadState.STARTING:
                if silence:
                    self._go(VadState.QUIET)  # a blip, too short to be a turn
                    return None
                return self._maybe_started(end_ms)
            case VadState.SPEAKING:
                if not silence:
                    self._speech_end_ms = end_ms
                    return None
                self._go(VadState.STOPPING)
                return self._maybe_stopped(end_ms)
            case VadState.STOPPING:
                if speech:
                    self._speech_end_ms = end_ms
                    self._go(VadState.SPEAKING)  # a pause inside the turn
                    return None
                return self._maybe_stopped(end_ms)

    def force_stop(self) -> SpeechStopped | None:
        """End the current turn now (the caller cannot hold more audio); None if none is on."""
        if self._state not in (VadState.SPEAKING, VadState.STOPPING):
            return None
        self._go(VadState.QUIET)
        return SpeechStopped(self._speech_end_ms)

    @property
    def silence_ms(self) -> int:
        """Silence since the last speech window (0 unless STOPPING)."""
        if self._state != VadState.STOPPING:
            return 0
        return self._position_ms - self._speech_end_ms

    def _maybe_started(self, end_ms: int) -> SpeechStarted | None:
        if end_ms - self._run_start_ms < self._min_speech_ms:
            return None
        self._speech_end_ms = end_ms
        self._go(VadState.SPEAKING)
        return SpeechStarted(max(0, self._run_start_ms - self._params.prefix_padding_ms))

    def _maybe_stopped(self, end_ms: int) -> SpeechStopped | None:
        if end_ms - self._speech_end_ms < self._silence_duration_ms:
            return None
        self._go(VadState.QUIET)
        return SpeechStopped(self._speech_end_ms)

    def _go(self, to: VadState) -> None:
        if to not in _ALLOWED[self._state]:
            raise RuntimeError(f"illegal VAD transition {self._state} -> {to}")
        self._state = to
