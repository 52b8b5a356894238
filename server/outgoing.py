"""Session events -> OpenAI Realtime server events (the protocol's sequencing lives here).

One domain event may become several wire events: an assistant item starting is
`response.output_item.added`, `conversation.item.added` and `response.content_part.added`, in
the order the official API sends them. The wire events are the typed models of
`server/server_events.py` (and `server/extension_events.py`), built from the snapshots the
session events carry. The edge's own replies (`EdgeReply`) go out as the edge made them.
"""

from __future__ import annotations

import base64
from typing import Any

from voxgate.model.types import Role
from voxgate.server import extension_events as ext
from voxgate.server import server_events as wire
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.candidates import CandidateFinished
from voxgate.streaming.config import SessionConfig
from voxgate.streaming.events import (
    ErrorReported,
    FunctionCallArgumentsDelta,
    InputCleared,
    InputCommitted,
    InputTranscribed,
    InputTranscriptionFailed,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemRetrieved,
    ItemSnapshot,
    ItemTruncated,
    OutputAudioDelta,
    OutputItemFinished,
    OutputItemStarted,
    OutputTextDelta,
    ReasoningDeltaEvent,
    ReasoningDone,
    ResponseFinished,
    ResponseSnapshot,
    ResponseStarted,
    ResponseStatus,
    SessionConfigured,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    SummaryUpdated,
)
from voxgate.streaming.session import EdgeReply, Queued
from voxgate.streaming.timings import turn_timings

# --- objects: session, items, responses ---------------------------------------------------


def wire_format(fmt: AudioFormat) -> wire.PcmFormat | wire.G711Format:
    return wire.PcmFormat() if fmt is AudioFormat.PCM else wire.G711Format(type=fmt.value)


def session_extension(
    config: SessionConfig,
    noise_suppressor: str | None,
    feedback: wire.FeedbackCaptureObject | None = None,
) -> wire.SessionExtension | None:
    """`session.x_voxgate`: what this server does with settings it accepts but cannot fully
    honour, and whether it keeps answers for feedback (None when there is nothing to say)."""
    noise_reduction = None
    if config.noise_reduction is not None:
        noise_reduction = noise_suppressor or "not applied"
    ignored = {}
    if config.tracing is not None:
        ignored["tracing"] = "accepted; this server traces nothing"
    if config.include:
        ignored["include"] = "accepted; this server's transcription reports no logprobs"
    if config.parallel_tool_calls:
        ignored["parallel_tool_calls"] = "accepted; a response calls at most one function"
    if noise_reduction is None and not ignored and feedback is None:
        return None
    return wire.SessionExtension(
        noise_reduction=noise_reduction, not_honoured=ignored or None, feedback=feedback
    )


def _turn_detection(config: SessionConfig) -> wire.ServerVadObject | wire.SemanticVadObject | None:
    td = config.turn_detection
    if td is None:
        return None
    extension = wire.TurnTakingObject(
        min_interruption_ms=td.min_interruption_ms,
        min_interruption_words=td.min_interruption_words,
        false_interruption=td.false_interruption,
        echo_guard=td.echo_guard,
        speculative_start_ms=td.speculative_start_ms or 0,
    )
    if td.eagerness is not None:
        return wire.SemanticVadObject(
            eagerness=td.eagerness,
            create_response=td.create_response,
            interrupt_response=td.interrupt_response,
            x_voxgate=extension,
        )
    return wire.ServerVadObject(
        threshold=td.vad.threshold,
        prefix_padding_ms=td.vad.prefix_padding_ms,
        silence_duration_ms=td.vad.silence_duration_ms,
        create_response=td.create_response,
        interrupt_response=td.interrupt_response,
        x_voxgate=extension,
    )


def wire_session(
    config: SessionConfig,
    session_id: str,
    model: str,
    noise_suppressor: str | None = None,
    feedback: wire.FeedbackCaptureObject | None = None,
) -> wire.SessionObject:
    tr = config.transcription
    nr = config.noise_reduction
    return wire.SessionObject(
        id=session_id,
        model=model,
        output_modalities=["audio" if config.audio_output else "text"],
        instructions=config.instructions,
        audio=wire.SessionAudioObject(
            input=wire.AudioInputObject(
                format=wire_format(config.input_format),
                transcription=None
                if tr is None
                else wire.TranscriptionObject(
                    model=tr.model, language=tr.language, prompt=tr.prompt
                ),
                noise_reduction=None if nr is None else wire.NoiseReductionObject(type=nr),
                turn_detection=_turn_detection(config),
            ),
            output=wire.AudioOutputObject(
                format=wire_format(config.output_format), voice=config.voice, speed=config.speed
            ),
        ),
        tools=[
            wire.FunctionToolObject(name=t.name, description=t.description, parameters=t.parameters)
            for t in config.tools
        ],
        tool_choice=(
            config.tool_choice
            if config.tool_choice in ("auto", "none", "required")
            else wire.FunctionChoiceObject(name=config.tool_choice)
        ),
        reasoning=wire.ReasoningObject(effort=config.reasoning_effort)
        if config.reasoning_effort
        else None,
        tracing=config.tracing,
        include=list(config.include) if config.include else None,
        x_voxgate=session_extension(config, noise_suppressor, feedback),
        max_output_tokens="inf" if config.max_output_tokens is None else config.max_output_tokens,
    )


def wire_item(item: ItemSnapshot) -> wire.ItemObject:
    status = item.status.value
    if item.kind == "function_call":
        return wire.FunctionCallObject(
            id=item.id,
            status=status,
            call_id=item.call_id,
            name=item.name,
            arguments=item.arguments,
        )
    if item.kind == "function_call_output":
        return wire.FunctionCallOutputObject(
            id=item.id, status=status, call_id=item.call_id, output=item.output
        )
    part: wire.TextContent | wire.TranscriptContent
    if item.role is Role.USER:
        part = (
            wire.TranscriptContent(type="input_audio", transcript=item.transcript)
            if item.audio
            else wire.TextContent(type="input_text", text=item.text)
        )
    elif item.role is Role.SYSTEM:
        part = wire.TextContent(type="input_text", text=item.text)
    else:
        part = (
            wire.TranscriptContent(type="output_audio", transcript=item.transcript)
            if item.audio
            else wire.TextContent(type="output_text", text=item.text)
        )
    return wire.MessageObject(
        id=item.id,
        role=item.role.value,
        status=status,
        content=[part] if status != "in_progress" else [],
    )


def content_part(item: ItemSnapshot) -> wire.TextContent | wire.TranscriptContent:
    if item.audio:
        return wire.TranscriptContent(type="audio", transcript=item.transcript or "")
    return wire.TextContent(type="text", text=item.text)


def wire_response(response: ResponseSnapshot) -> wire.ResponseObject:
    status = response.status
    details: wire.EndedDetails | wire.FailedDetails | None = None
    if status in (ResponseStatus.CANCELLED, ResponseStatus.INCOMPLETE):
        details = wire.EndedDetails(type=status.value, reason=response.reason)
    elif status is ResponseStatus.FAILED and response.error is not None:
        code, message = response.error
        details = wire.FailedDetails(error=wire.ResponseError(code=code, message=message))
    usage = None
    if status is not ResponseStatus.IN_PROGRESS:
        usage = wire.UsageObject(
            total_tokens=response.input_tokens + response.output_tokens,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            output_token_details=wire.OutputTokenDetails(
                text_tokens=response.output_tokens - response.output_audio_tokens,
                audio_tokens=response.output_audio_tokens,
            ),
        )
    return wire.ResponseObject(
        id=response.id,
        status=status.value,
        status_details=details,
        output=[wire_item(i) for i in response.items] if usage is not None else [],
        conversation_id="auto" if response.in_conversation else None,
        output_modalities=["audio" if response.audio else "text"],
        audio=wire.ResponseAudio(
            output=wire.ResponseAudioOutput(
                format=wire_format(AudioFormat(response.audio_format)), voice=response.voice
            )
        ),
        max_output_tokens=response.max_output_tokens,
        metadata=response.metadata,
        usage=usage,
    )


def error_event(error: ErrorReported) -> wire.ErrorEvent:
    return wire.ErrorEvent(
        error=wire.ErrorObject(
            type=error.type,
            code=error.code,
            message=error.message,
            param=error.param,
            event_id=error.event_id,
        )
    )


# --- events -------------------------------------------------------------------------------


def _content(response: ResponseSnapshot, item: ItemSnapshot, output_index: int) -> dict[str, Any]:
    """Where a content event points: the response, its item, the item's one part."""
    return {"response_id": response.id, "item_id": item.id, "output_index": output_index}


class Outgoing:
    """Translates one connection's session events; knows the session id and model name, and
    what `session.x_voxgate` says of the server."""

    def __init__(
        self,
        session_id: str,
        model: str,
        noise_suppressor: str | None = None,
        feedback: wire.FeedbackCaptureObject | None = None,
    ) -> None:
        self._session_id = session_id
        self._model = model
        self._noise_suppressor = noise_suppressor
        self._feedback = feedback

    def wire_events(self, event: Queued) -> list[wire.ServerEvent]:
        match event:
            case EdgeReply(wire=reply):
                assert isinstance(reply, wire.ServerEvent), reply
                return [reply]
            case SessionConfigured(config=config, created=created):
                session = wire_session(
                    config, self._session_id, self._model, self._noise_suppressor, self._feedback
                )
                if created:
                    return [wire.SessionCreatedEvent(session=session)]
                return [wire.SessionUpdatedEvent(session=session)]
            case ErrorReported():
                return [error_event(event)]
            case SpeechStartedEvent(item_id=item_id, audio_start_ms=ms):
                return [wire.InputAudioBufferSpeechStartedEvent(audio_start_ms=ms, item_id=item_id)]
            case SpeechStoppedEvent(item_id=item_id, audio_end_ms=ms):
                return [wire.InputAudioBufferSpeechStoppedEvent(audio_end_ms=ms, item_id=item_id)]
            case InputCommitted(item_id=item_id, previous_item_id=previous):
                return [
                    wire.InputAudioBufferCommittedEvent(item_id=item_id, previous_item_id=previous)
                ]
            case InputCleared():
                return [wire.InputAudioBufferClearedEvent()]
            case ItemAdded(item=item, previous_item_id=previous):
                return [
                    wire.ConversationItemAddedEvent(item=wire_item(item), previous_item_id=previous)
                ]
            case ItemDone(item=item):
                return [wire.ConversationItemDoneEvent(item=wire_item(item))]
            case ItemTruncated(item_id=item_id, audio_end_ms=end_ms):
                return [wire.ConversationItemTruncatedEvent(item_id=item_id, audio_end_ms=end_ms)]
            case ItemDeleted(item_id=item_id):
                return [wire.ConversationItemDeletedEvent(item_id=item_id)]
            case ItemRetrieved(item=item):
                return [wire.ConversationItemRetrievedEvent(item=wire_item(item))]
            case InputTranscribed(item_id=item_id, transcript=text, audio_seconds=seconds):
                usage = wire.TranscriptionUsage(seconds=round(seconds, 3))
                return [
                    wire.TranscriptionCompletedEvent(item_id=item_id, transcript=text, usage=usage)
                ]
            case InputTranscriptionFailed(item_id=item_id, message=message):
                error = wire.TranscriptionError(message=message)
                return [wire.TranscriptionFailedEvent(item_id=item_id, error=error)]
            case ResponseStarted(response=r):
                return [wire.ResponseCreatedEvent(response=wire_response(r))]
            case OutputItemStarted(
                response=r, item=item, output_index=index, previous_item_id=prev
            ):
                return self._item_started(r, item, index, prev)
            case OutputTextDelta(response=r, item=item, delta=delta):
                # Deltas name output index 0 (as this server always has); starts and ends
                # name the item's own.
                if item.audio:
                    return [
                        wire.ResponseOutputAudioTranscriptDeltaEvent(
                            **_content(r, item, 0), delta=delta
                        )
                    ]
                return [wire.ResponseOutputTextDeltaEvent(**_content(r, item, 0), delta=delta)]
            case OutputAudioDelta(response=r, item=item, audio=data):
                delta = base64.b64encode(data).decode()
                return [wire.ResponseOutputAudioDeltaEvent(**_content(r, item, 0), delta=delta)]
            case FunctionCallArgumentsDelta(response=r, item=item, delta=delta):
                index = [i.id for i in r.items].index(item.id)
                return [
                    wire.ResponseFunctionCallArgumentsDeltaEvent(
                        response_id=r.id,
                        item_id=item.id,
                        output_index=index,
                        call_id=item.call_id,
                        delta=delta,
                    )
                ]
            case ReasoningDeltaEvent(response=r, delta=delta):
                return [ext.ResponseReasoningDeltaEvent(response_id=r.id, delta=delta)]
            case ReasoningDone(response=r):
                return [ext.ResponseReasoningDoneEvent(response_id=r.id, text=r.reasoning)]
            case SummaryUpdated(summary=summary, items_folded=folded):
                return [ext.ConversationSummaryUpdatedEvent(summary=summary, items_folded=folded)]
            case OutputItemFinished(response=r, item=item, output_index=index):
                return self._item_finished(r, item, index)
            case ResponseFinished(response=r):
                timings = {k: round(v * 1000, 1) for k, v in turn_timings(r.trace).items()}
                pair = None
                if isinstance(event, CandidateFinished):
                    pair = wire.PairObject(id=event.pair_id, candidate=event.candidate)
                return [
                    wire.ResponseDoneEvent(
                        response=wire_response(r),
                        x_voxgate=wire.ResponseExtension(timings_ms=timings, pair=pair),
                    )
                ]
        raise AssertionError(f"no wire form for {event!r}")

    @staticmethod
    def _item_started(
        r: ResponseSnapshot, item: ItemSnapshot, index: int, previous: str | None
    ) -> list[wire.ServerEvent]:
        started = wire_item(item)
        events: list[wire.ServerEvent] = [
            wire.ResponseOutputItemAddedEvent(response_id=r.id, output_index=index, item=started)
        ]
        if r.in_conversation:
            events.append(wire.ConversationItemAddedEvent(item=started, previous_item_id=previous))
        if item.kind != "function_call":
            events.append(
                wire.ResponseContentPartAddedEvent(
                    **_content(r, item, index), part=content_part(item)
                )
            )
        return events

    @staticmethod
    def _item_finished(
        r: ResponseSnapshot, item: ItemSnapshot, index: int
    ) -> list[wire.ServerEvent]:
        done = wire_item(item)
        events: list[wire.ServerEvent]
        if item.kind == "function_call":
            events = [
                wire.ResponseFunctionCallArgumentsDoneEvent(
                    response_id=r.id,
                    item_id=item.id,
                    output_index=index,
                    call_id=item.call_id,
                    name=item.name,
                    arguments=item.arguments,
                )
            ]
        else:
            ref = _content(r, item, index)
            if item.audio:
                events = [
                    wire.ResponseOutputAudioDoneEvent(**ref),
                    wire.ResponseOutputAudioTranscriptDoneEvent(
                        **ref, transcript=item.transcript or ""
                    ),
                ]
            else:
                events = [wire.ResponseOutputTextDoneEvent(**ref, text=item.text)]
            events.append(wire.ResponseContentPartDoneEvent(**ref, part=content_part(item)))
        events.append(
            wire.ResponseOutputItemDoneEvent(response_id=r.id, output_index=index, item=done)
        )
        if r.in_conversation:
            events.append(wire.ConversationItemDoneEvent(item=done))
        return events
