"""Turn-taking beyond plain silence: speculative start, semantic end of turn, interruption
policy, the echo guard and truncation. Real VAD, real speech, a fake backbone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
import soxr
from direct_session import LEAD_S, SERVER_VAD, Events, feed, kinds, of, only, silence, turn
from fakes import VOICE, FakeBackbone, RespondCall

from voxgate.model.types import (
    INPUT_SAMPLE_RATE,
    AudioChunk,
    ResponseEnd,
    ResponseOutput,
    Role,
    TextDelta,
    Turn,
)
from voxgate.streaming import audio
from voxgate.streaming.config import TurnDetection
from voxgate.streaming.echo import MAX_REFERENCE_S, EchoGuard
from voxgate.streaming.events import (
    InputCommitted,
    ItemStatus,
    ItemTruncated,
    OutputAudioDelta,
    OutputItemStarted,
    ResponseFinished,
    ResponseStarted,
    ResponseStatus,
    SpeechStartedEvent,
    SpeechStoppedEvent,
)
from voxgate.streaming.session import ResponseRequest, SessionRejected

TAKING = SERVER_VAD.model_copy(update={"speculative_start_ms": 200})


@pytest.fixture(scope="module")
def morning(speak) -> np.ndarray:
    return speak("Good morning")


@pytest.fixture(scope="module")
def story(speak) -> np.ndarray:
    return speak("Once upon a time there was a little village by the sea, where people were happy.")


# --- speculative start --------------------------------------------------------------------


async def test_a_speculative_answer_is_adopted_when_the_turn_ends(make, morning) -> None:
    fake = FakeBackbone(transcript="good morning")
    session, events = await make(fake, turn_detection=TAKING)
    await feed(session, turn(morning))
    got = await events.until(ResponseFinished)
    assert kinds(got)[:8] == [
        "SpeechStartedEvent",
        "SpeechStoppedEvent",
        "InputCommitted",
        "ItemAdded",
        "InputTranscribed",
        "ItemDone",
        "ResponseStarted",
        "OutputItemStarted",
    ]
    user_id = only(got, InputCommitted).item_id
    assert only(got, OutputItemStarted).previous_item_id == user_id  # the answer follows the turn
    (asr,) = fake.transcribe_calls  # one transcription: the early one was kept
    (call,) = fake.respond_calls
    assert call.conversation == [Turn(Role.USER, "good morning")]
    trace = only(got, ResponseFinished).response.trace
    # Transcribing and answering began while the user was still (silently) holding the turn.
    assert trace.marks["asr_start"] < trace.marks["turn_end"]
    assert trace.marks["lm_submit"] < trace.marks["turn_end"]
    # It heard the turn up to the pause, not the rest of the silence that ended it.
    committed = session.items[0].samples
    assert committed is not None
    assert len(committed) - len(asr.audio) >= 0.2 * INPUT_SAMPLE_RATE
    assert [(i.role, i.content_text) for i in session.items] == [
        (Role.USER, "good morning"),
        (Role.ASSISTANT, fake.reply_text),
    ]


async def test_a_speculative_answer_is_dropped_when_the_user_goes_on(make, morning) -> None:
    words = iter(["good morning", "good morning good morning"])
    fake = FakeBackbone(transcript=lambda _: next(words), reply=["word "] * 40, chunk_delay_s=0.01)
    session, events = await make(fake, turn_detection=TAKING)
    # A 350 ms pause: past the 200 ms speculative start, short of the 500 ms end of turn.
    await feed(session, np.concatenate([silence(LEAD_S), morning, silence(0.35), morning]))
    await feed(session, silence(1.2))
    got = await events.until(ResponseFinished)
    assert len(of(got, InputCommitted)) == 1
    assert len(of(got, ResponseStarted)) == 1  # nothing of the dropped answer reached the client
    first, second = fake.respond_calls
    assert first.stopped_early and second.outcome == "finished"
    assert second.conversation == [Turn(Role.USER, "good morning good morning")]
    assert session.items[0].transcript == "good morning good morning"


# --- semantic end of turn -----------------------------------------------------------------


async def _committed_after(make, speech: np.ndarray, eagerness: str, transcript: str) -> float:
    fake = FakeBackbone(transcript=transcript)
    td = TAKING.model_copy(update={"eagerness": eagerness, "speculative_start_ms": None})
    td = td.model_copy(update={"vad": td.vad.model_copy(update={"silence_duration_ms": 600})})
    session, events = await make(fake, turn_detection=td)
    await feed(session, np.concatenate([silence(LEAD_S), speech, silence(2.0)]))
    got = await events.until(InputCommitted)
    stopped = only(got, SpeechStoppedEvent)
    committed_audio = session.items[0].samples
    assert committed_audio is not None
    return len(committed_audio) / INPUT_SAMPLE_RATE - stopped.audio_end_ms / 1000


async def test_a_complete_thought_ends_the_turn_early(make, morning) -> None:
    quick = await _committed_after(make, morning, "high", "Good morning.")
    patient = await _committed_after(make, morning, "low", "Good morning.")
    trailing = await _committed_after(make, morning, "high", "Good morning and")
    # Seconds of silence after the speech before the turn was committed (relative to start).
    assert quick < patient
    assert quick < trailing


# --- interruption policy -------------------------------------------------------------------


async def test_a_short_sound_does_not_interrupt_the_agent(make, morning) -> None:
    fake = FakeBackbone(reply=["word "] * 60, chunk_delay_s=0.02)
    td = SERVER_VAD.model_copy(update={"min_interruption_ms": 2000})
    session, events = await make(fake, turn_detection=td)
    await feed(session, turn(morning))
    await events.until(OutputAudioDelta)
    await feed(session, np.concatenate([morning, silence(1.0)]))  # ~0.7 s of speech: < 2 s
    got = await events.until(ResponseFinished)
    assert not of(got, SpeechStartedEvent)
    assert only(got, ResponseFinished).response.status is ResponseStatus.COMPLETED


@pytest.mark.parametrize(
    ("said", "interrupted"), [("yeah", False), ("no stop talking please", True)]
)
async def test_words_decide_whether_the_user_interrupted(make, morning, said, interrupted) -> None:
    answers = iter(["good morning", said])
    fake = FakeBackbone(
        transcript=lambda _: next(answers), reply=["word "] * 60, chunk_delay_s=0.02
    )
    td = SERVER_VAD.model_copy(update={"min_interruption_words": 2})
    session, events = await make(fake, turn_detection=td)
    await feed(session, turn(morning))
    await events.until(OutputAudioDelta)
    await feed(session, np.concatenate([morning, silence(1.0)]))
    got = await events.until(ResponseFinished)
    response = only(got, ResponseFinished).response
    if interrupted:
        assert (response.status, response.reason) == (ResponseStatus.CANCELLED, "turn_detected")
        assert fake.respond_calls[0].stopped_early
        await events.until(ResponseFinished)  # the interruption is answered
        assert fake.respond_calls[1].conversation[-1] == Turn(Role.USER, said)
    else:
        # A backchannel: the agent went on, and every piece of its answer was delivered.
        assert response.status is ResponseStatus.COMPLETED
        assert fake.respond_calls[0].outcome == "finished"
        delivered = b"".join(e.audio for e in events.seen if isinstance(e, OutputAudioDelta))
        assert abs(len(delivered) / 48 - 60 * 100) < 20  # ms of 24 kHz pcm16: 60 pieces of 100

        assert len(fake.respond_calls) == 1  # and the backchannel is not answered


async def test_speaking_again_while_held_ends_the_held_answer(make, morning) -> None:
    fake = FakeBackbone(transcript="good morning", reply=["word "] * 60, chunk_delay_s=0.02)
    td = SERVER_VAD.model_copy(update={"min_interruption_words": 2})
    session, events = await make(fake, turn_detection=td)
    await feed(session, turn(morning))
    await events.until(OutputAudioDelta)
    fake.transcribe_gate = asyncio.Event()  # the words that would judge the hold are slow
    await feed(session, np.concatenate([morning, silence(1.0)]))  # the answer is held
    await feed(session, np.concatenate([morning, silence(1.0)]))  # and the user speaks again
    got = await events.until(ResponseFinished)
    assert len(of(got, SpeechStartedEvent)) == 2
    held = only(got, ResponseFinished).response
    assert (held.status, held.reason) == (ResponseStatus.CANCELLED, "turn_detected")
    assert not of(got, OutputAudioDelta)  # what it said while held is not played
    fake.transcribe_gate.set()
    answer = only(await events.until(ResponseFinished), ResponseFinished).response
    assert answer.status is ResponseStatus.COMPLETED
    assert len(fake.respond_calls) == 2  # the last turn is answered, the one it cut short not


# --- echo guard -----------------------------------------------------------------------------


class SpeakingBackbone(FakeBackbone):
    """Answers with real speech, so its echo in the microphone sounds like a person."""

    def __init__(self, speech: np.ndarray) -> None:
        super().__init__()
        self._speech = soxr.resample(speech, INPUT_SAMPLE_RATE, VOICE.sample_rate).astype(
            np.float32
        )

    def respond(self, conversation, options, trace) -> AsyncIterator[ResponseOutput]:
        call = RespondCall([Turn(t.role, t.text) for t in conversation], options, trace)
        self.respond_calls.append(call)
        return self._speak(call)

    async def _speak(self, call: RespondCall) -> AsyncIterator[ResponseOutput]:
        try:
            yield TextDelta("Once upon a time.")
            yield AudioChunk(self._speech, VOICE.sample_rate)
            yield ResponseEnd("stop", 1, 1)
            call.outcome = "finished"
        except GeneratorExit:
            call.outcome = "closed"
            raise


def _turn_ending_now(speech: np.ndarray) -> np.ndarray:
    """A turn whose end of turn comes with its last append, so the answer is sent (and starts
    playing) right where the next input begins, as with a live microphone."""
    return np.concatenate([silence(LEAD_S), speech, silence(0.7)])


def _echo_of(deltas: Sequence[OutputAudioDelta], delay_s: float, gain: float) -> np.ndarray:
    """What a microphone next to the speaker hears: the sent audio, late and quieter."""
    sent = audio.decode(b"".join(d.audio for d in deltas), audio.AudioFormat.PCM)
    at_16k = soxr.resample(sent, 24000, INPUT_SAMPLE_RATE).astype(np.float32)
    return np.concatenate([silence(delay_s), gain * at_16k, silence(1.0)]).astype(np.float32)


@pytest.mark.parametrize("guarded", [True, False])
async def test_the_agents_own_voice_does_not_interrupt_it(make, morning, story, guarded) -> None:
    fake = SpeakingBackbone(story)
    td = SERVER_VAD.model_copy(update={"echo_guard": guarded})
    session, events = await make(fake, turn_detection=td)
    await feed(session, _turn_ending_now(morning))
    got = await events.until(ResponseFinished)
    # The client played the answer on a speaker; its microphone picked it up.
    await feed(session, _echo_of(of(got, OutputAudioDelta), delay_s=0.15, gain=0.5))
    heard = events.ready()
    if guarded:
        assert not of(heard, SpeechStartedEvent)  # no false barge-in, no phantom turn
    else:
        assert of(heard, SpeechStartedEvent)  # the control: without the guard it fires


async def test_the_user_is_still_heard_over_the_echo(make, morning, story) -> None:
    fake = SpeakingBackbone(story)
    session, events = await make(
        fake, turn_detection=SERVER_VAD.model_copy(update={"echo_guard": True})
    )
    await feed(session, turn(morning))
    got = await events.until(ResponseFinished)
    mic = _echo_of(of(got, OutputAudioDelta), delay_s=0.15, gain=0.5)
    start = INPUT_SAMPLE_RATE  # the user talks one second into the echo
    mic[start : start + len(morning)] += morning
    await feed(session, mic)
    assert of(events.ready(), SpeechStartedEvent)


def test_the_echo_reference_stays_bounded_when_no_audio_comes_in() -> None:
    """A client that listens without sending audio never moves the input on: the reference of
    what was sent must not grow without end (memory), nor cost more per chunk as it grows."""
    guard = EchoGuard()
    chunk = 0.1 * np.random.default_rng(0).standard_normal(INPUT_SAMPLE_RATE // 5)  # 200 ms
    chunk = chunk.astype(np.float32)
    chunks = int((MAX_REFERENCE_S + 60) * 5)
    for _ in range(chunks):
        guard.play(chunk, sent_at=0)
    held = guard._reference(0, chunks * len(chunk))
    kept = np.flatnonzero(held)
    assert len(kept) <= MAX_REFERENCE_S * INPUT_SAMPLE_RATE
    assert kept[-1] == chunks * len(chunk) - 1  # the newest is kept, the oldest dropped
    # What was kept still cancels: the echo of the newest audio is taken out.
    position = chunks * len(chunk) - INPUT_SAMPLE_RATE
    cleaned = [guard.clean(0.5 * chunk, position + i * len(chunk)) for i in range(5)]
    assert np.abs(cleaned[-1]).max() < 0.01


# --- truncation -----------------------------------------------------------------------------


async def test_truncation_keeps_what_the_user_heard(make) -> None:
    fake = FakeBackbone(reply=["one ", "two ", "three "])  # 100 ms of audio per piece
    session, events = await make(fake, turn_detection=None)
    await session.add_item(_user("count"))
    await session.create_response(ResponseRequest())
    answer = only(await events.until(ResponseFinished), ResponseFinished).response.items[0]
    assert 295 <= answer.audio_ms <= 300
    await session.truncate_item(answer.id, 0, 150)  # heard "one" and half of "two"
    assert only(await events.until(ItemTruncated), ItemTruncated).audio_end_ms == 150
    assert session.items[1].transcript == "one"  # the answer, in the conversation
    await session.create_response(ResponseRequest())
    await events.until(ResponseFinished)
    assert fake.respond_calls[-1].conversation[1] == Turn(Role.ASSISTANT, "one")
    for item_id, index, end_ms, code in [
        (session.items[0].id, 0, 10, "invalid_value"),  # a user item
        (answer.id, 1, 10, "invalid_value"),
        (answer.id, 0, 151, "invalid_value"),  # past what is left of it
        ("item_missing", 0, 10, "item_truncate_invalid_item_id"),
    ]:
        with pytest.raises(SessionRejected) as refused:
            await session.truncate_item(item_id, index, end_ms)
        assert refused.value.code == code
    assert session.items[1].status is ItemStatus.COMPLETED


def _user(text: str):
    from voxgate.streaming.events import Item
    from voxgate.streaming.session import new_id

    return Item(new_id("item"), Role.USER, text=text)


def test_turn_detection_defaults_take_turns_naturally() -> None:
    td = TurnDetection()
    assert td.echo_guard and td.speculative_start_ms is None and td.min_interruption_ms == 250
    assert isinstance(Events, type)
