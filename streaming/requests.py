"""What a client asks of a realtime session in domain terms, and how the session refuses it.

`SessionRejected` maps to an `error` event; the session stays usable. `ResponseRequest` is
`response.create`. Shared by the session and the parts it is made of.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from voxgate.model.types import ToolSpec
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.events import Item


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


class SessionRejected(Exception):
    """A client request the session refuses; it maps to an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def too_long(param: str, text: str, limit: int) -> SessionRejected:
    return SessionRejected(
        "string_above_max_length",
        f"{param} has {len(text)} characters; this server takes at most {limit}",
        param,
    )


@dataclass(slots=True)
class ResponseRequest:
    """`response.create` in domain terms; None fields take the session's value."""

    instructions: str | None = None
    audio_output: bool | None = None
    voice: str | None = None
    output_format: AudioFormat | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    in_conversation: bool = True
    input_items: list[Item] | None = None
    """Context for this response instead of the conversation."""
    metadata: dict[str, str] | None = None
    provisional: Item | None = None
    """A user turn not yet committed that this (speculative) answer replies to."""
    tools: tuple[ToolSpec, ...] | None = None
    tool_choice: str | None = None
    reasoning_effort: str | None = None
