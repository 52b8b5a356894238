"""From wire to domain: client event models (`server/protocol.py`) -> session configuration,
conversation items and response requests, refusing with `Unsupported` what this server does not
implement and with `SessionRejected` what breaks its limits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from voxgate.model import tools as tools_schema
from voxgate.model.types import Role, ToolSpec
from voxgate.server.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    MessageItem,
    PcmaFormat,
    PcmFormat,
    PcmuFormat,
    ResponseParams,
    SemanticVad,
    ServerVad,
    SessionParams,
    Tracing,
    TranscriptionParams,
    Unsupported,
    VoiceId,
    WireItem,
)
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.config import SessionConfig, SessionLimits, Transcription, TurnDetection
from voxgate.streaming.events import Item
from voxgate.streaming.session import ResponseRequest, SessionRejected, new_id
from voxgate.streaming.vad import VadParams


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
    # Validated whole, so the session (or a client secret) gets a config it can use as it is.
    return SessionConfig.model_validate(dict(current) | update)


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


def message_item(wire: MessageItem, default_id: str) -> tuple[Item, str | None]:
    """A client-created message as a domain item, plus its base64 input audio if it has some;
    `default_id` is its id unless the client chose one."""
    if len(wire.content) != 1:
        raise Unsupported("item.content", "messages with other than exactly one content part")
    part = wire.content[0]
    role = Role(wire.role)
    item_id = wire.id or default_id
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


def conversation_item(wire: WireItem, default_id: str) -> tuple[Item, str | None]:
    """`conversation.item.create`'s item as a domain item, plus its base64 input audio if it
    has some; `default_id` is its id unless the client chose one."""
    match wire:
        case MessageItem():
            return message_item(wire, default_id)
        case FunctionCallItem():
            item = Item(
                wire.id or default_id,
                Role.ASSISTANT,
                kind="function_call",
                call_id=wire.call_id,
                name=wire.name,
                arguments=wire.arguments,
            )
            return item, None
        case FunctionCallOutputItem():
            item = Item(
                wire.id or default_id,
                Role.TOOL,
                kind="function_call_output",
                call_id=wire.call_id,
                output=wire.output,
            )
            return item, None
    raise Unsupported("item.type", f"{wire.type!r} items")


def candidates(params: ResponseParams | None) -> int:
    """How many candidate answers a `response.create` asks for (`response.x_voxgate`)."""
    if params is None or params.x_voxgate is None:
        return 1
    return params.x_voxgate.candidates


def response_request(
    params: ResponseParams | None,
    session_tools: Sequence[ToolSpec],
    limits: SessionLimits,
) -> ResponseRequest:
    """A `response.create` in domain terms (tool schemas are checked: callers on the event
    loop run it in a thread)."""
    if params is None:
        return ResponseRequest()
    if params.prompt is not None:
        raise Unsupported("response.prompt", "stored prompts (OpenAI's prompt templates)")
    # parallel_tool_calls: a response calls at most one function, which either value allows.
    if params.conversation not in (None, "auto", "none"):
        raise Unsupported("response.conversation", "conversations other than 'auto' and 'none'")
    request = ResponseRequest(
        instructions=params.instructions,
        in_conversation=params.conversation != "none",
        metadata=params.metadata,
    )
    if params.tools is not None:
        request.tools = function_tools(params.tools, "response.tools", limits)
    if params.tool_choice is not None:
        tools = request.tools if request.tools is not None else session_tools
        request.tool_choice = tool_choice(params.tool_choice, tools, "response.tool_choice")
    if params.reasoning is not None:
        request.reasoning_effort = params.reasoning.effort
    if params.output_modalities is not None:
        request.audio_output = audio_output(params.output_modalities)
    if params.max_output_tokens is not None:
        request.max_output_tokens = params.max_output_tokens
    if params.audio is not None:
        if params.audio.input is not None:
            raise Unsupported("response.audio.input", "input audio settings per response")
        if (out := params.audio.output) is not None:
            if out.voice is not None:
                request.voice = voice_name(out.voice)
            if out.format is not None:
                request.output_format = _format(out.format)
            if out.speed is not None:
                raise Unsupported("response.audio.output.speed", "speed per response")
    if params.input is not None:
        items = []
        for i, wire in enumerate(params.input):
            if not isinstance(wire, MessageItem):
                raise Unsupported(f"response.input[{i}].type", f"{wire.type!r} items")
            item, audio = message_item(wire, new_id("item"))
            if audio is not None:
                raise Unsupported(f"response.input[{i}]", "input audio in response.input")
            items.append(item)
        request.input_items = items
    return request
