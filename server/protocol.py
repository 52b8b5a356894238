"""OpenAI Realtime (GA) client events: the strict pydantic models every client event is parsed into.

An unknown field, a wrong type or a value out of range is a validation error that the connection
reports as an `error` event. Fields of the OpenAI protocol that this server cannot honour are
parsed too, and refused with `Unsupported` (`unsupported_feature`) rather than silently ignored,
when `server/translate.py` maps them onto the session. The official `openai` SDK's
`openai.types.realtime` models are the reference. Server events are in `server/server_events.py`.

voxgate's extensions: fields under `x_voxgate`, and the client events `voxgate.feedback.create`
(a rating of an answer) and `voxgate.preference.create` (the preferred candidate of a pair),
whose fields are those of `POST /v1/feedback` and `POST /v1/feedback/preferences`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    TypeAdapter,
    field_validator,
)
from pydantic_core import PydanticCustomError

from voxgate.server.feedback_types import FeedbackRequest, PreferenceRequest
from voxgate.streaming.config import MAX_TRANSCRIPTION_PROMPT_CHARS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


OutputTokens = Annotated[int, Field(ge=1, le=1_000_000)]
"""An answer's length in tokens: at least 1 (the server caps it further)."""

# Strings a session keeps and says back (or names in an error) are bounded here, below the
# event cap; longer is `string_above_max_length`, more is `array_above_max_length`.
Name = Annotated[str, StringConstraints(max_length=128)]
"""A name a client gives: a model, a voice, a function call's name or call_id."""
Language = Annotated[str, StringConstraints(max_length=16)]
"""A language tag: ISO-639-1 (`en`), or BCP-47 (`zh-Hant-TW`)."""
Keyword = Annotated[str, StringConstraints(max_length=64)]
"""A transcription keyword: a word or a short phrase."""
MAX_KEYWORDS = 100
"""Transcription keywords (and languages) per session: Whisper's 224-token prompt holds about
100 words. Both are refused as unsupported, but bounded before they are parsed whole."""
MAX_METADATA_PAIRS = 16
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
"""OpenAI's metadata limits: 16 pairs, keys of 64 characters, values of 512."""
MAX_TRACING_METADATA_CHARS = MAX_METADATA_PAIRS * (64 + 512)
"""Tracing metadata may nest (OpenAI's type is any object): bounded by its JSON length, as
much as 16 pairs of response metadata can hold."""


# --- session ------------------------------------------------------------------------------


class PcmFormat(Strict):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class PcmuFormat(Strict):
    type: Literal["audio/pcmu"]


class PcmaFormat(Strict):
    type: Literal["audio/pcma"]


def _format_tag(value: Any) -> str | None:
    # The SDK lets `type` out of a format object: a bare {"rate": 24000} is audio/pcm.
    if isinstance(value, dict):
        return value.get("type", "audio/pcm")
    return getattr(value, "type", None)


WireAudioFormat = Annotated[
    Annotated[PcmFormat, Tag("audio/pcm")]
    | Annotated[PcmuFormat, Tag("audio/pcmu")]
    | Annotated[PcmaFormat, Tag("audio/pcma")],
    Discriminator(_format_tag),
]


class TurnTaking(Strict):
    """voxgate's turn-taking extension, `turn_detection.x_voxgate` (see streaming/config.py)."""

    min_interruption_ms: int | None = Field(None, ge=0, le=5000)
    min_interruption_words: int | None = Field(None, ge=0, le=20)
    false_interruption: Literal["resume", "silence"] | None = None
    echo_guard: bool | None = None
    speculative_start_ms: int | None = Field(None, ge=0, le=5000)
    """0 turns speculative start off."""


class ServerVad(Strict):
    type: Literal["server_vad"]
    x_voxgate: TurnTaking | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None


class SemanticVad(Strict):
    type: Literal["semantic_vad"]
    x_voxgate: TurnTaking | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class TranscriptionParams(Strict):
    model: Name | None = None
    language: Language | None = None
    prompt: str | None = Field(None, max_length=MAX_TRANSCRIPTION_PROMPT_CHARS)
    delay: str | None = Field(None, max_length=16)
    keywords: list[Keyword] | None = Field(None, max_length=MAX_KEYWORDS)
    languages: list[Language] | None = Field(None, max_length=MAX_KEYWORDS)


class NoiseReduction(Strict):
    type: Literal["near_field", "far_field"]


class AudioInputParams(Strict):
    format: WireAudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: TranscriptionParams | None = None
    turn_detection: Annotated[ServerVad | SemanticVad, Field(discriminator="type")] | None = None


class VoiceId(Strict):
    id: Name


class AudioOutputParams(Strict):
    format: WireAudioFormat | None = None
    voice: Name | VoiceId | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class SessionAudioParams(Strict):
    input: AudioInputParams | None = None
    output: AudioOutputParams | None = None


class Reasoning(Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class Tracing(Strict):
    """OpenAI's tracing configuration (traces go to OpenAI's dashboard): accepted, not used."""

    group_id: str | None = Field(None, max_length=512)
    metadata: dict[MetadataKey, JsonValue] | None = Field(None, max_length=MAX_METADATA_PAIRS)
    """Kept for the session and said back in every `session.updated`: any JSON (OpenAI's type
    is an object), in 16 pairs of at most `MAX_TRACING_METADATA_CHARS` as JSON altogether."""

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, metadata: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if metadata is not None and len(json.dumps(metadata)) > MAX_TRACING_METADATA_CHARS:
            raise PydanticCustomError(
                "string_too_long",
                "tracing metadata is longer than {max_length} characters as JSON",
                {"max_length": MAX_TRACING_METADATA_CHARS},
            )
        return metadata

    workflow_name: str | None = Field(None, max_length=512)


Include = Literal["item.input_audio_transcription.logprobs"]


class SessionParams(Strict):
    type: Literal["realtime", "transcription"]
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: SessionAudioParams | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | dict[str, Any] | None = None
    tracing: Tracing | Literal["auto"] | None = None
    truncation: Any = None
    include: list[Include] | None = None
    prompt: Any = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


# --- conversation items -------------------------------------------------------------------


class ContentPart(Strict):
    type: Literal["input_text", "input_audio", "output_text", "output_audio", "input_image"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: str | None = None


class MessageItem(Strict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart]
    id: str | None = Field(None, max_length=64)
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: Name
    name: Name
    arguments: str
    id: str | None = Field(None, max_length=64)
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: Name
    output: str
    id: str | None = Field(None, max_length=64)
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class FunctionTool(Strict):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class FunctionChoice(Strict):
    type: Literal["function"]
    name: Name


class OtherItem(BaseModel):
    """MCP items: parsed only to be refused by name."""

    model_config = ConfigDict(extra="allow")
    type: Literal[
        "mcp_approval_response",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
    ]


WireItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | OtherItem, Field(discriminator="type")
]


# --- client events ------------------------------------------------------------------------


class ClientEvent(Strict):
    event_id: str | None = Field(None, max_length=128)


class SessionUpdate(ClientEvent):
    type: Literal["session.update"]
    session: SessionParams


class InputAudioBufferAppend(ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ConversationItemCreate(ClientEvent):
    type: Literal["conversation.item.create"]
    item: WireItem
    previous_item_id: str | None = None


class ConversationItemDelete(ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int
    audio_end_ms: int


class ResponseExtension(Strict):
    """voxgate's extension of `response.create`, `response.x_voxgate`."""

    candidates: int = Field(1, ge=1, le=2, strict=True)
    """2: the turn is answered twice, for a person to prefer one (`streaming/candidates.py`);
    only on a server that captures answers (`VOXGATE_FEEDBACK__ENABLED`)."""


class ResponseParams(Strict):
    x_voxgate: ResponseExtension | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: SessionAudioParams | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    conversation: str | None = None
    input: list[WireItem] | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=MAX_METADATA_PAIRS)
    """OpenAI's limits: 16 pairs, keys of 64 characters, values of 512."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | dict[str, Any] | None = None
    prompt: Any = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


class ResponseCreate(ClientEvent):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioBufferClear(ClientEvent):
    type: Literal["output_audio_buffer.clear"]


class FeedbackCreate(ClientEvent, FeedbackRequest):
    """Rate an answer (answered by `voxgate.feedback.created`)."""

    type: Literal["voxgate.feedback.create"]


class PreferenceCreate(ClientEvent, PreferenceRequest):
    """Say which candidate of a pair is preferred (answered by `voxgate.preference.created`)."""

    type: Literal["voxgate.preference.create"]


AnyClientEvent = Annotated[
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemDelete
    | ConversationItemRetrieve
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel
    | OutputAudioBufferClear
    | FeedbackCreate
    | PreferenceCreate,
    Field(discriminator="type"),
]
CLIENT_EVENT = TypeAdapter(AnyClientEvent)
CLIENT_EVENT_TYPES = frozenset(
    t.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for t in AnyClientEvent.__origin__.__args__  # type: ignore[attr-defined]
)

UNION_TAGS = CLIENT_EVENT_TYPES | {
    "audio/pcm",
    "audio/pcmu",
    "audio/pcma",
    "server_vad",
    "semantic_vad",
    "message",
    "function_call",
    "function_call_output",
    *OtherItem.model_fields["type"].annotation.__args__,  # type: ignore[union-attr]
}
"""Discriminator values pydantic puts into error locations (they are not field names)."""


class Unsupported(Exception):
    """A protocol feature this server does not implement: refused, never ignored."""

    def __init__(self, param: str, what: str) -> None:
        super().__init__(f"{param}: {what} is not supported by this server")
        self.param = param
