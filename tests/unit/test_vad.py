"""VAD: the state machine on synthetic probabilities, the ONNX wrapper on real audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from voxgate.streaming.vad import (
    SAMPLE_RATE,
    SileroModel,
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    VadParams,
    VadState,
    VadStateMachine,
)

# Defaults: 32 ms windows, threshold 0.5, neg_threshold 0.35, min_speech 96 ms (3 windows),
# silence 500 ms (16 windows: 15 * 32 = 480 < 500 <= 512), prefix padding 300 ms.
SPEECH, SILENCE, BETWEEN = 0.9, 0.05, 0.4

Event = SpeechStarted | SpeechStopped


def run(probs: list[float], params: VadParams | None = None) -> list[tuple[int, Event]]:
    """Step a fresh machine through `probs`; return (window index, event) for each event."""
    machine = VadStateMachine(params or VadParams())
    events = []
    for i, prob in enumerate(probs):
        event = machine.step(prob)
        if event is not None:
            events.append((i, event))
    return events


# --- params ---------------------------------------------------------------------------------


def test_neg_threshold_defaults_below_threshold_and_is_floored() -> None:
    assert VadParams().silence_threshold == pytest.approx(0.35)
    assert VadParams(threshold=0.1).silence_threshold == 0.01
    assert VadParams(neg_threshold=0.2).silence_threshold == 0.2


def test_params_reject_neg_threshold_above_threshold_and_are_frozen() -> None:
    with pytest.raises(ValidationError):
        VadParams(threshold=0.5, neg_threshold=0.6)
    with pytest.raises(ValidationError):
        VadParams().threshold = 0.7  # type: ignore[misc]


# --- state machine --------------------------------------------------------------------------


def test_clean_speech_run_gives_one_start_and_one_stop() -> None:
    probs = [SILENCE] * 10 + [SPEECH] * 20 + [SILENCE] * 20
    # Speech runs from 320 ms to 960 ms. The start is confirmed on the third speech window
    # (index 12) and reported 300 ms early; the stop is confirmed on the 16th silence window.
    assert run(probs) == [(12, SpeechStarted(20)), (45, SpeechStopped(960))]


def test_states_along_a_speech_run() -> None:
    machine = VadStateMachine(VadParams())
    seen = []
    for prob in [SPEECH] * 3 + [SILENCE] * 16:
        machine.step(prob)
        seen.append(machine.state)
    assert seen[:3] == [VadState.STARTING, VadState.STARTING, VadState.SPEAKING]
    assert seen[3:18] == [VadState.STOPPING] * 15
    assert seen[18] == VadState.QUIET
    assert machine.position_ms == 19 * 32


def test_blip_shorter_than_min_speech_gives_nothing() -> None:
    machine = VadStateMachine(VadParams())
    for prob in [SILENCE] * 20 + [SPEECH] * 2 + [SILENCE]:
        assert machine.step(prob) is None
    assert machine.state == VadState.QUIET
    # A later real utterance is timed from its own start, not from the blip.
    events = [e for p in [SPEECH] * 3 if (e := machine.step(p)) is not None]
    assert events == [SpeechStarted(23 * 32 - 300)]


def test_speech_of_exactly_min_speech_starts_a_turn() -> None:
    assert run([SPEECH] * 3 + [SILENCE] * 16) == [(2, SpeechStarted(0)), (18, SpeechStopped(96))]


def test_short_pause_inside_speech_does_not_end_the_turn() -> None:
    probs = [SPEECH] * 20 + [SILENCE] * 15 + [SPEECH] * 20 + [SILENCE] * 20
    # 15 silent windows = 480 ms < 500 ms: one turn, ending at the end of the second run.
    assert run(probs) == [(2, SpeechStarted(0)), (70, SpeechStopped(55 * 32))]


def test_between_thresholds_keeps_the_current_state() -> None:
    machine = VadStateMachine(VadParams())
    for prob in [BETWEEN] * 50:
        assert machine.step(prob) is None
        assert machine.state == VadState.QUIET

    for prob in [SPEECH] * 3 + [BETWEEN] * 50:
        machine.step(prob)
    assert machine.state == VadState.SPEAKING
    # Ambiguous windows while speaking still count as speech for the end of the turn.
    events = [e for p in [SILENCE] * 16 if (e := machine.step(p)) is not None]
    assert events == [SpeechStopped((50 + 3 + 50) * 32)]


def test_between_thresholds_extends_starting_and_counts_toward_stopping() -> None:
    # STARTING: one speech window then ambiguous ones complete the 96 ms run.
    assert run([SPEECH, BETWEEN, BETWEEN])[0] == (2, SpeechStarted(0))
    # STOPPING: after the first silence window, ambiguous windows keep the silence clock running.
    probs = [SPEECH] * 3 + [SILENCE] + [BETWEEN] * 15
    assert run(probs) == [(2, SpeechStarted(0)), (18, SpeechStopped(96))]


def test_prefix_padding_clamps_at_zero() -> None:
    assert run([SPEECH] * 3)[0][1] == SpeechStarted(0)
    assert run([SILENCE] * 5 + [SPEECH] * 3)[0][1] == SpeechStarted(0)  # 160 - 300
    assert run([SILENCE] * 20 + [SPEECH] * 3)[0][1] == SpeechStarted(640 - 300)
    no_padding = VadParams(prefix_padding_ms=0)
    assert run([SILENCE] * 5 + [SPEECH] * 3, no_padding)[0][1] == SpeechStarted(160)


def test_several_utterances_give_alternating_events_with_exact_times() -> None:
    rng = np.random.default_rng(7)
    probs: list[float] = []
    expected: list[Event] = []
    for _ in range(6):
        probs += [SILENCE] * int(rng.integers(16, 60))
        start = len(probs) * 32
        probs += [SPEECH] * int(rng.integers(3, 80))
        # Short pauses and ambiguous windows inside an utterance must not split it.
        probs += [SILENCE] * 10 + [BETWEEN] * 3 + [SPEECH] * 5
        expected += [SpeechStarted(max(0, start - 300)), SpeechStopped(len(probs) * 32)]
    probs += [SILENCE] * 16

    assert [event for _, event in run(probs)] == expected


def test_zero_min_speech_and_zero_silence_react_on_one_window() -> None:
    params = VadParams(min_speech_ms=0, silence_duration_ms=0, prefix_padding_ms=0)
    probs = [SILENCE, SPEECH, SILENCE, SPEECH, SPEECH, SILENCE]
    assert run(probs, params) == [
        (1, SpeechStarted(32)),
        (2, SpeechStopped(64)),
        (3, SpeechStarted(96)),
        (5, SpeechStopped(160)),
    ]


def test_reset_returns_to_quiet_at_time_zero() -> None:
    machine = VadStateMachine(VadParams())
    for prob in [SPEECH] * 10:
        machine.step(prob)
    machine.reset()
    assert (machine.state, machine.position_ms) == (VadState.QUIET, 0)
    events = [e for p in [SPEECH] * 3 if (e := machine.step(p)) is not None]
    assert events == [SpeechStarted(0)]


def test_thresholds_can_be_changed_live_and_outlast_a_reset() -> None:
    machine = VadStateMachine(VadParams())
    machine.set_thresholds(min_speech_ms=256)  # 8 windows: the agent is talking
    steps = [machine.step(p) for p in [SPEECH] * 8]
    assert steps == [None] * 7 + [SpeechStarted(0)]
    machine.set_thresholds(silence_duration_ms=1000)  # 32 windows: a thought trails off
    steps = [machine.step(p) for p in [SILENCE] * 32]
    assert steps == [None] * 31 + [SpeechStopped(8 * 32)]
    machine.reset()
    machine.set_thresholds(silence_duration_ms=None)  # None keeps the value
    steps = [machine.step(p) for p in [SPEECH] * 8]
    assert steps == [None] * 7 + [SpeechStarted(0)]


def test_illegal_transition_fails_loudly() -> None:
    machine = VadStateMachine(VadParams())
    with pytest.raises(RuntimeError, match="illegal VAD transition"):
        machine._go(VadState.SPEAKING)


# --- the real model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(silero_path: Path) -> SileroModel:
    return SileroModel(silero_path)


@pytest.fixture(scope="module")
def speech(speak) -> np.ndarray:
    """A synthesised English sentence at 16 kHz, starting and ending with the voice."""
    return speak("Hello there, how are you today?")


def test_silence_and_low_noise_are_not_speech(model: SileroModel) -> None:
    vad = SileroVad(model)
    assert vad.probabilities(np.zeros(SAMPLE_RATE * 2, dtype=np.float32)).max() < 0.1
    vad.reset()
    noise = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE * 2).astype(np.float32)
    assert vad.probabilities(noise).max() < 0.2


def test_speech_is_speech(model: SileroModel, speech: np.ndarray) -> None:
    probs = SileroVad(model).probabilities(speech)
    assert len(probs) == len(speech) // SileroVad.WINDOW
    assert np.median(probs) > 0.9


def test_model_and_state_machine_find_the_one_turn(model: SileroModel, speech: np.ndarray) -> None:
    pad = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([pad, speech, pad])
    true_start_ms, true_end_ms = 1000, 1000 + len(speech) * 1000 // SAMPLE_RATE

    machine = VadStateMachine(VadParams(prefix_padding_ms=0))
    probs = SileroVad(model).probabilities(audio)
    events = [e for p in probs if (e := machine.step(float(p))) is not None]

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert abs(started.audio_start_ms - true_start_ms) <= 150
    assert abs(stopped.audio_end_ms - true_end_ms) <= 150


def test_streaming_equals_batch(model: SileroModel, speech: np.ndarray) -> None:
    pad = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    audio = np.concatenate([pad, speech, pad])
    vad = SileroVad(model)
    batch = vad.probabilities(audio)

    vad.reset()
    rng = np.random.default_rng(1)
    bounds = np.cumsum(rng.integers(0, 1500, size=len(audio) // 100))
    chunks = np.split(audio, bounds[bounds < len(audio)])
    streamed = np.concatenate([vad.probabilities(chunk) for chunk in chunks])

    assert len(batch) == len(audio) // SileroVad.WINDOW
    np.testing.assert_array_equal(streamed, batch)


def test_rejects_integer_pcm(model: SileroModel) -> None:
    with pytest.raises(ValueError, match="float"):
        SileroVad(model).probabilities(np.zeros(512, dtype=np.int16))
