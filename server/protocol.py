"""OpenAI Realtime (GA) wire events: client events parsed at the edge, server events built here.

Client events are strict pydantic models: an unknown field, a wrong type or a value out of range is
a validation error that the connection reports as an `error` event. Fields of the OpenAI protocol
that this server cannot honour are parsed too, and refused with `unsupported_feature` rather than
silently ignored (see `session_config`). The official `openai` SDK's `openai.types.realtime`
models are the reference; the tests validate every server event against them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from voxgate.model import tools as tools_schema
from voxgate.model.types import Role, ToolSpec
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.config import (
    MAX_TRANSCRIPTION_PROMPT_CHARS,
    SessionConfig,
    SessionLimits,
    Transcription,
    TurnDetection,
)
from voxgate.streaming.events import Item, ItemStatus, Response, ResponseStatus
from voxgate.streaming.session import SessionRejected
from voxgate.streaming.vad import VadParams


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


class ResponseParams(Strict):
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
    | OutputAudioBufferClear,
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


# --- from wire to domain ------------------------------------------------------------------


class Unsupported(Exception):
    """A protocol feature this server does not implement: refused, never ignored."""

    def __init__(self, param: str, what: str) -> None:
        super().__init__(f"{param}: {what} is not supported by this server")
        self.param = param


def _format(wire: PcmFormat | PcmuFormat | PcmaFormat) -> AudioFormat:
    return AudioFormat(wire.type)


def voice_name(voice: str | VoiceId) -> str:
    return voice.id if isinstance(voice, VoiceId) else voice


def audio_output(modalities: list[str]) -> bool:
    if len(modalities) != 1:
        raise Unsupported("output_modalities", "anything but exactly one of ['audio'] or ['text']")
    return modalities[0] == "audio"


def _set(model: BaseModel | None, name: str) -> bool:
    return model is not None and name in model.model_fields_set


def session_config(
    current: SessionConfig, params: SessionParams, limits: SessionLimits
) -> SessionConfig:
    """Apply a `session.update` to the current config (only the fields the client set).

    CPU work for big updates (tool schemas are checked here): callers on the event loop run
    it in a thread."""
    if params.type != "realtime":
        raise Unsupported("session.type", "'transcription' sessions")
    if params.prompt is not None:
        raise Unsupported("session.prompt", "stored prompts (OpenAI's prompt templates)")
    if params.truncation not in (None, "auto"):
        raise Unsupported("session.truncation", "truncation other than 'auto'")

    update: dict[str, Any] = {}
    # Accepted with OpenAI's meaning, honoured as far as the server can (said in x_voxgate):
    # tracing is OpenAI's dashboard, nothing to send it to; this server's ASR reports no
    # logprobs; and a response calls at most one function, which `parallel_tool_calls`
    # either way allows.
    if _set(params, "tracing"):
        update["tracing"] = (
            params.tracing.model_dump(exclude_none=True)
            if isinstance(params.tracing, Tracing)
            else params.tracing
        )
    if _set(params, "include"):
        update["include"] = tuple(dict.fromkeys(params.include or ()))  # kept once each
    if _set(params, "parallel_tool_calls"):
        update["parallel_tool_calls"] = params.parallel_tool_calls
    if params.tools is not None:
        update["tools"] = function_tools(params.tools, "session.tools", limits)
    if params.tool_choice is not None:
        tools = update.get("tools", current.tools)
        update["tool_choice"] = tool_choice(params.tool_choice, tools, "session.tool_choice")
    if _set(params, "reasoning"):
        update["reasoning_effort"] = params.reasoning.effort if params.reasoning else None
    if params.instructions is not None:
        update["instructions"] = params.instructions
    if params.output_modalities is not None:
        update["audio_output"] = audio_output(params.output_modalities)
    if params.max_output_tokens is not None:
        # "inf" is the server's cap (SessionLimits.max_output_tokens), applied per response.
        inf = params.max_output_tokens == "inf"
        update["max_output_tokens"] = None if inf else params.max_output_tokens
    audio = params.audio
    inp = audio.input if audio else None
    out = audio.output if audio else None
    if inp is not None:
        if inp.format is not None:
            update["input_format"] = _format(inp.format)
        if _set(inp, "noise_reduction"):
            nr = inp.noise_reduction
            update["noise_reduction"] = nr.type if nr is not None else None
        if _set(inp, "transcription"):
            update["transcription"] = _transcription(inp.transcription)
        if _set(inp, "turn_detection"):
            update["turn_detection"] = _turn_detection(current.turn_detection, inp.turn_detection)
    if out is not None:
        if out.format is not None:
            update["output_format"] = _format(out.format)
        if out.voice is not None:
            update["voice"] = voice_name(out.voice)
        if out.speed is not None:
            update["speed"] = out.speed
    return current.model_copy(update=update)


def function_tools(
    tools: list[dict[str, Any]], param: str, limits: SessionLimits
) -> tuple[ToolSpec, ...]:
    """The session's or response's function tools, checked: at most `limits.max_tools`, names
    unique, descriptions short (`max_tool_description_chars`), schemas valid, small
    (`max_tool_schema_bytes`) and self-contained (a `$ref` only within the schema: a remote
    one would make the server fetch a URL)."""
    if len(tools) > limits.max_tools:
        raise SessionRejected(
            "array_above_max_length",
            f"{len(tools)} tools; this server takes at most {limits.max_tools}",
            param,
        )
    specs: list[ToolSpec] = []
    for i, raw in enumerate(tools):
        if raw.get("type", "function") != "function":
            raise Unsupported(f"{param}[{i}].type", f"{raw.get('type')!r} tools")
        try:
            tool = FunctionTool.model_validate(raw)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
            raise SessionRejected(code, first["msg"], f"{param}[{i}].{where}") from e
        if len(tool.description) > limits.max_tool_description_chars:
            raise SessionRejected(
                "string_above_max_length",
                f"the description has {len(tool.description)} characters; this server takes "
                f"at most {limits.max_tool_description_chars}",
                f"{param}[{i}].description",
            )
        where = f"{param}[{i}].parameters"
        size = len(json.dumps(tool.parameters, separators=(",", ":")))
        if size > limits.max_tool_schema_bytes:
            raise SessionRejected(
                "string_above_max_length",
                f"the schema takes {size} bytes; this server takes at most "
                f"{limits.max_tool_schema_bytes}",
                where,
            )
        if (ref := tools_schema.remote_ref(tool.parameters)) is not None:
            raise SessionRejected(
                "invalid_value",
                f"the schema refers outside itself ($ref {ref[:100]!r}); only local "
                "references (#/...) are allowed",
                where,
            )
        try:
            jsonschema.Draft202012Validator.check_schema(tool.parameters)
        except jsonschema.SchemaError as e:
            raise SessionRejected("invalid_value", f"not a JSON Schema: {e.message}", where) from e
        if any(spec.name == tool.name for spec in specs):
            raise SessionRejected(
                "invalid_value", f"two tools are named {tool.name!r}", f"{param}[{i}].name"
            )
        specs.append(ToolSpec(tool.name, tool.description, tool.parameters))
    return tuple(specs)


def tool_choice(
    choice: str | FunctionChoice | dict[str, Any], tools: Sequence[ToolSpec], param: str
) -> str:
    if isinstance(choice, dict):
        raise Unsupported(f"{param}.type", f"{choice.get('type')!r} tool choices")
    if isinstance(choice, FunctionChoice):
        if all(t.name != choice.name for t in tools):
            raise SessionRejected(
                "invalid_value", f"no tool named {choice.name!r}", f"{param}.name"
            )
        return choice.name
    return choice


def _transcription(params: TranscriptionParams | None) -> Transcription | None:
    if params is None:
        return None
    for name in ("delay", "keywords", "languages"):
        if getattr(params, name) is not None:
            raise Unsupported(f"session.audio.input.transcription.{name}", name)
    return Transcription(
        model=params.model or "default", language=params.language, prompt=params.prompt
    )


SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 350}
"""Base silence of semantic end of turn; a complete thought ends sooner, a trailing one later."""


def _turn_detection(
    current: TurnDetection | None, params: ServerVad | SemanticVad | None
) -> TurnDetection | None:
    if params is None:
        return None
    base = current or TurnDetection()
    vad: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if isinstance(params, SemanticVad):
        eagerness = params.eagerness or "auto"
        settings["eagerness"] = eagerness
        vad["silence_duration_ms"] = SEMANTIC_SILENCE_MS[eagerness]
    else:
        if params.idle_timeout_ms is not None:
            raise Unsupported("session.audio.input.turn_detection.idle_timeout_ms", "idle timeouts")
        settings["eagerness"] = None
        for name in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
            if (value := getattr(params, name)) is not None:
                vad[name] = value
    for name in ("create_response", "interrupt_response"):
        if (value := getattr(params, name)) is not None:
            settings[name] = value
    if params.x_voxgate is not None:
        settings |= params.x_voxgate.model_dump(exclude_none=True)
        if settings.get("speculative_start_ms") == 0:
            settings["speculative_start_ms"] = None
    return TurnDetection(
        vad=VadParams(**(base.vad.model_dump() | vad)),
        **(base.model_dump(exclude={"vad"}) | settings),
    )


def message_item(wire: MessageItem, new_id: str) -> tuple[Item, str | None]:
    """A client-created message as a domain item, plus its base64 input audio if it has some."""
    if len(wire.content) != 1:
        raise Unsupported("item.content", "messages with other than exactly one content part")
    part = wire.content[0]
    role = Role(wire.role)
    item_id = wire.id or new_id
    expected = {
        Role.USER: ("input_text", "input_audio"),
        Role.SYSTEM: ("input_text",),
        Role.ASSISTANT: ("output_text", "output_audio"),
    }[role]
    if part.type not in expected:
        raise Unsupported("item.content[0].type", f"{part.type!r} in a {role.value} message")
    if part.type in ("input_text", "output_text"):
        if part.text is None:
            raise SessionRejected(
                "missing_required_parameter", "text content needs `text`", "item.content[0].text"
            )
        return Item(item_id, role, text=part.text), None
    if part.audio is None or part.type == "output_audio":
        if part.transcript is None:
            raise SessionRejected(
                "missing_required_parameter",
                "audio content needs `audio` or `transcript`",
                "item.content[0].transcript",
            )
        return Item(item_id, role, audio=True, transcript=part.transcript), None
    return Item(item_id, role, audio=True, transcript=part.transcript), part.audio


# --- server events ------------------------------------------------------------------------


def wire_format(fmt: AudioFormat) -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": 24000} if fmt is AudioFormat.PCM else {"type": fmt.value}


def session_extension(config: SessionConfig, noise_suppressor: str | None) -> dict[str, Any]:
    """`session.x_voxgate`: what this server does with settings it accepts but cannot fully
    honour (empty when there are none)."""
    extension: dict[str, Any] = {}
    if config.noise_reduction is not None:
        extension["noise_reduction"] = noise_suppressor or "not applied"
    ignored = {}
    if config.tracing is not None:
        ignored["tracing"] = "accepted; this server traces nothing"
    if config.include:
        ignored["include"] = "accepted; this server's transcription reports no logprobs"
    if config.parallel_tool_calls:
        ignored["parallel_tool_calls"] = "accepted; a response calls at most one function"
    if ignored:
        extension["not_honoured"] = ignored
    return extension


def wire_session(
    config: SessionConfig, session_id: str, model: str, noise_suppressor: str | None = None
) -> dict[str, Any]:
    td = config.turn_detection
    turn_detection: dict[str, Any] | None = None
    if td is not None:
        extension = {
            "min_interruption_ms": td.min_interruption_ms,
            "min_interruption_words": td.min_interruption_words,
            "false_interruption": td.false_interruption,
            "echo_guard": td.echo_guard,
            "speculative_start_ms": td.speculative_start_ms or 0,
        }
        common = {
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
            "x_voxgate": extension,
        }
        if td.eagerness is not None:
            turn_detection = {"type": "semantic_vad", "eagerness": td.eagerness, **common}
        else:
            turn_detection = {
                "type": "server_vad",
                "threshold": td.vad.threshold,
                "prefix_padding_ms": td.vad.prefix_padding_ms,
                "silence_duration_ms": td.vad.silence_duration_ms,
                "idle_timeout_ms": None,
                **common,
            }
    tr = config.transcription
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio" if config.audio_output else "text"],
        "instructions": config.instructions,
        "audio": {
            "input": {
                "format": wire_format(config.input_format),
                "transcription": None
                if tr is None
                else {"model": tr.model, "language": tr.language, "prompt": tr.prompt},
                "noise_reduction": None
                if config.noise_reduction is None
                else {"type": config.noise_reduction},
                "turn_detection": turn_detection,
            },
            "output": {
                "format": wire_format(config.output_format),
                "voice": config.voice,
                "speed": config.speed,
            },
        },
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
            }
            for t in config.tools
        ],
        "tool_choice": (
            config.tool_choice
            if config.tool_choice in ("auto", "none", "required")
            else {"type": "function", "name": config.tool_choice}
        ),
        **({"reasoning": {"effort": config.reasoning_effort}} if config.reasoning_effort else {}),
        "tracing": config.tracing,
        **({"include": list(config.include)} if config.include else {}),
        **({"x_voxgate": ext} if (ext := session_extension(config, noise_suppressor)) else {}),
        "max_output_tokens": "inf"
        if config.max_output_tokens is None
        else config.max_output_tokens,
        "truncation": "auto",
    }


def wire_item(item: Item, *, as_started: bool = False) -> dict[str, Any]:
    """`as_started`: the item as it was when it started (in progress, no content yet)."""
    status = ItemStatus.IN_PROGRESS if as_started else item.status
    base = {"id": item.id, "object": "realtime.item", "status": status.value}
    if item.kind == "function_call":
        return base | {
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": "" if as_started else item.arguments,
        }
    if item.kind == "function_call_output":
        return base | {
            "type": "function_call_output",
            "call_id": item.call_id,
            "output": item.output,
        }
    if item.role is Role.USER:
        part = (
            {"type": "input_audio", "transcript": item.transcript}
            if item.audio
            else {"type": "input_text", "text": item.text}
        )
    elif item.role is Role.SYSTEM:
        part = {"type": "input_text", "text": item.text}
    else:
        part = (
            {"type": "output_audio", "transcript": item.transcript}
            if item.audio
            else {"type": "output_text", "text": item.text}
        )
    return {
        "id": item.id,
        "object": "realtime.item",
        "type": "message",
        "role": item.role.value,
        "status": status.value,
        "content": [part] if status is not ItemStatus.IN_PROGRESS else [],
    }


def content_part(item: Item) -> dict[str, Any]:
    if item.audio:
        return {"type": "audio", "transcript": item.transcript or ""}
    return {"type": "text", "text": item.text}


def wire_response(response: Response, *, as_created: bool = False) -> dict[str, Any]:
    """`as_created`: the response as it was when created (in progress, nothing out yet)."""
    status = ResponseStatus.IN_PROGRESS if as_created else response.status
    details: dict[str, Any] | None = None
    if status.value in ("cancelled", "incomplete"):
        details = {"type": status.value, "reason": response.reason}
    elif status.value == "failed" and response.error is not None:
        code, message = response.error
        details = {
            "type": "failed",
            "error": {"type": "server_error", "code": code, "message": message},
        }
    usage = None
    if status.value != "in_progress":
        usage = {
            "total_tokens": response.input_tokens + response.output_tokens,
            "input_tokens": response.input_tokens,
            "output_tokens": response.output_tokens,
            # Speech codes the backbone generated itself (a unified speech LM); 0 when a
            # separate TTS spoke the text.
            "output_token_details": {
                "text_tokens": response.output_tokens - response.output_audio_tokens,
                "audio_tokens": response.output_audio_tokens,
            },
        }
    wire: dict[str, Any] = {
        "id": response.id,
        "object": "realtime.response",
        "status": status.value,
        "status_details": details,
        "output": [wire_item(i) for i in response.items] if usage is not None else [],
        "conversation_id": "auto" if response.in_conversation else None,
        "output_modalities": ["audio" if response.audio else "text"],
        "audio": {
            "output": {
                "format": wire_format(AudioFormat(response.audio_format)),
                "voice": response.voice,
            }
        },
        "max_output_tokens": response.max_output_tokens,
        "metadata": response.metadata,
        "usage": usage,
    }
    return wire
