"""Session events -> OpenAI Realtime server events (the protocol's sequencing lives here).

One domain event may become several wire events: an assistant item starting is
`response.output_item.added`, `conversation.item.added` and `response.content_part.added`, in
the order the official API sends them.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from voxgate.server import protocol
from voxgate.streaming.events import (
    ErrorReported,
    FunctionCallArgumentsDelta,
    InputCleared,
    InputCommitted,
    InputTranscribed,
    InputTranscriptionFailed,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemRetrieved,
    ItemTruncated,
    OutputAudioDelta,
    OutputItemFinished,
    OutputItemStarted,
    OutputTextDelta,
    ReasoningDeltaEvent,
    ReasoningDone,
    Response,
    ResponseFinished,
    ResponseStarted,
    SessionConfigured,
    SessionEvent,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    SummaryUpdated,
)
from voxgate.streaming.timings import turn_timings

Wire = dict[str, Any]


def _event(type_: str, **fields: Any) -> Wire:
    return {"type": type_, "event_id": f"event_{uuid.uuid4().hex[:22]}", **fields}


def _ref(response: Response, item: Item, output_index: int = 0) -> dict[str, Any]:
    return {
        "response_id": response.id,
        "item_id": item.id,
        "output_index": output_index,
        "content_index": 0,
    }


def error_event(error: ErrorReported) -> Wire:
    return _event(
        "error",
        error={
            "type": error.type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": error.event_id,
        },
    )


class Outgoing:
    """Translates one connection's session events; knows the session id and model name."""

    def __init__(self, session_id: str, model: str, noise_suppressor: str | None = None) -> None:
        self._session_id = session_id
        self._model = model
        self._noise_suppressor = noise_suppressor

    def wire_events(self, event: SessionEvent) -> list[Wire]:
        match event:
            case SessionConfigured(config=config, created=created):
                kind = "session.created" if created else "session.updated"
                return [
                    _event(
                        kind,
                        session=protocol.wire_session(
                            config, self._session_id, self._model, self._noise_suppressor
                        ),
                    )
                ]
            case ErrorReported():
                return [error_event(event)]
            case SpeechStartedEvent(item_id=item_id, audio_start_ms=ms):
                return [
                    _event("input_audio_buffer.speech_started", audio_start_ms=ms, item_id=item_id)
                ]
            case SpeechStoppedEvent(item_id=item_id, audio_end_ms=ms):
                return [
                    _event("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item_id)
                ]
            case InputCommitted(item_id=item_id, previous_item_id=previous):
                return [
                    _event(
                        "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous
                    )
                ]
            case InputCleared():
                return [_event("input_audio_buffer.cleared")]
            case ItemAdded(item=item, previous_item_id=previous):
                return [
                    _event(
                        "conversation.item.added",
                        item=protocol.wire_item(item),
                        previous_item_id=previous,
                    )
                ]
            case ItemDone(item=item):
                return [_event("conversation.item.done", item=protocol.wire_item(item))]
            case ItemTruncated(item_id=item_id, audio_end_ms=end_ms):
                return [
                    _event(
                        "conversation.item.truncated",
                        item_id=item_id,
                        content_index=0,
                        audio_end_ms=end_ms,
                    )
                ]
            case ItemDeleted(item_id=item_id):
                return [_event("conversation.item.deleted", item_id=item_id)]
            case ItemRetrieved(item=item):
                return [_event("conversation.item.retrieved", item=protocol.wire_item(item))]
            case InputTranscribed(item_id=item_id, transcript=text, audio_seconds=seconds):
                return [
                    _event(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=item_id,
                        content_index=0,
                        transcript=text,
                        usage={"type": "duration", "seconds": round(seconds, 3)},
                    )
                ]
            case InputTranscriptionFailed(item_id=item_id, message=message):
                return [
                    _event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item_id,
                        content_index=0,
                        error={
                            "type": "server_error",
                            "code": "transcription_failed",
                            "message": message,
                        },
                    )
                ]
            # The writer may get to a start after the response has moved on (its objects are
            # shared with the session): a start describes the response or item as it started.
            case ResponseStarted(response=response):
                wire = protocol.wire_response(response, as_created=True)
                return [_event("response.created", response=wire)]
            case OutputItemStarted(
                response=r, item=item, output_index=index, previous_item_id=prev
            ):
                started = protocol.wire_item(item, as_started=True)
                if item.kind == "function_call":
                    events = [
                        _event(
                            "response.output_item.added",
                            response_id=r.id,
                            output_index=index,
                            item=started,
                        )
                    ]
                    if r.in_conversation:
                        events.append(
                            _event("conversation.item.added", item=started, previous_item_id=prev)
                        )
                    return events
                events = [
                    _event(
                        "response.output_item.added",
                        response_id=r.id,
                        output_index=index,
                        item=started,
                    )
                ]
                if r.in_conversation:
                    events.append(
                        _event("conversation.item.added", item=started, previous_item_id=prev)
                    )
                part = (
                    {"type": "audio", "transcript": ""}
                    if item.audio
                    else {"type": "text", "text": ""}
                )
                events.append(
                    _event("response.content_part.added", **_ref(r, item, index), part=part)
                )
                return events
            case OutputTextDelta(response=r, item=item, delta=delta):
                kind = (
                    "response.output_audio_transcript.delta"
                    if item.audio
                    else "response.output_text.delta"
                )
                return [_event(kind, **_ref(r, item), delta=delta)]
            case OutputAudioDelta(response=r, item=item, audio=data):
                return [
                    _event(
                        "response.output_audio.delta",
                        **_ref(r, item),
                        delta=base64.b64encode(data).decode(),
                    )
                ]
            case FunctionCallArgumentsDelta(response=r, item=item, delta=delta):
                return [
                    _event(
                        "response.function_call_arguments.delta",
                        response_id=r.id,
                        item_id=item.id,
                        output_index=r.items.index(item),
                        call_id=item.call_id,
                        delta=delta,
                    )
                ]
            case OutputItemFinished(response=r, item=item, output_index=index) if (
                item.kind == "function_call"
            ):
                done = protocol.wire_item(item)
                events = [
                    _event(
                        "response.function_call_arguments.done",
                        response_id=r.id,
                        item_id=item.id,
                        output_index=index,
                        call_id=item.call_id,
                        name=item.name,
                        arguments=item.arguments,
                    ),
                    _event(
                        "response.output_item.done", response_id=r.id, output_index=index, item=done
                    ),
                ]
                if r.in_conversation:
                    events.append(_event("conversation.item.done", item=done))
                return events
            case ReasoningDeltaEvent(response=r, delta=delta):
                return [_event("voxgate.response.reasoning.delta", response_id=r.id, delta=delta)]
            case ReasoningDone(response=r):
                return [
                    _event("voxgate.response.reasoning.done", response_id=r.id, text=r.reasoning)
                ]
            case SummaryUpdated(summary=summary, items_folded=folded):
                return [
                    _event(
                        "voxgate.conversation.summary.updated",
                        summary=summary,
                        items_folded=folded,
                    )
                ]
            case OutputItemFinished(response=r, item=item, output_index=index):
                ref = _ref(r, item, index)
                if item.audio:
                    events = [
                        _event("response.output_audio.done", **ref),
                        _event(
                            "response.output_audio_transcript.done",
                            **ref,
                            transcript=item.transcript or "",
                        ),
                    ]
                else:
                    events = [_event("response.output_text.done", **ref, text=item.text)]
                events += [
                    _event("response.content_part.done", **ref, part=protocol.content_part(item)),
                    _event(
                        "response.output_item.done",
                        response_id=r.id,
                        output_index=index,
                        item=protocol.wire_item(item),
                    ),
                ]
                if r.in_conversation:
                    events.append(_event("conversation.item.done", item=protocol.wire_item(item)))
                return events
            case ResponseFinished(response=r):
                timings = {k: round(v * 1000, 1) for k, v in turn_timings(r.trace).items()}
                return [
                    _event(
                        "response.done",
                        response=protocol.wire_response(r),
                        x_voxgate={"timings_ms": timings},
                    )
                ]
        raise AssertionError(f"no wire form for {event!r}")
