"""`RealtimeSession` driven directly: the fake backbone, the real silero VAD and real Piper speech.

Each test feeds audio or calls a session method, then reads `session.events` up to the event it
waits for (bounded by a count and a timeout), and asserts on the sequence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from direct_session import (
    LEAD_S,
    SERVER_VAD,
    TAIL_S,
    feed,
    kinds,
    of,
    only,
    pieces,
    silence,
    to_wire,
    turn,
)
from fakes import FakeBackbone

from voxgate.model.types import INPUT_SAMPLE_RATE, Role, Turn
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.config import SessionLimits, Transcription, TurnDetection
from voxgate.streaming.events import (
    ErrorReported,
    InputCommitted,
    InputTranscribed,
    InputTranscriptionFailed,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemRetrieved,
    ItemStatus,
    OutputAudioDelta,
    OutputItemStarted,
    OutputTextDelta,
    ResponseFinished,
    ResponseStarted,
    ResponseStatus,
    SessionConfigured,
    SpeechStartedEvent,
    SpeechStoppedEvent,
)
from voxgate.streaming.session import (
    MIN_COMMIT_MS,
    RealtimeSession,
    ResponseRequest,
    SessionRejected,
    older_voices_kept,
)
from voxgate.streaming.turns import InputAudioBuffer, TurnDetector, TurnEnded
from voxgate.streaming.vad import SileroModel, SileroVad, SpeechStarted, SpeechStopped, VadParams

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def hello(speak) -> np.ndarray:
    return speak("Hello there, how are you today?")


@pytest.fixture(scope="module")
def question(speak) -> np.ndarray:
    return speak("What time is it in Paris?")


async def rejected(call, code: str, param: str | None = None) -> SessionRejected:
    with pytest.raises(SessionRejected) as refused:
        await call
    assert refused.value.code == code
    if param is not None:
        assert refused.value.param == param
    return refused.value


# --- server VAD turns -----------------------------------------------------------------------


async def test_server_vad_turn_is_answered(make, hello: np.ndarray) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    await feed(session, turn(hello))
    got = await events.until(ResponseFinished)
    assert kinds(got) == [
        "SpeechStartedEvent",
        "SpeechStoppedEvent",
        "InputCommitted",
        "ItemAdded",
        "InputTranscribed",
        "ItemDone",
        "ResponseStarted",
        "OutputItemStarted",
        "deltas",
        "OutputItemFinished",
        "ResponseFinished",
    ]
    started, stopped = only(got, SpeechStartedEvent), only(got, SpeechStoppedEvent)
    speech_end_ms = (LEAD_S + len(hello) / INPUT_SAMPLE_RATE) * 1000
    assert 0 <= started.audio_start_ms <= LEAD_S * 1000
    assert abs(stopped.audio_end_ms - speech_end_ms) <= 120
    user_id = started.item_id
    assert stopped.item_id == only(got, InputCommitted).item_id == user_id
    assert only(got, InputCommitted).previous_item_id is None
    assert only(got, ItemAdded).item.id == user_id
    assert only(got, InputTranscribed).transcript == "hello"
    assert only(got, ItemDone).item.transcript == "hello"

    # The ASR heard the turn: its speech, the prefix padding and the silence that ended it.
    (asr,) = fake.transcribe_calls
    assert len(hello) < len(asr.audio) < len(hello) + INPUT_SAMPLE_RATE
    assert np.sqrt(np.mean(asr.audio**2)) > 0.02

    finished = only(got, ResponseFinished).response
    assert finished.status is ResponseStatus.COMPLETED
    (item,) = finished.items
    assert only(got, OutputItemStarted).previous_item_id == user_id
    assert (item.role, item.audio, item.status) == (Role.ASSISTANT, True, ItemStatus.COMPLETED)
    assert item.transcript == fake.reply_text
    assert "".join(e.delta for e in of(got, OutputTextDelta)) == fake.reply_text
    # Two 100 ms pieces of 22.05 kHz tone, as 24 kHz pcm16: 4800 samples give or take the
    # resampler's edges.
    sent = b"".join(e.audio for e in of(got, OutputAudioDelta))
    assert abs(len(sent) // 2 - 4800) <= 4
    assert all(len(e.audio) <= 200 * 24 * 2 for e in of(got, OutputAudioDelta))
    assert [i.id for i in session.items] == [user_id, item.id]

    (call,) = fake.respond_calls
    assert call.conversation == [Turn(Role.USER, "hello")]
    assert call.outcome == "finished"
    assert (call.options.request_id, call.options.voice, call.options.audio) == (
        finished.id,
        "joe",
        True,
    )
    marks = finished.trace.marks
    assert marks["speech_end"] <= marks["turn_end"] <= marks["asr_start"] <= marks["asr_end"]
    assert marks["asr_end"] <= marks["lm_submit"]


async def test_two_turns_build_the_conversation(make, hello, question) -> None:
    answers = iter(["hello", "what time is it"])
    fake = FakeBackbone(transcript=lambda _: next(answers))
    session, events = await make(fake)
    await feed(session, turn(hello))
    first = only(await events.until(ResponseFinished), ResponseFinished).response
    await feed(session, turn(question))
    got = await events.until(ResponseFinished)
    assert only(got, InputCommitted).previous_item_id == first.items[0].id
    assert [c.conversation for c in fake.respond_calls] == [
        [Turn(Role.USER, "hello")],
        [
            Turn(Role.USER, "hello"),
            Turn(Role.ASSISTANT, fake.reply_text),
            Turn(Role.USER, "what time is it"),
        ],
    ]
    assert [(i.role, i.content_text) for i in session.items] == [
        (Role.USER, "hello"),
        (Role.ASSISTANT, fake.reply_text),
        (Role.USER, "what time is it"),
        (Role.ASSISTANT, fake.reply_text),
    ]
    # The backbone hears the newest user turns' voices (audio_turns_kept of them).
    first_heard, second_heard = (c.heard for c in fake.respond_calls)
    assert first_heard[0] is not None and abs(len(first_heard[0]) - len(turn(hello))) < 16000
    assert [h is None for h in second_heard] == [False, True, False]


async def test_only_the_newest_user_voices_are_kept(make, hello, question) -> None:
    fake = FakeBackbone(transcript="hi")
    limits = SessionLimits(audio_turns_kept=2, event_queue_size=4096)
    session, events = await make(fake, limits)
    for speech in (hello, question, hello):
        await feed(session, turn(speech))
        await events.until(ResponseFinished)
    users = [i for i in session.items if i.role is Role.USER]
    # Older turns live on as transcripts only: memory per session stays bounded. They go in a
    # block (the third voice leaves one, the new), so prompts change there less often.
    assert [i.samples is None for i in users] == [True, True, False]
    assert [h is None for h in fake.respond_calls[-1].heard] == [True, True, True, True, False]


def test_user_voices_are_dropped_in_blocks() -> None:
    kept, history = 0, []
    for _ in range(10):
        kept = older_voices_kept(kept, 4) + 1
        history.append(kept)
    assert history == [1, 2, 3, 4, 2, 3, 4, 2, 3, 4]
    assert older_voices_kept(0, 1) == 0 and older_voices_kept(1, 1) == 0


async def test_a_turn_without_words_is_not_answered(make, hello, question) -> None:
    answers = iter(["", "what time is it"])
    fake = FakeBackbone(transcript=lambda _: next(answers))
    session, events = await make(fake)
    await feed(session, turn(hello))
    empty = only(await events.until(ItemDone), ItemDone).item
    assert empty.transcript == ""
    await feed(session, turn(question))
    got = await events.until(ResponseFinished)
    # The only response is the second turn's, and it never saw the empty one.
    assert len(of(events.seen, ResponseStarted)) == 1
    assert kinds(got)[:2] == ["SpeechStartedEvent", "SpeechStoppedEvent"]
    (call,) = fake.respond_calls
    assert call.conversation == [Turn(Role.USER, "what time is it")]


async def test_barge_in_cancels_the_response(make, hello, question) -> None:
    fake = FakeBackbone(reply=["word "] * 500, chunk_delay_s=0.02)
    session, events = await make(fake)
    await feed(session, turn(hello))
    await events.until(OutputAudioDelta)
    await feed(session, question)  # the user speaks over the answer
    got = await events.until(ResponseFinished)
    assert kinds(got)[-3:] == ["SpeechStartedEvent", "OutputItemFinished", "ResponseFinished"]
    response = only(got, ResponseFinished).response
    assert (response.status, response.reason) == (ResponseStatus.CANCELLED, "turn_detected")
    (item,) = response.items
    assert item.status is ItemStatus.INCOMPLETE
    assert 0 < len(item.transcript) < len(fake.reply_text)
    (call,) = fake.respond_calls
    assert call.stopped_early
    assert session.items[-1].snapshot() == item  # the partial answer stays in the conversation


async def test_barge_in_is_heard_while_unsent_audio_piles_up(make, hello, question) -> None:
    # No delay between chunks: the answer fills the outbox at once while nobody reads it.
    fake = FakeBackbone(reply=["word "] * 500)
    session, events = await make(fake, SessionLimits(event_queue_size=16))
    await feed(session, turn(hello))
    await events.until(OutputAudioDelta)
    # The user talks over the answer while the client is busy sending: the session must hear
    # it without waiting for the client to read the audio backlog first.
    await asyncio.wait_for(feed(session, question), 10)
    got = await events.until(ResponseFinished)
    response = only(got, ResponseFinished).response
    assert (response.status, response.reason) == (ResponseStatus.CANCELLED, "turn_detected")
    stale = [e for e in got if isinstance(e, OutputAudioDelta)]
    assert len(stale) < 8  # the unsent audio of the interrupted answer was taken back
    assert fake.respond_calls[0].stopped_early


async def test_speech_while_waiting_for_asr_drops_that_answer(make, hello, question) -> None:
    """The user goes on speaking before their last turn was answered: answer once, both turns."""
    fake = FakeBackbone()
    fake.transcribe_gate = asyncio.Event()
    session, events = await make(fake)
    await feed(session, turn(hello))
    await events.until(ItemAdded)
    await feed(session, question[: len(question) // 2])
    await events.until(SpeechStartedEvent)
    fake.transcribe_gate.set()
    await feed(session, np.concatenate([question[len(question) // 2 :], silence(TAIL_S)]))
    await events.until(ResponseFinished)
    (call,) = fake.respond_calls
    assert call.conversation == [Turn(Role.USER, "hello"), Turn(Role.USER, "hello")]


async def test_without_interrupt_response_the_next_turn_waits(make, hello, question) -> None:
    fake = FakeBackbone(reply=["word "] * 60, chunk_delay_s=0.02)
    session, events = await make(
        fake, turn_detection=SERVER_VAD.model_copy(update={"interrupt_response": False})
    )
    await feed(session, turn(hello))
    await events.until(OutputAudioDelta)
    await feed(session, turn(question))
    first = only(await events.until(ResponseFinished), ResponseFinished).response
    second = only(await events.until(ResponseFinished), ResponseFinished).response
    assert first.status is second.status is ResponseStatus.COMPLETED
    assert [c.outcome for c in fake.respond_calls] == ["finished", "finished"]
    assert fake.respond_calls[1].conversation[-1] == Turn(Role.USER, "hello")
    assert len(fake.respond_calls[1].conversation) == 3
    # The second answer still knows when its turn ended.
    assert {"speech_end", "turn_end", "asr_end"} <= second.trace.marks.keys()


async def test_clear_during_speech_forgets_the_turn(make, hello, question) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    await feed(session, np.concatenate([silence(LEAD_S), hello[: len(hello) // 2]]))
    await events.until(SpeechStartedEvent)
    await session.clear()
    await feed(session, silence(TAIL_S))
    assert kinds(events.ready()) == ["InputCleared"]
    await feed(session, turn(question))
    got = await events.until(ResponseFinished)
    assert kinds(got)[:3] == ["SpeechStartedEvent", "SpeechStoppedEvent", "InputCommitted"]
    (asr,) = fake.transcribe_calls
    assert len(asr.audio) < len(question) + INPUT_SAMPLE_RATE


async def test_a_long_monologue_is_ended_at_the_buffer_bound(make, speak) -> None:
    long = speak("Hello there, I would like to tell you a long story about my holidays.")
    assert len(long) > 2.5 * INPUT_SAMPLE_RATE
    fake = FakeBackbone()
    limits = SessionLimits(max_buffer_seconds=1.5, event_queue_size=4096)
    session, events = await make(fake, limits)
    await feed(session, long)  # no silence at all
    got = await events.until(ItemDone)
    assert kinds(got)[:4] == [
        "SpeechStartedEvent",
        "SpeechStoppedEvent",
        "InputCommitted",
        "ItemAdded",
    ]
    assert len(fake.transcribe_calls[0].audio) <= 1.5 * INPUT_SAMPLE_RATE


async def test_an_append_larger_than_the_buffer_is_refused(make, hello) -> None:
    fake = FakeBackbone()
    limits = SessionLimits(max_buffer_seconds=0.5, event_queue_size=4096)
    session, events = await make(fake, limits)
    await rejected(session.append_audio(to_wire(silence(0.8))), "input_audio_buffer_full")
    await feed(session, turn(hello[: INPUT_SAMPLE_RATE // 4]))
    assert "SpeechStartedEvent" in kinds(events.ready())


# --- streaming equals batch -----------------------------------------------------------------


def detect(samples: np.ndarray, model: SileroModel, chunk: int) -> list[tuple[str, int]]:
    buffer = InputAudioBuffer(60.0)
    detector = TurnDetector(SileroVad(model), VadParams(), buffer)
    out: list[Any] = []
    for start in range(0, len(samples), chunk):
        for event in detector.feed(samples[start : start + chunk]):
            match event:
                case SpeechStarted(audio_start_ms=ms):
                    out.append(("started", ms))
                case SpeechStopped(audio_end_ms=ms):
                    out.append(("stopped", ms))
                case TurnEnded(audio=turn_audio):
                    out.append(("audio", turn_audio))
    return out


def test_turn_detector_streaming_equals_batch(silero, hello, question) -> None:
    samples = np.concatenate([turn(hello), question, silence(TAIL_S)])
    batch = detect(samples, silero, len(samples))
    assert [kind for kind, _ in batch] == ["started", "stopped", "audio"] * 2
    for chunk in (320, 1600, 777, 8000):
        streamed = detect(samples, silero, chunk)
        assert [k for k, _ in streamed] == [k for k, _ in batch]
        for (kind, got), (_, want) in zip(streamed, batch, strict=True):
            if kind == "audio":
                np.testing.assert_array_equal(got, want, err_msg=f"chunk {chunk}")
            else:
                assert got == want, f"{kind} at chunk {chunk}"
    # Each turn holds its own speech, not the next one's.
    first, second = batch[2][1], batch[5][1]
    assert len(hello) < len(first) < len(hello) + INPUT_SAMPLE_RATE
    assert len(question) < len(second) < len(question) + INPUT_SAMPLE_RATE


async def test_session_turn_times_do_not_depend_on_chunking(make, hello, question) -> None:
    samples = np.concatenate([turn(hello), question, silence(TAIL_S)])
    times = []
    for chunk_ms in [(20,), (100,), (35, 90, 20)]:
        session, events = await make(
            FakeBackbone(), turn_detection=TurnDetection(create_response=False)
        )
        await feed(session, samples, chunk_ms)
        times.append(
            [
                ("started", e.audio_start_ms)
                if isinstance(e, SpeechStartedEvent)
                else ("stopped", e.audio_end_ms)
                for e in events.ready()
                if isinstance(e, SpeechStartedEvent | SpeechStoppedEvent)
            ]
        )
    assert len(times[0]) == 4
    assert times[0] == times[1] == times[2]


# --- manual turns (turn_detection None) -----------------------------------------------------


async def test_manual_commit_then_response(make, hello) -> None:
    fake = FakeBackbone()
    session, events = await make(fake, turn_detection=None)
    await feed(session, hello)
    assert events.ready() == []  # no VAD: nothing happens until the client commits
    await session.commit()
    got = await events.until(ItemDone)
    assert kinds(got) == ["InputCommitted", "ItemAdded", "InputTranscribed", "ItemDone"]
    assert fake.respond_calls == []  # a manual commit is answered only when asked
    (asr,) = fake.transcribe_calls
    assert abs(len(asr.audio) - len(hello)) <= 2
    await session.create_response(ResponseRequest())
    got = await events.until(ResponseFinished)
    assert kinds(got) == [
        "ResponseStarted",
        "OutputItemStarted",
        "deltas",
        "OutputItemFinished",
        "ResponseFinished",
    ]
    response = only(got, ResponseFinished).response
    assert response.status is ResponseStatus.COMPLETED
    assert fake.respond_calls[0].conversation == [Turn(Role.USER, "hello")]
    # The response answers the committed turn: its stages are timed on that turn's trace.
    assert {"turn_end", "asr_start", "asr_end"} <= response.trace.marks.keys()
    await session.create_response(ResponseRequest())  # a second answer is not that turn's
    again = only(await events.until(ResponseFinished), ResponseFinished).response
    assert "asr_start" not in again.trace.marks


async def test_response_right_after_commit_waits_for_the_transcript(make, hello) -> None:
    fake = FakeBackbone()
    fake.transcribe_gate = asyncio.Event()
    session, events = await make(fake, turn_detection=None)
    await feed(session, hello)
    await session.commit()
    await session.create_response(ResponseRequest())
    await events.until(ResponseStarted)
    assert fake.respond_calls == []
    fake.transcribe_gate.set()
    await events.until(ResponseFinished)
    assert fake.respond_calls[0].conversation == [Turn(Role.USER, "hello")]


async def test_commit_needs_100_ms(make) -> None:
    session, events = await make(FakeBackbone(), turn_detection=None)
    await rejected(session.commit(), "input_audio_buffer_commit_empty")
    await feed(session, silence((MIN_COMMIT_MS - 50) / 1000))
    await rejected(session.commit(), "input_audio_buffer_commit_empty")
    assert events.ready() == []


async def test_clear_empties_the_buffer(make, hello) -> None:
    fake = FakeBackbone()
    session, events = await make(fake, turn_detection=None)
    await feed(session, hello)
    await session.clear()
    assert kinds(events.ready()) == ["InputCleared"]
    await rejected(session.commit(), "input_audio_buffer_commit_empty")
    assert fake.transcribe_calls == []


async def test_manual_buffer_is_bounded(make) -> None:
    fake = FakeBackbone()
    limits = SessionLimits(max_buffer_seconds=0.5, event_queue_size=4096)
    session, events = await make(fake, limits, turn_detection=None)
    await session.append_audio(to_wire(silence(0.4)))
    await rejected(session.append_audio(to_wire(silence(0.4))), "input_audio_buffer_full", "audio")
    await session.commit()  # what was accepted is still there
    await events.until(ItemDone)
    # Within the resampler's look-ahead: the refused append went through the decoder.
    assert abs(len(fake.transcribe_calls[0].audio) - 0.4 * INPUT_SAMPLE_RATE) <= 0.005 * 16000


async def test_user_audio_item_is_transcribed(make, hello) -> None:
    fake = FakeBackbone()
    session, events = await make(fake, turn_detection=None)
    await session.add_item(Item("item_mine", Role.USER, audio=True), None, to_wire(hello))
    got = await events.until(ItemDone)
    assert kinds(got) == ["ItemAdded", "InputTranscribed", "ItemDone"]
    assert only(got, ItemDone).item.transcript == "hello"
    assert abs(len(fake.transcribe_calls[0].audio) - len(hello)) <= 2


async def test_failed_transcription_is_reported_and_not_answered(make, hello, question) -> None:
    def transcript(samples: np.ndarray) -> str:
        if len(fake.transcribe_calls) == 1:  # the first turn's
            raise RuntimeError("ASR crashed")
        return "what time is it"

    fake = FakeBackbone(transcript=transcript)
    session, events = await make(fake)
    await feed(session, turn(hello))
    got = await events.until(ItemDone)
    assert only(got, InputTranscriptionFailed).message == "ASR crashed"
    assert only(got, ItemDone).item.transcript == ""
    await feed(session, turn(question))
    await events.until(ResponseFinished)
    (call,) = fake.respond_calls
    assert call.conversation == [Turn(Role.USER, "what time is it")]


# --- responses ------------------------------------------------------------------------------


async def add_text(session: RealtimeSession, text: str, item_id: str = "item_text") -> None:
    await session.add_item(Item(item_id, Role.USER, text=text))


async def test_text_only_response(make) -> None:
    fake = FakeBackbone()
    session, events = await make(fake, audio_output=False)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    got = await events.until(ResponseFinished)
    assert kinds(got) == [
        "ItemAdded",
        "ItemDone",
        "ResponseStarted",
        "OutputItemStarted",
        "deltas",
        "OutputItemFinished",
        "ResponseFinished",
    ]
    assert of(got, OutputAudioDelta) == []
    assert [e.delta for e in of(got, OutputTextDelta)] == fake.reply
    response = only(got, ResponseFinished).response
    (item,) = response.items
    assert (item.audio, item.text, item.transcript) == (False, fake.reply_text, None)
    assert response.audio is False
    assert fake.respond_calls[0].options.audio is False
    assert fake.respond_calls[0].conversation == [Turn(Role.USER, "hi")]


async def test_response_request_overrides_the_session(make) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    await add_text(session, "hi")
    request = ResponseRequest(
        instructions="Be terse.",
        audio_output=True,
        output_format=AudioFormat.PCMU,
        max_output_tokens=10_000,
        metadata={"k": "v"},
    )
    await session.create_response(request)
    got = await events.until(ResponseFinished)
    response = only(got, ResponseFinished).response
    assert (response.audio_format, response.metadata) == ("audio/pcmu", {"k": "v"})
    assert response.max_output_tokens == fake.answer_budget.max_tokens  # capped
    options = fake.respond_calls[0].options
    assert (options.instructions, options.max_output_tokens) == ("Be terse.", 512)
    # G.711 at 8 kHz: one byte per sample, 200 ms of tone as 1600 bytes or so.
    sent = b"".join(e.audio for e in of(got, OutputAudioDelta))
    assert abs(len(sent) - 1600) <= 4


async def test_out_of_band_response_runs_beside_the_conversation(make) -> None:
    fake = FakeBackbone(reply=["word "] * 200, chunk_delay_s=0.02)
    session, events = await make(fake)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    await events.until(OutputTextDelta)
    fake.reply, fake.chunk_delay_s = ["Side note."], 0.0
    side = [Item("item_in", Role.USER, text="summarise")]
    await session.create_response(ResponseRequest(in_conversation=False, input_items=side))
    got = await events.until(ResponseFinished)
    response = only(got, ResponseFinished).response
    assert (response.in_conversation, response.status) == (False, ResponseStatus.COMPLETED)
    assert fake.respond_calls[1].conversation == [Turn(Role.USER, "summarise")]
    assert response.items[0] not in session.items
    await session.cancel_response(None)  # the in-conversation one is still running
    main = only(await events.until(ResponseFinished), ResponseFinished).response
    assert (main.in_conversation, main.status) == (True, ResponseStatus.CANCELLED)


async def test_client_cancel(make) -> None:
    fake = FakeBackbone(reply=["word "] * 500, chunk_delay_s=0.02)
    session, events = await make(fake)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    await events.until(OutputAudioDelta)
    await rejected(
        session.create_response(ResponseRequest()),
        "conversation_already_has_active_response",
    )
    await rejected(session.cancel_response("resp_other"), "invalid_value", "response_id")
    await session.cancel_response(None)
    got = events.ready()  # cancel_response returns once the response has reported
    assert kinds(got)[-2:] == ["OutputItemFinished", "ResponseFinished"]
    response = only(got, ResponseFinished).response
    assert (response.status, response.reason) == (ResponseStatus.CANCELLED, "client_cancelled")
    assert fake.respond_calls[0].stopped_early
    await rejected(session.cancel_response(None), "response_cancel_not_active")
    fake.reply, fake.chunk_delay_s = ["Ok."], 0.0
    await session.create_response(ResponseRequest())  # the session is free again
    done = only(await events.until(ResponseFinished), ResponseFinished).response
    assert done.status is ResponseStatus.COMPLETED


async def test_cancel_with_no_response(make) -> None:
    session, events = await make(FakeBackbone())
    refused = await rejected(session.cancel_response(None), "response_cancel_not_active")
    # OpenAI's words: LiveKit's barge-in cancel can arrive after the response ended, and it
    # recognises this refusal by them (anything else it reports as a failed generation).
    assert str(refused).startswith("Cancellation failed")
    await rejected(session.cancel_response("resp_x"), "response_cancel_not_active")
    assert events.ready() == []


async def test_cancel_at_once_after_create(make) -> None:
    """response.create and response.cancel back to back: the response task has not run yet."""
    fake = FakeBackbone()
    session, events = await make(fake)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    await session.cancel_response(None)
    got = await events.until(ResponseFinished)
    assert kinds(got)[-1:] == ["ResponseFinished"]
    response = only(got, ResponseFinished).response
    assert only(got, ResponseStarted).response.id == response.id
    assert (response.status, response.reason) == (ResponseStatus.CANCELLED, "client_cancelled")
    await session.create_response(ResponseRequest())
    done = only(await events.until(ResponseFinished), ResponseFinished).response
    assert done.status is ResponseStatus.COMPLETED


async def test_cancel_while_waiting_for_the_transcript(make, hello) -> None:
    fake = FakeBackbone()
    fake.transcribe_gate = asyncio.Event()
    session, events = await make(fake, turn_detection=None)
    await feed(session, hello)
    await session.commit()
    await session.create_response(ResponseRequest())
    await events.until(ResponseStarted)
    await session.cancel_response(None)
    got = await events.until(ResponseFinished)
    assert only(got, ResponseFinished).response.status is ResponseStatus.CANCELLED
    assert fake.respond_calls == []
    fake.transcribe_gate.set()
    await events.until(ItemDone)
    await session.create_response(ResponseRequest())
    done = only(await events.until(ResponseFinished), ResponseFinished).response
    assert done.status is ResponseStatus.COMPLETED


async def test_response_cut_by_max_output_tokens_is_incomplete(make) -> None:
    fake = FakeBackbone(finish_reason="length")
    session, events = await make(fake)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    response = only(await events.until(ResponseFinished), ResponseFinished).response
    assert (response.status, response.reason) == (ResponseStatus.INCOMPLETE, "max_output_tokens")
    assert (response.input_tokens, response.output_tokens) == (11, 7)
    assert response.items[0].status is ItemStatus.INCOMPLETE


async def test_backbone_failure_fails_the_response(make) -> None:
    fake = FakeBackbone(fail_after=1)
    session, events = await make(fake)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    got = await events.until(ResponseFinished)
    assert kinds(got)[-2:] == ["ErrorReported", "ResponseFinished"]  # the error comes first
    response = only(got, ResponseFinished).response
    assert response.status is ResponseStatus.FAILED
    assert response.error == ("backbone_error", "the fake backbone failed on purpose")
    error = only(got, ErrorReported)
    assert (error.code, error.type) == ("backbone_error", "server_error")
    await session.create_response(ResponseRequest())  # nothing is left running
    await events.until(ResponseFinished)


async def test_a_transcription_prompt_the_backbone_cannot_use_is_refused(make) -> None:
    fake = FakeBackbone()
    fake.takes_transcription_prompt = False
    session, _events = await make(fake)
    before = session.config
    hinted = Transcription(model="whisper-1", prompt="Names: Ada, Grace")
    await rejected(
        session.configure(before.model_copy(update={"transcription": hinted})),
        "unsupported_parameter",
        "session.audio.input.transcription.prompt",
    )
    assert session.config is before
    plain = Transcription(model="whisper-1")
    await session.configure(before.model_copy(update={"transcription": plain}))
    assert session.config.transcription == plain


async def test_unknown_voice_is_refused(make) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    before = session.config
    await rejected(
        session.configure(before.model_copy(update={"voice": "nobody"})),
        "invalid_value",
        "session.audio.output.voice",
    )
    assert session.config is before
    await add_text(session, "hi")
    await rejected(
        session.create_response(ResponseRequest(voice="nobody")),
        "invalid_value",
        "response.audio.output.voice",
    )
    assert fake.respond_calls == []
    assert not of(events.ready(), ResponseStarted)


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
async def test_g711_input_after_a_format_change(make, hello, fmt: AudioFormat) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    await session.configure(session.config.model_copy(update={"input_format": fmt}))
    for piece in pieces(to_wire(turn(hello), fmt), fmt=fmt):
        await session.append_audio(piece)
    got = await events.until(ItemDone)
    assert kinds(got)[:3] == ["SessionConfigured", "SpeechStartedEvent", "SpeechStoppedEvent"]
    speech_end_ms = (LEAD_S + len(hello) / INPUT_SAMPLE_RATE) * 1000
    assert abs(only(got, SpeechStoppedEvent).audio_end_ms - speech_end_ms) <= 120
    (asr,) = fake.transcribe_calls
    assert len(hello) < len(asr.audio) < len(hello) + INPUT_SAMPLE_RATE


async def test_configure_announces_the_new_config(make, hello) -> None:
    fake = FakeBackbone()
    session, events = await make(fake)
    manual = session.config.model_copy(update={"turn_detection": None, "voice": "joe"})
    await session.configure(manual)
    configured = only(events.ready(), SessionConfigured)
    assert (configured.created, configured.config) == (False, manual)
    await feed(session, turn(hello))  # VAD off now: no turn events
    assert events.ready() == []


# --- the conversation -----------------------------------------------------------------------


async def test_conversation_is_bounded(make) -> None:
    limits = SessionLimits(max_items=3, event_queue_size=4096)
    session, events = await make(FakeBackbone(), limits)
    for i in range(5):
        await add_text(session, f"text {i}", f"item_{i}")
    assert [i.id for i in session.items] == ["item_2", "item_3", "item_4"]
    added = of(events.ready(), ItemAdded)
    assert [e.previous_item_id for e in added] == [None, "item_0", "item_1", "item_2", "item_3"]
    # An item inserted at the start of a full conversation is kept; the oldest other goes.
    await session.add_item(Item("item_first", Role.SYSTEM, text="be kind"), "root")
    assert [i.id for i in session.items] == ["item_first", "item_3", "item_4"]
    assert only(events.ready(), ItemAdded).previous_item_id is None
    await session.add_item(Item("item_mid", Role.USER, text="x"), "item_3")
    assert [i.id for i in session.items] == ["item_3", "item_mid", "item_4"]
    assert only(events.ready(), ItemAdded).previous_item_id == "item_3"


async def test_items_can_be_inserted_retrieved_and_deleted(make) -> None:
    session, events = await make(FakeBackbone())
    await add_text(session, "one", "item_1")
    await add_text(session, "two", "item_2")
    await session.add_item(Item("item_0", Role.USER, text="zero"), "root")
    await session.add_item(Item("item_15", Role.USER, text="x"), "item_1")
    assert [i.id for i in session.items] == ["item_0", "item_1", "item_15", "item_2"]
    await rejected(
        session.add_item(Item("item_1", Role.USER, text="again")), "item_create_duplicate_item_id"
    )
    await rejected(
        session.add_item(Item("item_9", Role.USER, text="x"), "item_nope"),
        "item_not_found",
        "previous_item_id",
    )
    await session.retrieve_item("item_15")
    await session.delete_item("item_15")
    # OpenAI's codes and words for an unknown id, per action (frameworks key on them).
    await rejected(session.delete_item("item_15"), "item_delete_invalid_item_id", "item_id")
    refused = await rejected(
        session.retrieve_item("item_15"), "item_retrieve_invalid_item_id", "item_id"
    )
    assert str(refused) == "Error retrieving item: the item with id 'item_15' does not exist."
    got = events.ready()
    assert only(got, ItemRetrieved).item.text == "x"
    assert only(got, ItemDeleted).item_id == "item_15"
    assert [i.id for i in session.items] == ["item_0", "item_1", "item_2"]


async def test_report_error_is_queued_in_order(make) -> None:
    session, events = await make(FakeBackbone())
    await add_text(session, "hi")
    await session.report_error(ErrorReported("invalid_json", "bad", event_id="e1"))
    assert kinds(events.ready()) == ["ItemAdded", "ItemDone", "ErrorReported"]


async def test_inf_output_tokens_means_the_cap(make) -> None:
    fake = FakeBackbone()
    session, events = await make(fake, SessionLimits(max_output_tokens=77), max_output_tokens=None)
    await add_text(session, "hi")
    await session.create_response(ResponseRequest())
    assert (
        only(await events.until(ResponseFinished), ResponseFinished).response.max_output_tokens
        == 77
    )
    await session.create_response(ResponseRequest(max_output_tokens="inf"))
    assert (
        only(await events.until(ResponseFinished), ResponseFinished).response.max_output_tokens
        == 77
    )
    await session.create_response(ResponseRequest(max_output_tokens=5))
    assert (
        only(await events.until(ResponseFinished), ResponseFinished).response.max_output_tokens == 5
    )


async def test_a_refused_append_leaves_the_input_untouched(make, hello) -> None:
    session, _ = await make(
        FakeBackbone(), SessionLimits(max_buffer_seconds=1.0), turn_detection=None
    )
    await session.append_audio(to_wire(hello[:8000]))  # 0.5 s
    with pytest.raises(SessionRejected) as refused:
        await session.append_audio(to_wire(hello[:16000]))  # 1 s more does not fit
    assert refused.value.code == "input_audio_buffer_full"
    await session.commit()
    committed = session.items[-1]
    assert committed.audio
    # Only the first 0.5 s (and its resampler tail) was committed: nothing of the refused append.
    assert abs(session._buffer.start - 8000) <= 16
