"""What a realtime session says, as domain events (the server turns them into wire events).

One class per thing that happened. They carry ids and data, never wire shapes: the OpenAI
event sequencing (output_item.added, content_part.added, ...) is the server's business.

Events are values. The session works on live `Item`s and `Response`s, which change as an answer
is written; an event made from them keeps a snapshot (`ItemSnapshot`, `ResponseSnapshot`) of
how they were when it was made, so an event waiting in a queue says what it said when queued.
"""

from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from voxgate.model.types import Role, TurnTrace
from voxgate.streaming.config import SessionConfig


class ItemStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


ItemKind = Literal["message", "function_call", "function_call_output"]


@dataclass(frozen=True, slots=True)
class ItemSnapshot:
    """A conversation item as it was when an event about it was made."""

    id: str
    role: Role
    kind: ItemKind
    status: ItemStatus
    audio: bool
    text: str
    transcript: str | None
    audio_ms: int
    call_id: str
    name: str
    arguments: str
    output: str

    def started(self) -> ItemSnapshot:
        """The item as it starts: in progress, nothing written yet."""
        return replace(
            self,
            status=ItemStatus.IN_PROGRESS,
            text="",
            transcript="" if self.audio else None,
            audio_ms=0,
            arguments="",
        )


@dataclass(slots=True)
class Item:
    """A conversation item: a message (user audio items get their `transcript` once ASR is
    done), a function call the model made, or the result the client handed back."""

    id: str
    role: Role
    text: str = ""
    """Typed text (user text items, text-only answers)."""
    transcript: str | None = None
    """What was said, for audio items (None while unknown)."""
    audio: bool = False
    status: ItemStatus = ItemStatus.COMPLETED
    samples: np.ndarray | None = field(default=None, repr=False)
    """The user's voice (16 kHz), kept for the newest `audio_turns_kept` user audio items
    (bounded memory); backbones that hear audio answer from it."""
    tokens: array[int] | None = field(default=None, repr=False)
    """An assistant answer as the backbone wrote it (`ResponseEnd.spoken_tokens`), handed
    back with the turn; dropped when the answer is truncated."""
    audio_ms: int = 0
    """Assistant audio sent so far (what `conversation.item.truncate` may cut back to)."""
    spoken: list[tuple[int, int]] = field(default_factory=list, repr=False)
    """(audio ms, transcript offset) where each piece of the transcript starts being spoken."""
    kind: ItemKind = "message"
    call_id: str = ""
    name: str = ""
    """The function's name (function_call; the matching call's for function_call_output)."""
    arguments: str = ""
    output: str = ""

    def snapshot(self) -> ItemSnapshot:
        return ItemSnapshot(
            id=self.id,
            role=self.role,
            kind=self.kind,
            status=self.status,
            audio=self.audio,
            text=self.text,
            transcript=self.transcript,
            audio_ms=self.audio_ms,
            call_id=self.call_id,
            name=self.name,
            arguments=self.arguments,
            output=self.output,
        )

    def heard_transcript(self, audio_end_ms: int) -> str:
        """The part of the transcript spoken in the first `audio_end_ms` of the audio: whole
        pieces that were heard, and the heard share of the piece under way (at a word end)."""
        text = self.transcript or ""
        marks = [*self.spoken, (self.audio_ms, len(text))]
        for (start_ms, start), (end_ms, end) in itertools.pairwise(marks):
            if audio_end_ms >= end_ms:
                continue
            if audio_end_ms <= start_ms or end_ms <= start_ms:
                return text[:start].rstrip()
            share = (audio_end_ms - start_ms) / (end_ms - start_ms)
            cut = start + int(share * (end - start))
            while cut > start and cut < len(text) and not text[cut].isspace():
                cut -= 1  # no half words
            return text[:cut].rstrip()
        return text

    @property
    def content_text(self) -> str:
        """The words of this item, whatever its modality (function calls in words too)."""
        match self.kind:
            case "function_call":
                return f"(called {self.name} with {self.arguments})"
            case "function_call_output":
                return f"{self.name or 'the function'} returned: {self.output}"
        return (self.transcript or "") if self.audio else self.text


class ResponseStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


CancelReason = Literal["turn_detected", "client_cancelled"]


@dataclass(frozen=True, slots=True)
class ResponseSnapshot:
    """A response as it was when an event about it was made."""

    id: str
    audio: bool
    voice: str
    audio_format: str
    in_conversation: bool
    max_output_tokens: int
    metadata: dict[str, str] | None
    """Set when the response is made, never changed."""
    status: ResponseStatus
    reason: str | None
    error: tuple[str, str] | None
    items: tuple[ItemSnapshot, ...]
    input_tokens: int
    output_tokens: int
    output_audio_tokens: int
    reasoning: str
    trace: TurnTrace
    """The response's own trace, shared on purpose: a log that only grows (the first mark of a
    name wins), where marks made after the event still count: the turn's end when a
    speculative answer is adopted, the first audio when the writer sends it."""
    origin: Response = field(compare=False, repr=False)
    """The live response, for the session alone: it holds back the events of a response whose
    output is held (`Response.held`). Nothing that turns events into wire events reads it."""

    def started(self) -> ResponseSnapshot:
        """The response as it starts: in progress, nothing produced yet."""
        return replace(
            self,
            status=ResponseStatus.IN_PROGRESS,
            reason=None,
            error=None,
            items=(),
            input_tokens=0,
            output_tokens=0,
            output_audio_tokens=0,
            reasoning="",
        )


@dataclass(slots=True)
class Response:
    id: str
    audio: bool
    voice: str
    audio_format: str
    in_conversation: bool
    max_output_tokens: int
    metadata: dict[str, str] | None = None
    status: ResponseStatus = ResponseStatus.IN_PROGRESS
    reason: str | None = None
    """cancelled: turn_detected | client_cancelled; incomplete: max_output_tokens."""
    error: tuple[str, str] | None = None
    """(code, message) when failed."""
    items: list[Item] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    output_audio_tokens: int = 0
    trace: TurnTrace = field(default_factory=TurnTrace)
    held: list[SessionEvent] | None = None
    """While not None, this response's events wait here instead of going to the client (a
    speculative answer not yet adopted, or an answer paused by a possible interruption)."""
    provisional: bool = False
    """Answers a turn not yet committed: its items join the conversation at adoption."""
    reasoning: str = ""
    """Think mode: what the model thought before answering (sent as text, never spoken)."""
    reasoning_done: bool = False
    context_start: int = 0

    def snapshot(self) -> ResponseSnapshot:
        return ResponseSnapshot(
            id=self.id,
            audio=self.audio,
            voice=self.voice,
            audio_format=self.audio_format,
            in_conversation=self.in_conversation,
            max_output_tokens=self.max_output_tokens,
            metadata=self.metadata,
            status=self.status,
            reason=self.reason,
            error=self.error,
            items=tuple(item.snapshot() for item in self.items),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            output_audio_tokens=self.output_audio_tokens,
            reasoning=self.reasoning,
            trace=self.trace,
            origin=self,
        )


def _frozen(event: Any, *, started: bool = False) -> None:
    """Replace the live response and item an event was made from by snapshots of them now
    (`started`: as they started). An event remade from another (`dataclasses.replace`) keeps its
    snapshots."""
    response = getattr(event, "response", None)
    if isinstance(response, Response):
        response = response.snapshot()
    if started and response is not None:
        response = response.started()
    item = getattr(event, "item", None)
    if isinstance(item, Item):
        item = item.snapshot()
    if started and item is not None:
        item = item.started()
    if response is not None:
        object.__setattr__(event, "response", response)
    if item is not None:
        object.__setattr__(event, "item", item)


# --- events -------------------------------------------------------------------------------
# Those about a response or item are made from the live `Response` and `Item`; they keep
# snapshots of them (see `_frozen`).


@dataclass(frozen=True, slots=True)
class SpeechStartedEvent:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStoppedEvent:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCleared:
    pass


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """A user (or client-created) item entered the conversation."""

    item: ItemSnapshot
    previous_item_id: str | None

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class InputTranscribed:
    item_id: str
    transcript: str
    audio_seconds: float


@dataclass(frozen=True, slots=True)
class InputTranscriptionFailed:
    item_id: str
    message: str


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """A response starts: it is in progress and has produced nothing yet."""

    response: ResponseSnapshot

    def __post_init__(self) -> None:
        _frozen(self, started=True)


@dataclass(frozen=True, slots=True)
class OutputItemStarted:
    """An output item starts: in progress, nothing written yet."""

    response: ResponseSnapshot
    item: ItemSnapshot
    output_index: int
    previous_item_id: str | None

    def __post_init__(self) -> None:
        _frozen(self, started=True)


@dataclass(frozen=True, slots=True)
class OutputTextDelta:
    """Words of the answer (the audio transcript when `response.audio`)."""

    response: ResponseSnapshot
    item: ItemSnapshot
    delta: str

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class FunctionCallArgumentsDelta:
    response: ResponseSnapshot
    item: ItemSnapshot
    delta: str

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class ReasoningDeltaEvent:
    """Think mode, extension event: reasoning text of the response (not spoken)."""

    response: ResponseSnapshot
    delta: str

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class ReasoningDone:
    response: ResponseSnapshot

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class SummaryUpdated:
    """Extension event: older turns were folded into the conversation's running summary."""

    summary: str
    items_folded: int


@dataclass(frozen=True, slots=True)
class OutputAudioDelta:
    response: ResponseSnapshot
    item: ItemSnapshot
    audio: bytes
    """Encoded in the response's output format."""

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class OutputItemFinished:
    response: ResponseSnapshot
    item: ItemSnapshot
    output_index: int

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class ResponseFinished:
    response: ResponseSnapshot

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class ItemDone:
    """A user item is final (for audio: its transcript is known)."""

    item: ItemSnapshot

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ItemRetrieved:
    item: ItemSnapshot

    def __post_init__(self) -> None:
        _frozen(self)


@dataclass(frozen=True, slots=True)
class SessionConfigured:
    config: SessionConfig
    created: bool
    """True for the first configuration of the connection (session.created)."""


@dataclass(frozen=True, slots=True)
class ErrorReported:
    """Something the client should know went wrong; the session stays usable."""

    code: str
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    event_id: str | None = None
    """The client event this answers, if any."""


SessionEvent = (
    SpeechStartedEvent
    | SpeechStoppedEvent
    | InputCommitted
    | InputCleared
    | ItemAdded
    | InputTranscribed
    | InputTranscriptionFailed
    | ResponseStarted
    | OutputItemStarted
    | OutputTextDelta
    | OutputAudioDelta
    | FunctionCallArgumentsDelta
    | ReasoningDeltaEvent
    | ReasoningDone
    | SummaryUpdated
    | OutputItemFinished
    | ResponseFinished
    | ItemDone
    | ItemDeleted
    | ItemTruncated
    | ItemRetrieved
    | SessionConfigured
    | ErrorReported
)


def response_id(event: SessionEvent) -> str | None:
    """The id of the response an event is about, if it is about one."""
    response = getattr(event, "response", None)
    return response.id if response is not None else None


def remade_end(event: SessionEvent, response: Response) -> SessionEvent:
    """A held end of `response` (an item's or its own) made again from the response as it is
    now; other events as they are. An answer that finished while held and was then found
    interrupted after all ends as cancelled."""
    match event:
        case OutputItemFinished(output_index=index):
            return OutputItemFinished(response, response.items[index], index)
        case ResponseFinished():
            return ResponseFinished(response)
    return event
