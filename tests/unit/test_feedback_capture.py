"""The capture of a realtime session's answers on its own: `SessionCapture` over a store that
records what it is told (writes in order, timings completed when `response.done` is sent, a
bounded queue that drops and says so, what is left written at close), and the bounded
collector of an answer's audio."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from voxgate.model.types import Role
from voxgate.server.feedback_capture import MAX_PENDING_WRITES, SessionCapture
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.streaming import audio
from voxgate.streaming.answer_log import AnswerRecord, Said, SpokenAudio
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.events import Response, ResponseFinished

pytestmark = pytest.mark.timeout(30)

CANDIDATE_PRIORITY = 10


def dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("voxgate_feedback_captures_dropped_total", {"reason": reason})
        or 0.0
    )


class RecordingStore:
    """Stands in for the feedback store: records what it is told; `gate`, when set, holds
    every write until it is set."""

    def __init__(self) -> None:
        self.settings = FeedbackSettings(enabled=True)
        self.told: list[tuple[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.writing = asyncio.Event()
        """Set once a write has begun."""

    async def _told(self, what: str, value: Any) -> None:
        self.writing.set()
        if self.gate is not None:
            await self.gate.wait()
        self.told.append((what, value))

    async def record_response(self, captured: Any) -> None:
        await self._told("response", captured)

    async def record_truncation(self, response_id: str, heard_ms: int) -> None:
        await self._told("truncation", (response_id, heard_ms))

    async def record_pair(self, pair_id: str, session_id: str, first: str, second: str) -> None:
        await self._told("pair", (pair_id, first, second))


def record(response_id: str) -> AnswerRecord:
    return AnswerRecord(
        response_id,
        (Said(Role.SYSTEM, "Be brief."), Said(Role.USER, "Hi.")),
        "Hello.",
        "completed",
        timings={"lm_first_token": 0.1},
    )


def finished(response_id: str, first_audio_sent_after: float) -> ResponseFinished:
    response = Response(response_id, True, "joe", "audio/pcm", True, 100)
    response.trace.mark("lm_submit", 10.0)
    response.trace.mark("lm_first_token", 10.1)
    response.trace.mark("first_audio_sent", 10.0 + first_audio_sent_after)
    return ResponseFinished(response)


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


async def test_writes_keep_their_order_and_the_timings_of_the_send(store: RecordingStore) -> None:
    capture = SessionCapture(store, "sess_a", "voxgate-fake", CANDIDATE_PRIORITY)
    await capture.answered(record("resp_a"))
    await capture.truncated("resp_a", 40)
    await capture.answered(record("resp_b"))
    await capture.paired("pair_1", "resp_a", "resp_b")
    capture.sent(finished("resp_b", 0.5))
    capture.sent(finished("resp_a", 0.3))
    await capture.settled()
    assert [what for what, _ in store.told] == ["response", "truncation", "response", "pair"]
    answer_a = store.told[0][1]
    assert (answer_a.response_id, answer_a.session_id, answer_a.model) == (
        "resp_a",
        "sess_a",
        "voxgate-fake",
    )
    # The record's timings, completed with the first audio's send (the writer's mark).
    assert answer_a.timings["lm_to_first_audio"] == pytest.approx(0.3)
    assert answer_a.timings["lm_first_token"] == pytest.approx(0.1)
    await capture.close()


async def test_a_full_queue_drops_new_captures_and_says_so(
    store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.gate = asyncio.Event()
    capture = SessionCapture(store, "sess_a", "m", CANDIDATE_PRIORITY)
    before = dropped("queue_full")
    for n in range(MAX_PENDING_WRITES + 3):
        await capture.answered(record(f"resp_{n}"))
        capture.sent(finished(f"resp_{n}", 0.2))
        if n == 0:
            await store.writing.wait()  # the first is being written (held at the gate)
    # One is being written, MAX_PENDING_WRITES wait: the last two are not captured.
    assert dropped("queue_full") == before + 2
    assert "is not captured" in caplog.text
    store.gate.set()
    await capture.close()
    assert len(store.told) == MAX_PENDING_WRITES + 1


async def test_closing_writes_answers_the_client_never_got(store: RecordingStore) -> None:
    capture = SessionCapture(store, "sess_a", "m", CANDIDATE_PRIORITY)
    await capture.answered(record("resp_a"))  # its response.done was never sent
    await capture.close()
    ((what, captured),) = store.told
    assert (what, captured.response_id, dict(captured.timings)) == (
        "response",
        "resp_a",
        {"lm_first_token": 0.1},
    )


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_an_answers_audio_is_kept_up_to_its_bound(fmt: AudioFormat) -> None:
    """What is sent is kept as 16-bit PCM at the format's rate, at most `max_s` of it."""
    spoken = SpokenAudio(fmt, max_s=1.0)
    second = (0.3 * np.sin(np.arange(fmt.sample_rate) / 7)).astype(np.float32)
    sent = audio.encode(second, fmt)
    for piece in audio.iter_slices(sent * 3, fmt, 40):
        spoken.add(piece)
    sound = spoken.sound()
    assert sound.sample_rate == fmt.sample_rate
    assert len(sound.pcm16) == 2 * fmt.sample_rate  # one second, not three
    as_sent = audio.encode(audio.decode(sent, fmt), AudioFormat.PCM)
    assert sound.pcm16 == as_sent
