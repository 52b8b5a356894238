"""OpenAI Realtime (GA) server events as pydantic models: what the server sends, checked when made.

One class per event type, named after the official SDK's (`openai.types.realtime`, the reference
the tests validate against), its fields in the order the server sends them. Fields under
`x_voxgate` are this server's documented extensions; its own events (`voxgate.*`) are in
`server/extension_events.py`. `server/outgoing.py` builds these from session events.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OmitsNone(WireModel):
    """A model whose `omitted_when_none` fields are left out of its JSON when None (an optional
    part of the protocol), where others are sent as null."""

    omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.omitted_when_none}


# --- the session --------------------------------------------------------------------------


class PcmFormat(WireModel):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class G711Format(WireModel):
    type: Literal["audio/pcmu", "audio/pcma"]


class TranscriptionObject(WireModel):
    model: str
    language: str | None
    prompt: str | None


class NoiseReductionObject(WireModel):
    type: Literal["near_field", "far_field"]


class TurnTakingObject(WireModel):
    """`turn_detection.x_voxgate`: voxgate's turn taking (see streaming/config.py)."""

    min_interruption_ms: int
    min_interruption_words: int
    false_interruption: Literal["resume", "silence"]
    echo_guard: bool
    speculative_start_ms: int
    """0: speculative start is off."""


class SemanticVadObject(WireModel):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"]
    create_response: bool
    interrupt_response: bool
    x_voxgate: TurnTakingObject


class ServerVadObject(WireModel):
    type: Literal["server_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    idle_timeout_ms: None = None
    create_response: bool
    interrupt_response: bool
    x_voxgate: TurnTakingObject


class AudioInputObject(WireModel):
    format: PcmFormat | G711Format
    transcription: TranscriptionObject | None
    noise_reduction: NoiseReductionObject | None
    turn_detection: ServerVadObject | SemanticVadObject | None


class AudioOutputObject(WireModel):
    format: PcmFormat | G711Format
    voice: str
    speed: float


class SessionAudioObject(WireModel):
    input: AudioInputObject
    output: AudioOutputObject


class FunctionToolObject(WireModel):
    type: Literal["function"] = "function"
    name: str
    description: str
    parameters: dict[str, Any]


class FunctionChoiceObject(WireModel):
    type: Literal["function"] = "function"
    name: str


class ReasoningObject(WireModel):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"]


class FeedbackCaptureObject(WireModel):
    """`session.x_voxgate.feedback`: this server keeps the session's answers, to be rated
    (`voxgate.feedback.create`)."""

    enabled: Literal[True] = True
    audio: bool
    """Their audio is kept too, not only their text."""


class SessionExtension(OmitsNone):
    """`session.x_voxgate`: what this server does with settings it accepts but cannot fully
    honour, and whether it keeps answers for feedback."""

    omitted_when_none: ClassVar[frozenset[str]] = frozenset(
        {"noise_reduction", "not_honoured", "feedback"}
    )

    noise_reduction: str | None = None
    """The noise suppressor that applies the client's noise reduction, or "not applied"."""
    not_honoured: dict[str, str] | None = None
    """Setting -> what becomes of it."""
    feedback: FeedbackCaptureObject | None = None
    """Present when answers are captured (`VOXGATE_FEEDBACK__ENABLED`)."""


class SessionObject(OmitsNone):
    omitted_when_none: ClassVar[frozenset[str]] = frozenset({"reasoning", "include", "x_voxgate"})

    type: Literal["realtime"] = "realtime"
    object: Literal["realtime.session"] = "realtime.session"
    id: str
    model: str
    output_modalities: list[Literal["audio", "text"]]
    instructions: str
    audio: SessionAudioObject
    tools: list[FunctionToolObject]
    tool_choice: Literal["auto", "none", "required"] | FunctionChoiceObject
    reasoning: ReasoningObject | None = None
    tracing: str | dict[str, Any] | None
    include: list[str] | None = None
    x_voxgate: SessionExtension | None = None
    max_output_tokens: int | Literal["inf"]
    truncation: Literal["auto"] = "auto"


# --- conversation items -------------------------------------------------------------------

ItemStatusValue = Literal["in_progress", "completed", "incomplete"]


class TextContent(WireModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class TranscriptContent(WireModel):
    type: Literal["input_audio", "output_audio", "audio"]
    transcript: str | None


class MessageObject(WireModel):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"]
    status: ItemStatusValue
    content: list[TextContent | TranscriptContent]


class FunctionCallObject(WireModel):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatusValue
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputObject(WireModel):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatusValue
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str


ItemObject = MessageObject | FunctionCallObject | FunctionCallOutputObject


# --- responses ----------------------------------------------------------------------------


class EndedDetails(WireModel):
    type: Literal["cancelled", "incomplete"]
    reason: str | None


class ResponseError(WireModel):
    type: Literal["server_error"] = "server_error"
    code: str
    message: str


class FailedDetails(WireModel):
    type: Literal["failed"] = "failed"
    error: ResponseError


class OutputTokenDetails(WireModel):
    text_tokens: int
    audio_tokens: int
    """Speech codes the backbone generated itself (a unified speech LM); 0 when a separate TTS
    spoke the text."""


class UsageObject(WireModel):
    total_tokens: int
    input_tokens: int
    output_tokens: int
    output_token_details: OutputTokenDetails


class ResponseAudioOutput(WireModel):
    format: PcmFormat | G711Format
    voice: str


class ResponseAudio(WireModel):
    output: ResponseAudioOutput


class ResponseObject(WireModel):
    id: str
    object: Literal["realtime.response"] = "realtime.response"
    status: Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]
    status_details: EndedDetails | FailedDetails | None
    output: list[ItemObject]
    conversation_id: Literal["auto"] | None
    output_modalities: list[Literal["audio", "text"]]
    audio: ResponseAudio
    max_output_tokens: int
    metadata: dict[str, str] | None
    usage: UsageObject | None


# --- events -------------------------------------------------------------------------------


def new_event_id() -> str:
    return f"event_{uuid.uuid4().hex[:22]}"


class ServerEvent(WireModel):
    type: str
    event_id: str = Field(default_factory=new_event_id)

    def to_json(self) -> str:
        """The event as sent: compact JSON."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))


class SessionCreatedEvent(ServerEvent):
    type: Literal["session.created"] = "session.created"
    session: SessionObject


class SessionUpdatedEvent(ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: SessionObject


class ErrorObject(WireModel):
    type: str
    code: str
    message: str
    param: str | None
    event_id: str | None
    """The client event this answers, if any."""


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorObject


class InputAudioBufferSpeechStartedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class InputAudioBufferSpeechStoppedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferCommittedEvent(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None


class InputAudioBufferClearedEvent(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class ConversationItemAddedEvent(ServerEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"
    item: ItemObject
    previous_item_id: str | None


class ConversationItemDoneEvent(ServerEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    item: ItemObject


class ConversationItemTruncatedEvent(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int = 0
    audio_end_ms: int


class ConversationItemDeletedEvent(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ConversationItemRetrievedEvent(ServerEvent):
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: ItemObject


class TranscriptionUsage(WireModel):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompletedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: TranscriptionUsage


class TranscriptionError(WireModel):
    type: Literal["server_error"] = "server_error"
    code: Literal["transcription_failed"] = "transcription_failed"
    message: str


class TranscriptionFailedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: TranscriptionError


class ResponseCreatedEvent(ServerEvent):
    type: Literal["response.created"] = "response.created"
    response: ResponseObject


class ResponseOutputItemAddedEvent(ServerEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int
    item: ItemObject


class ResponseOutputItemDoneEvent(ServerEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int
    item: ItemObject


class ContentEvent(ServerEvent):
    """An event about the content part of an output item (an item has one part: index 0)."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int = 0


class ResponseContentPartAddedEvent(ContentEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: TextContent | TranscriptContent


class ResponseContentPartDoneEvent(ContentEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: TextContent | TranscriptContent


class ResponseOutputTextDeltaEvent(ContentEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class ResponseOutputTextDoneEvent(ContentEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class ResponseOutputAudioTranscriptDeltaEvent(ContentEvent):
    type: Literal["response.output_audio_transcript.delta"] = (
        "response.output_audio_transcript.delta"
    )
    delta: str


class ResponseOutputAudioTranscriptDoneEvent(ContentEvent):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class ResponseOutputAudioDeltaEvent(ContentEvent):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str
    """Base64 audio in the response's output format."""


class ResponseOutputAudioDoneEvent(ContentEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class ResponseFunctionCallArgumentsDeltaEvent(ServerEvent):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


class ResponseFunctionCallArgumentsDoneEvent(ServerEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


class PairObject(WireModel):
    """`response.done`'s `x_voxgate.pair`: the pair of candidate answers a response is one of
    (`response.create`'s `x_voxgate.candidates`)."""

    id: str
    candidate: Literal[0, 1]
    """0: the turn's answer; 1: the second one, out of band."""


class ResponseExtension(OmitsNone):
    omitted_when_none: ClassVar[frozenset[str]] = frozenset({"pair"})

    timings_ms: dict[str, float]
    """Where the turn's latency went, per stage (`streaming/timings.py`)."""
    pair: PairObject | None = None


class ResponseDoneEvent(ServerEvent):
    type: Literal["response.done"] = "response.done"
    response: ResponseObject
    x_voxgate: ResponseExtension
