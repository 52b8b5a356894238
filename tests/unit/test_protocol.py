"""The wire protocol against the official `openai` SDK's types.

Server events: every kind the server emits is built from domain events by `Outgoing` and must
validate, as sent, as the SDK's `RealtimeServerEvent`. Client events: what the SDK sends must
parse, map onto `SessionConfig`, and every refusal must carry the right code and param.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import openai.types.realtime as sdk
import pytest
from pydantic import ValidationError
from realtime_wire import SERVER_EVENT

from voxgate.model.types import Role, TurnTrace
from voxgate.server import outgoing, protocol, translate
from voxgate.server.errors import validation_error
from voxgate.server.outgoing import Outgoing
from voxgate.server.protocol import CLIENT_EVENT, Unsupported
from voxgate.server.translate import session_config
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.config import SessionConfig, SessionLimits, Transcription, TurnDetection
from voxgate.streaming.events import (
    ErrorReported,
    InputCleared,
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
    OutputItemFinished,
    OutputItemStarted,
    OutputTextDelta,
    Response,
    ResponseFinished,
    ResponseStarted,
    ResponseStatus,
    SessionConfigured,
    SpeechStartedEvent,
    SpeechStoppedEvent,
)
from voxgate.streaming.session import SessionRejected
from voxgate.streaming.vad import VadParams

MODEL = "voxgate-fake"
CONFIG = SessionConfig(instructions="Be brief.", voice="joe")
LIMITS = SessionLimits()


def wire(*events: Any) -> list[dict[str, Any]]:
    """The wire events of session events, as the client reads them."""
    translator = Outgoing("sess_test", MODEL)
    return [json.loads(w.to_json()) for event in events for w in translator.wire_events(event)]


def wire_session(config: SessionConfig, noise_suppressor: str | None = None) -> dict[str, Any]:
    session = outgoing.wire_session(config, "sess_1", "m", noise_suppressor)
    return session.model_dump(mode="json")


def validated(event: dict[str, Any]) -> Any:
    """The SDK's model of one wire event; it must survive JSON, as on the socket."""
    parsed = SERVER_EVENT.validate_python(json.loads(json.dumps(event)))
    assert parsed.type == event["type"]
    assert parsed.event_id == event["event_id"]
    return parsed


def one(event: Any) -> Any:
    (only,) = wire(event)
    return validated(only)


def response(*, audio: bool = True, in_conversation: bool = True, **kw: Any) -> Response:
    return Response(
        id="resp_1",
        audio=audio,
        voice="joe",
        audio_format="audio/pcm",
        in_conversation=in_conversation,
        max_output_tokens=256,
        **kw,
    )


def assistant_item(audio: bool) -> Item:
    return Item(
        "item_a",
        Role.ASSISTANT,
        audio=audio,
        transcript="" if audio else None,
        status=ItemStatus.IN_PROGRESS,
    )


# --- server events: session -----------------------------------------------------------------


def test_session_created_carries_the_configuration() -> None:
    config = CONFIG.model_copy(
        update={
            "input_format": AudioFormat.PCMU,
            "output_format": AudioFormat.PCMA,
            "transcription": Transcription(model="whisper-1", language="en"),
            "turn_detection": TurnDetection(
                vad=VadParams(threshold=0.6, silence_duration_ms=700), interrupt_response=False
            ),
            "speed": 1.25,
        }
    )
    parsed = one(SessionConfigured(config, created=True))
    assert parsed.type == "session.created"
    session = parsed.session
    assert isinstance(session, sdk.RealtimeSessionCreateRequest)
    assert (session.id, session.model, session.instructions) == ("sess_test", MODEL, "Be brief.")
    assert session.output_modalities == ["audio"]
    assert session.audio.input.format.type == "audio/pcmu"
    assert session.audio.output.format.type == "audio/pcma"
    assert session.audio.output.voice == "joe"
    assert session.audio.output.speed == 1.25
    assert session.audio.input.transcription.model == "whisper-1"
    assert session.audio.input.transcription.language == "en"
    vad = session.audio.input.turn_detection
    assert (vad.type, vad.threshold, vad.silence_duration_ms) == ("server_vad", 0.6, 700)
    assert (vad.prefix_padding_ms, vad.create_response, vad.interrupt_response) == (
        300,
        True,
        False,
    )


def test_session_updated_without_turn_detection_or_transcription() -> None:
    config = CONFIG.model_copy(
        update={"turn_detection": None, "transcription": None, "audio_output": False}
    )
    parsed = one(SessionConfigured(config, created=False))
    assert parsed.type == "session.updated"
    assert parsed.session.audio.input.turn_detection is None
    assert parsed.session.audio.input.transcription is None
    assert parsed.session.audio.input.format.type == "audio/pcm"
    assert parsed.session.audio.input.format.rate == 24000
    assert parsed.session.output_modalities == ["text"]


# --- server events: input audio buffer and items --------------------------------------------


def test_input_audio_buffer_events() -> None:
    started = one(SpeechStartedEvent("item_1", 120))
    assert (started.type, started.item_id, started.audio_start_ms) == (
        "input_audio_buffer.speech_started",
        "item_1",
        120,
    )
    stopped = one(SpeechStoppedEvent("item_1", 980))
    assert (stopped.type, stopped.audio_end_ms) == ("input_audio_buffer.speech_stopped", 980)
    committed = one(InputCommitted("item_2", "item_1"))
    assert (committed.type, committed.item_id, committed.previous_item_id) == (
        "input_audio_buffer.committed",
        "item_2",
        "item_1",
    )
    assert one(InputCommitted("item_1", None)).previous_item_id is None
    assert one(InputCleared()).type == "input_audio_buffer.cleared"


ITEMS = {
    "user audio, transcript pending": (Item("item_u", Role.USER, audio=True), "input_audio", None),
    "user audio": (Item("item_u", Role.USER, audio=True, transcript="hi"), "input_audio", "hi"),
    "user text": (Item("item_u", Role.USER, text="typed"), "input_text", "typed"),
    "system text": (Item("item_s", Role.SYSTEM, text="be kind"), "input_text", "be kind"),
    "assistant audio": (
        Item("item_a", Role.ASSISTANT, audio=True, transcript="Hi."),
        "output_audio",
        "Hi.",
    ),
    "assistant text": (Item("item_a", Role.ASSISTANT, text="Hi."), "output_text", "Hi."),
}


@pytest.mark.parametrize("name", ITEMS)
def test_items_added_done_retrieved(name: str) -> None:
    item, part_type, words = ITEMS[name]
    added = one(ItemAdded(item, "item_0"))
    done = one(ItemDone(item))
    retrieved = one(ItemRetrieved(item))
    assert (added.type, done.type, retrieved.type) == (
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
    )
    assert added.previous_item_id == "item_0"
    for parsed in (added, done, retrieved):
        assert (parsed.item.id, parsed.item.type, parsed.item.role) == (
            item.id,
            "message",
            item.role.value,
        )
        assert parsed.item.status == "completed"
        (part,) = parsed.item.content
        assert part.type == part_type
        assert (part.transcript if item.audio else part.text) == words


def test_item_deleted() -> None:
    parsed = one(ItemDeleted("item_9"))
    assert (parsed.type, parsed.item_id) == ("conversation.item.deleted", "item_9")


def test_input_transcription_completed_and_failed() -> None:
    completed = one(InputTranscribed("item_1", "hello there", 1.23456))
    assert completed.type == "conversation.item.input_audio_transcription.completed"
    assert (completed.item_id, completed.content_index, completed.transcript) == (
        "item_1",
        0,
        "hello there",
    )
    assert completed.usage.type == "duration"
    assert completed.usage.seconds == pytest.approx(1.235)
    failed = one(InputTranscriptionFailed("item_1", "ASR crashed"))
    assert failed.type == "conversation.item.input_audio_transcription.failed"
    assert (failed.item_id, failed.error.message) == ("item_1", "ASR crashed")


def test_error_event() -> None:
    parsed = one(ErrorReported("invalid_value", "bad voice", param="voice", event_id="evt_7"))
    assert parsed.type == "error"
    error = parsed.error
    assert (error.type, error.code, error.message, error.param, error.event_id) == (
        "invalid_request_error",
        "invalid_value",
        "bad voice",
        "voice",
        "evt_7",
    )


# --- server events: responses ---------------------------------------------------------------


def audio_response_events(in_conversation: bool = True) -> tuple[Response, Item, list[Any]]:
    r = response(in_conversation=in_conversation)
    item = assistant_item(audio=True)
    r.items.append(item)
    events: list[Any] = [
        ResponseStarted(r),
        OutputItemStarted(r, item, 0, "item_u" if in_conversation else None),
        OutputTextDelta(r, item, "Hi."),
        OutputAudioDelta(r, item, b"\x01\x00\xff\xff"),
    ]
    wires = wire(*events)
    item.transcript, item.status = "Hi.", ItemStatus.COMPLETED
    r.status, r.input_tokens, r.output_tokens = ResponseStatus.COMPLETED, 11, 7
    wires += wire(OutputItemFinished(r, item, 0), ResponseFinished(r))
    return r, item, wires


def test_audio_response_sequence() -> None:
    _, item, wires = audio_response_events()
    assert [w["type"] for w in wires] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    parsed = {w["type"]: validated(w) for w in wires}
    created = parsed["response.created"].response
    assert (created.id, created.status, created.output) == ("resp_1", "in_progress", [])
    assert created.conversation_id == "auto"
    assert created.usage is None
    added = parsed["response.output_item.added"]
    assert (added.response_id, added.output_index, added.item.id) == ("resp_1", 0, item.id)
    assert added.item.status == "in_progress"
    assert parsed["conversation.item.added"].previous_item_id == "item_u"
    part = parsed["response.content_part.added"]
    assert (part.item_id, part.part.type, part.part.transcript) == (item.id, "audio", "")
    assert parsed["response.output_audio_transcript.delta"].delta == "Hi."
    delta = parsed["response.output_audio.delta"]
    assert (delta.response_id, delta.item_id, delta.output_index, delta.content_index) == (
        "resp_1",
        item.id,
        0,
        0,
    )
    assert base64.b64decode(delta.delta) == b"\x01\x00\xff\xff"
    assert parsed["response.output_audio_transcript.done"].transcript == "Hi."
    assert parsed["response.content_part.done"].part.transcript == "Hi."
    item_done = parsed["response.output_item.done"].item
    assert (item_done.status, item_done.content[0].type) == ("completed", "output_audio")
    done = parsed["response.done"].response
    assert (done.status, done.status_details) == ("completed", None)
    assert [o.id for o in done.output] == [item.id]
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (
        11,
        7,
        18,
    )
    assert done.output_modalities == ["audio"]
    assert done.audio.output.voice == "joe"


def test_starts_describe_the_response_as_it_started() -> None:
    """A start is in progress with nothing produced, whatever the response has become by the
    time the event is made (a response cancelled before it ran still starts first)."""
    r, item, _ = audio_response_events()
    assert r.status is ResponseStatus.COMPLETED
    created, added, conversation_added, _ = wire(
        ResponseStarted(r), OutputItemStarted(r, item, 0, None)
    )
    response = validated(created).response
    assert (response.status, response.output, response.usage) == ("in_progress", [], None)
    for event in (added, conversation_added):
        assert validated(event).item.status == "in_progress"
        assert validated(event).item.content == []


def test_events_say_what_was_true_when_they_were_made() -> None:
    """Events are snapshots: an event waiting to be sent is not changed by what happens to
    the live item or response after it was made."""
    user = Item("item_u", Role.USER, audio=True)
    pending = ItemDone(user)
    user.transcript = "hello"
    r = response(audio=False)
    item = assistant_item(audio=False)
    r.items.append(item)
    item.text, item.status = "Hi.", ItemStatus.COMPLETED
    r.status = ResponseStatus.COMPLETED
    finished = ResponseFinished(r)
    item.text, item.status, r.status = "Hi. And more", ItemStatus.INCOMPLETE, ResponseStatus.FAILED
    (done,) = wire(pending)
    assert validated(done).item.content[0].transcript is None
    (response_done,) = wire(finished)
    parsed = validated(response_done).response
    assert (parsed.status, parsed.output[0].status) == ("completed", "completed")
    assert parsed.output[0].content[0].text == "Hi."


def test_text_response_sequence() -> None:
    r = response(audio=False)
    item = assistant_item(audio=False)
    r.items.append(item)
    wires = wire(ResponseStarted(r), OutputItemStarted(r, item, 0, None))
    wires += wire(OutputTextDelta(r, item, "Hi"), OutputTextDelta(r, item, " you."))
    item.text, item.status, r.status = "Hi you.", ItemStatus.COMPLETED, ResponseStatus.COMPLETED
    wires += wire(OutputItemFinished(r, item, 0), ResponseFinished(r))
    assert [w["type"] for w in wires] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    parsed = [validated(w) for w in wires]
    assert parsed[3].part.type == "text"
    assert [p.delta for p in parsed[4:6]] == ["Hi", " you."]
    assert parsed[6].text == "Hi you."
    assert parsed[7].part.text == "Hi you."
    assert parsed[-1].response.output[0].content[0].type == "output_text"
    assert parsed[-1].response.output_modalities == ["text"]


def test_out_of_band_response_stays_out_of_the_conversation() -> None:
    _, _, wires = audio_response_events(in_conversation=False)
    types = [w["type"] for w in wires]
    assert "conversation.item.added" not in types
    assert "conversation.item.done" not in types
    assert validated(wires[0]).response.conversation_id is None
    assert validated(wires[-1]).response.conversation_id is None


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        (ResponseStatus.COMPLETED, None, None),
        (ResponseStatus.CANCELLED, "turn_detected", None),
        (ResponseStatus.CANCELLED, "client_cancelled", None),
        (ResponseStatus.INCOMPLETE, "max_output_tokens", None),
        (ResponseStatus.FAILED, None, ("backbone_error", "the engine died")),
    ],
)
def test_response_done_statuses(
    status: ResponseStatus, reason: str | None, error: tuple[str, str] | None
) -> None:
    r = response(status=status, reason=reason, error=error)
    item = assistant_item(audio=True)
    item.status = (
        ItemStatus.COMPLETED if status is ResponseStatus.COMPLETED else ItemStatus.INCOMPLETE
    )
    r.items.append(item)
    done = one(ResponseFinished(r)).response
    assert done.status == status.value
    assert done.output[0].status == item.status.value
    if status is ResponseStatus.COMPLETED:
        assert done.status_details is None
    elif error is None:
        assert (done.status_details.type, done.status_details.reason) == (status.value, reason)
    else:
        details = done.status_details
        assert (details.type, details.error.code, details.error.message) == (
            "failed",
            "backbone_error",
            "the engine died",
        )


def test_response_done_reports_turn_timings() -> None:
    trace = TurnTrace()
    for name, at in [
        ("speech_end", 10.0),
        ("turn_end", 10.5),
        ("asr_start", 10.5),
        ("asr_end", 10.7),
        ("lm_submit", 10.7),
        ("first_clause", 11.0),
        ("tts_first_chunk", 11.1),
        ("first_audio_sent", 11.15),
    ]:
        trace.mark(name, at)
    r = response(status=ResponseStatus.COMPLETED, trace=trace)
    (event,) = wire(ResponseFinished(r))
    validated(event)
    timings = event["x_voxgate"]["timings_ms"]
    assert timings["turn_latency"] == pytest.approx(1150.0)
    assert timings["end_of_turn_wait"] == pytest.approx(500.0)
    assert timings["asr"] == pytest.approx(200.0)
    assert timings["lm_first_sentence"] == pytest.approx(300.0)
    assert timings["tts_first_chunk"] == pytest.approx(100.0)
    assert timings["server_overhead"] == pytest.approx(50.0)


def test_every_emitted_kind_is_covered() -> None:
    """The events above are every kind `Outgoing` can produce; each validated by the SDK."""
    r = response(audio=False)
    text_item = assistant_item(audio=False)
    r.items.append(text_item)
    _, _, audio_wires = audio_response_events()
    wires = audio_wires + wire(
        SessionConfigured(CONFIG, created=True),
        SessionConfigured(CONFIG, created=False),
        SpeechStartedEvent("i", 0),
        SpeechStoppedEvent("i", 500),
        InputCommitted("i", None),
        InputCleared(),
        ItemAdded(Item("i", Role.USER, text="x"), None),
        ItemDone(Item("i", Role.USER, text="x")),
        ItemDeleted("i"),
        ItemRetrieved(Item("i", Role.USER, text="x")),
        InputTranscribed("i", "x", 1.0),
        InputTranscriptionFailed("i", "x"),
        OutputTextDelta(r, text_item, "x"),
        OutputItemFinished(r, text_item, 0),
        ErrorReported("c", "m"),
    )
    for w in wires:
        validated(w)
    assert {w["type"] for w in wires} == {
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_text.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "error",
    }


# --- client events --------------------------------------------------------------------------


def sent(event: sdk.RealtimeClientEvent) -> dict[str, Any]:
    """What the SDK puts on the socket for one of its event models (as `connection.send`)."""
    return json.loads(event.to_json(use_api_names=True, exclude_unset=True))


FULL_SESSION: sdk.SessionUpdateEventParam = {
    "type": "session.update",
    "event_id": "evt_1",
    "session": {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Speak like a pirate.",
        "output_modalities": ["audio"],
        "max_output_tokens": 100,
        "tool_choice": "auto",
        "truncation": "auto",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "whisper-1", "language": "en", "prompt": "pirates"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.7,
                    "prefix_padding_ms": 200,
                    "silence_duration_ms": 800,
                    "create_response": False,
                    "interrupt_response": False,
                },
            },
            "output": {"format": {"type": "audio/pcma"}, "voice": "joe", "speed": 1.5},
        },
    },
}


def parsed_session(event: dict[str, Any]) -> protocol.SessionParams:
    parsed = CLIENT_EVENT.validate_python(event)
    assert isinstance(parsed, protocol.SessionUpdate)
    return parsed.session


def test_full_session_update_maps_onto_the_config() -> None:
    event = json.loads(json.dumps(FULL_SESSION))
    config = session_config(CONFIG, parsed_session(event), LIMITS)
    assert config == SessionConfig(
        instructions="Speak like a pirate.",
        audio_output=True,
        input_format=AudioFormat.PCMU,
        output_format=AudioFormat.PCMA,
        voice="joe",
        speed=1.5,
        turn_detection=TurnDetection(
            vad=VadParams(threshold=0.7, prefix_padding_ms=200, silence_duration_ms=800),
            create_response=False,
            interrupt_response=False,
        ),
        transcription=Transcription(model="whisper-1", language="en", prompt="pirates"),
        max_output_tokens=100,
    )


def test_sdk_session_update_model_parses() -> None:
    event = sdk.SessionUpdateEvent(
        type="session.update",
        session={
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                "output": {"voice": {"id": "joe"}},
            },
        },
    )
    current = CONFIG.model_copy(update={"transcription": Transcription(model="m")})
    config = session_config(current, parsed_session(sent(event)), LIMITS)
    assert config.turn_detection is None
    assert config.audio_output is False
    assert config.input_format is AudioFormat.PCM
    assert config.voice == "joe"
    # What the client did not send stays as it was.
    assert config.transcription == Transcription(model="m")
    assert config.instructions == CONFIG.instructions


def test_partial_turn_detection_update_keeps_the_other_vad_settings() -> None:
    current = CONFIG.model_copy(
        update={
            "turn_detection": TurnDetection(vad=VadParams(threshold=0.8), create_response=False)
        }
    )
    event = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}
            },
        },
    }
    config = session_config(current, parsed_session(event), LIMITS)
    assert config.turn_detection == TurnDetection(
        vad=VadParams(threshold=0.8, silence_duration_ms=300), create_response=False
    )


def test_transcription_null_switches_transcription_off() -> None:
    current = CONFIG.model_copy(update={"transcription": Transcription(model="m")})
    event = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"transcription": None}}},
    }
    assert session_config(current, parsed_session(event), LIMITS).transcription is None


@pytest.mark.parametrize(
    "event",
    [
        sdk.InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio="AAAA"),
        sdk.InputAudioBufferCommitEvent(type="input_audio_buffer.commit", event_id="e1"),
        sdk.InputAudioBufferClearEvent(type="input_audio_buffer.clear"),
        sdk.ConversationItemCreateEvent(
            type="conversation.item.create",
            previous_item_id="root",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            },
        ),
        sdk.ConversationItemCreateEvent(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": "AAAA", "transcript": "hi"}],
            },
        ),
        sdk.ConversationItemCreateEvent(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "be brief"}],
            },
        ),
        sdk.ConversationItemCreateEvent(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok"}],
            },
        ),
        sdk.ConversationItemDeleteEvent(type="conversation.item.delete", item_id="item_1"),
        sdk.ConversationItemRetrieveEvent(type="conversation.item.retrieve", item_id="item_1"),
        sdk.ConversationItemTruncateEvent(
            type="conversation.item.truncate", item_id="item_1", content_index=0, audio_end_ms=500
        ),
        sdk.ResponseCreateEvent(type="response.create"),
        sdk.ResponseCreateEvent(
            type="response.create",
            response={
                "output_modalities": ["text"],
                "conversation": "none",
                "instructions": "be brief",
                "max_output_tokens": 50,
                "metadata": {"topic": "test"},
                "audio": {"output": {"voice": "joe", "format": {"type": "audio/pcmu"}}},
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    }
                ],
            },
        ),
        sdk.ResponseCancelEvent(type="response.cancel"),
        sdk.ResponseCancelEvent(type="response.cancel", response_id="resp_1"),
        sdk.OutputAudioBufferClearEvent(type="output_audio_buffer.clear"),
    ],
    ids=lambda e: e.type,
)
def test_sdk_client_events_parse(event: sdk.RealtimeClientEvent) -> None:
    raw = sent(event)
    parsed = CLIENT_EVENT.validate_python(raw)
    assert parsed.type == event.type
    assert parsed.model_dump(exclude_unset=True) == raw


def test_message_items_map_to_domain_items() -> None:
    def item(content: dict[str, Any], role: str = "user") -> tuple[Item, str | None]:
        wire_item = protocol.MessageItem(type="message", role=role, content=[content])
        return translate.message_item(wire_item, "item_new")

    assert item({"type": "input_text", "text": "hi"}) == (
        Item("item_new", Role.USER, text="hi"),
        None,
    )
    assert item({"type": "input_audio", "audio": "AAAA"}) == (
        Item("item_new", Role.USER, audio=True),
        "AAAA",
    )
    assert item({"type": "output_audio", "transcript": "ok"}, "assistant") == (
        Item("item_new", Role.ASSISTANT, audio=True, transcript="ok"),
        None,
    )
    with pytest.raises(Unsupported) as unsupported:
        item({"type": "output_text", "text": "x"}, "user")
    assert unsupported.value.param == "item.content[0].type"
    with pytest.raises(SessionRejected) as rejected:
        item({"type": "input_text"})
    assert (rejected.value.code, rejected.value.param) == (
        "missing_required_parameter",
        "item.content[0].text",
    )


# --- refusals -------------------------------------------------------------------------------


def session_update(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.update", "session": {"type": "realtime", **session}}


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"type": "transcription"}, "session.type"),
        ({"tools": [{"type": "mcp", "server_label": "s"}]}, "session.tools[0].type"),
        ({"tool_choice": {"type": "mcp", "server_label": "s"}}, "session.tool_choice.type"),
        ({"truncation": "disabled"}, "session.truncation"),
        ({"prompt": {"id": "pmpt_123"}}, "session.prompt"),
        ({"output_modalities": ["text", "audio"]}, "output_modalities"),
        (
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}
                }
            },
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"audio": {"input": {"transcription": {"model": "m", "keywords": ["x"]}}}},
            "session.audio.input.transcription.keywords",
        ),
    ],
)
def test_unsupported_session_features_are_refused(session: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as refused:
        session_config(CONFIG, parsed_session(session_update(session)), LIMITS)
    assert refused.value.param == param


def test_settings_the_frameworks_send_are_accepted_and_said_back() -> None:
    """LiveKit's defaults (`tracing: null`, `noise_reduction: null`, "inf"), its documented
    `near_field`, the SDK's `tracing: "auto"` and `include`: accepted, echoed, and what the
    server does not do with them is said in `x_voxgate`."""
    session = {
        "tracing": "auto",
        "include": ["item.input_audio_transcription.logprobs"],
        "parallel_tool_calls": True,
        "max_output_tokens": "inf",
        "audio": {"input": {"noise_reduction": {"type": "near_field"}}},
    }
    config = session_config(CONFIG, parsed_session(session_update(session)), LIMITS)
    assert (config.tracing, config.include, config.noise_reduction) == (
        "auto",
        ("item.input_audio_transcription.logprobs",),
        "near_field",
    )
    wire = wire_session(config)
    SERVER_EVENT.validate_python({"type": "session.updated", "event_id": "e", "session": wire})
    assert wire["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert wire["tracing"] == "auto" and wire["include"] == session["include"]
    assert wire["x_voxgate"]["noise_reduction"] == "not applied"
    assert set(wire["x_voxgate"]["not_honoured"]) == {"tracing", "include", "parallel_tool_calls"}
    on = wire_session(config, noise_suppressor="rnnoise")
    assert on["x_voxgate"]["noise_reduction"] == "rnnoise"
    off = {
        "tracing": None,
        "include": [],
        "parallel_tool_calls": False,  # one function per response: what false asks for
        "audio": {"input": {"noise_reduction": None}},
    }
    config = session_config(config, parsed_session(session_update(off)), LIMITS)
    assert config.tracing is None and config.noise_reduction is None
    wire = wire_session(config)
    assert "not_honoured" not in wire.get("x_voxgate", {})
    assert "noise_reduction" not in wire.get("x_voxgate", {})


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            session_update({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            session_update(
                {"audio": {"input": {"turn_detection": {"type": "server_vad", "x": 1}}}}
            ),
            "unknown_parameter",
            "session.audio.input.turn_detection.x",
        ),
        (session_update({"voice": "joe"}), "unknown_parameter", "session.voice"),
        (
            {"type": "input_audio_buffer.append", "audio": "AAAA", "extra": 1},
            "unknown_parameter",
            "extra",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}},
            "missing_required_parameter",
            "item.content",
        ),
        ({"type": "session.update", "session": {}}, "missing_required_parameter", "session.type"),
        (
            {"type": "conversation.item.create", "item": {"role": "user", "content": []}},
            "missing_required_parameter",
            "item.type",
        ),
        ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
        ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_type", "audio"),
        (
            session_update(
                {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "hi"}}}}
            ),
            "invalid_type",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            session_update(
                {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}
            ),
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            session_update({"audio": {"output": {"speed": 3}}}),
            "invalid_value",
            "session.audio.output.speed",
        ),
        (
            {"type": "response.create", "response": {"max_output_tokens": "lots"}},
            "invalid_type",
            "response.max_output_tokens",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": ["video"]}},
            "invalid_value",
            "response.output_modalities[0]",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": 1}],
                },
            },
            "invalid_type",
            "item.content[0].text",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "note", "role": "user", "content": []},
            },
            "invalid_value",
            "item",
        ),
        ({"type": "response.cancel", "event_id": "e" * 200}, "string_above_max_length", "event_id"),
    ],
)
def test_validation_errors_name_code_and_param(
    event: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(ValidationError) as invalid:
        CLIENT_EVENT.validate_python(event)
    error = validation_error(invalid.value, "evt_9")
    assert (error.code, error.param, error.event_id) == (code, param, "evt_9")
    assert error.message.startswith(f"{param}: ")
    validated(wire(error)[0])


def test_validation_error_of_an_unknown_type_tag() -> None:
    with pytest.raises(ValidationError) as invalid:
        CLIENT_EVENT.validate_python({"type": "session.destroy"})
    error = validation_error(invalid.value, None)
    assert (error.code, error.param) == ("unknown_event_type", None)


def test_a_format_without_type_is_pcm() -> None:
    # The SDK's AudioPCM makes `type` optional: {"rate": 24000} alone means audio/pcm.
    event = {"type": "realtime", "audio": {"input": {"format": {"rate": 24000}}}}
    current = CONFIG.model_copy(update={"input_format": AudioFormat.PCMU})
    assert (
        session_config(
            current, parsed_session({"type": "session.update", "session": event}), LIMITS
        ).input_format
        is AudioFormat.PCM
    )


def test_inf_output_tokens_is_the_servers_cap() -> None:
    event = {"type": "realtime", "max_output_tokens": "inf"}
    config = session_config(
        CONFIG, parsed_session({"type": "session.update", "session": event}), LIMITS
    )
    assert config.max_output_tokens is None
    assert wire_session(config)["max_output_tokens"] == "inf"


def test_semantic_vad_and_the_turn_taking_extension_map_onto_the_config() -> None:
    semantic = {
        "type": "realtime",
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "semantic_vad",
                    "eagerness": "high",
                    "x_voxgate": {"min_interruption_words": 2, "speculative_start_ms": 0},
                }
            }
        },
    }
    config = session_config(
        CONFIG, parsed_session({"type": "session.update", "session": semantic}), LIMITS
    )
    td = config.turn_detection
    assert td is not None
    assert (td.eagerness, td.vad.silence_duration_ms) == ("high", 350)
    assert (td.min_interruption_words, td.speculative_start_ms) == (2, None)
    wire = wire_session(config)
    turn = wire["audio"]["input"]["turn_detection"]
    assert turn["type"] == "semantic_vad" and turn["eagerness"] == "high"
    assert turn["x_voxgate"]["min_interruption_words"] == 2
    SERVER_EVENT.validate_python({"type": "session.updated", "event_id": "e", "session": wire})
    # Back to server_vad: silence-based again.
    plain = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
    again = session_config(
        config, parsed_session({"type": "session.update", "session": plain}), LIMITS
    )
    assert again.turn_detection is not None and again.turn_detection.eagerness is None
