"""The handful of domain types that cross the `model` boundary.

Audio inside voxgate is mono float32 in [-1, 1]. Input to a backbone is always at
`INPUT_SAMPLE_RATE`; output chunks carry their own rate (the streaming layer resamples
them to whatever the client asked for).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

INPUT_SAMPLE_RATE = 16_000
"""Every backbone hears 16 kHz mono float32."""


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of synthesised speech: mono float32 samples at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text of the answer, sent just before the audio that speaks it."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Thinking before the answer (think mode): shown to the client as text, never spoken."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The answer is a function call: `arguments` is JSON valid for the tool's schema."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The last item of every `respond()` stream that was not cancelled."""

    finish_reason: Literal["stop", "length"]
    input_tokens: int
    output_tokens: int
    output_audio_tokens: int = 0
    """Of `output_tokens`, the speech codes (each is 40 ms of audio); 0 for text LMs."""
    context_start: int = 0
    """Index of the first conversation turn the prompt held: the turns before it did not fit
    the context budget (the session may fold them into its summary)."""
    spoken_tokens: array[int] | None = None
    """The spoken answer as the model wrote it, its own token ids (Step-Audio-2: the TA4
    stream up to `<tts_end>`), 4 bytes each. The session hands them back with the answer's
    turn (`Turn.tokens`) so the model sees its past speech verbatim; None for text LMs."""


ResponseOutput = TextDelta | AudioChunk | ReasoningDelta | ToolCall | ResponseEnd


@dataclass(frozen=True, slots=True)
class AnswerBudget:
    """How long a realtime answer may run, in the backbone's output tokens. Sessions start at
    `default_tokens`; a client's `max_output_tokens` (OpenAI's cap, in tokens) is honoured up
    to `max_tokens` ("inf" is `max_tokens`)."""

    default_tokens: int
    max_tokens: int


TEXT_ANSWER_BUDGET = AnswerBudget(default_tokens=128, max_tokens=512)
"""A text LM's realtime answer (the cascade's): a few spoken sentences by default, and a session
may ask for up to 4x as much. Its default is also the answer length of a `ResponseOptions` or
`SessionConfig` built without one (the server always sets it from its backbone's budget)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call (OpenAI's function tool)."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object."""


@dataclass(frozen=True, slots=True)
class Word:
    start_s: float
    end_s: float
    word: str


@dataclass(frozen=True, slots=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    duration_s: float
    language: str | None = None
    segments: tuple[Segment, ...] = ()
    """Filled when timestamps were asked for (times from the start of the given audio)."""


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    """Extra instructions placed in the conversation (the persona itself is separate)."""
    TOOL = "tool"
    """A function's result, handed back by the client."""


@dataclass(frozen=True, slots=True, eq=False)
class Turn:
    """One message of the conversation as the backbone sees it (the persona is separate)."""

    role: Role
    text: str
    audio: np.ndarray | None = None
    """The user's voice (16 kHz) while the session still keeps it; backbones that hear audio
    use it instead of the transcript in `text`."""
    key: str | None = None
    """A stable id of the message (the conversation item id), when it has one."""
    tokens: array[int] | None = None
    """An assistant answer as the backbone wrote it (`ResponseEnd.spoken_tokens`), while it
    is unchanged (a truncated answer loses them and is rendered from `text`)."""
    call: ToolCall | None = None
    """A function call the assistant made (then `text` says it in words)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Turn):
            return NotImplemented
        # The key identifies a message across prompts; it is not part of what was said.
        return (
            (self.role, self.text, self.tokens, self.call)
            == (other.role, other.text, other.tokens, other.call)
        ) and self.audio is other.audio

    def __hash__(self) -> int:
        return hash((self.role, self.text))


@dataclass(frozen=True, slots=True)
class Voice:
    name: str
    language: str
    sample_rate: int


@dataclass(slots=True)
class ContextWindow:
    """Where one conversation's prompts start (the newest turns that fit its context budget).

    The conversation's owner (a realtime session) keeps it and drops it with the
    conversation; the backbone reads it and moves it forward when the conversation outgrows
    the budget, so consecutive prompts share their start (and vLLM's prefix cache)."""

    first_key: str | None = None
    """The item id of the first turn in the window, when that turn has one."""
    first: tuple[Role, str] | None = None
    """Its role and words otherwise (a turn without a key)."""

    def start_in(self, turns: Sequence[Turn]) -> int:
        """The index of the window's first turn in `turns` (0 if it is gone or unset)."""
        for i, turn in enumerate(turns):
            if self.first_key is not None and turn.key == self.first_key:
                return i
            if self.first_key is None and self.first == (turn.role, turn.text):
                return i
        return 0

    def starts_at(self, turn: Turn) -> None:
        self.first_key = turn.key
        self.first = None if turn.key is not None else (turn.role, turn.text)

    def forget(self) -> None:
        self.first_key, self.first = None, None


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    request_id: str
    """Unique per engine request; the engine aborts by this id."""
    instructions: str
    """The persona / system prompt."""
    voice: str
    audio: bool = True
    """False for text-only responses (no TTS at all)."""
    max_output_tokens: int = TEXT_ANSWER_BUDGET.default_tokens
    speed: float = 1.0
    temperature: float = 0.7
    priority: int = 0
    """vLLM priority: lower is served first. Realtime turns use 0."""
    window: ContextWindow | None = None
    """The conversation's context window (the same object for every response of one
    conversation: lets the backbone keep its prompt's start stable, so the engine's prefix
    cache is reused); None for one-off requests."""
    summary: str = ""
    """What the conversation said before its oldest turn still kept (compacted memory)."""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    """"auto" | "none" | "required" | the name of the one tool to call."""
    reasoning_tokens: int = 0
    """Think mode: at most this many tokens of reasoning before the answer (0: off)."""


@dataclass(slots=True)
class TurnTrace:
    """Monotonic timestamps of the stages of one response, filled as they happen.

    The session marks the turn's edges, the backbone marks its own stages; the first
    mark of a name wins, so stages that repeat per sentence record their first time.
    """

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if at is None else at)

    def span(self, start: str, end: str) -> float | None:
        """Seconds from `start` to `end`, or None if either is missing."""
        if start in self.marks and end in self.marks:
            return self.marks[end] - self.marks[start]
        return None


class BackboneError(Exception):
    """A backbone could not serve a request (the message is safe to show a client).

    `code` is the stable error code the server reports (REST bodies, realtime `error`
    events); `status` the HTTP status a REST request gets for it. Subclasses say what went
    wrong more precisely; the server maps every one of them in one place.
    """

    code = "backbone_error"
    status = 500


class UnknownVoiceError(BackboneError):
    code = "unknown_voice"
    status = 400

    def __init__(self, voice: str, known: list[str]) -> None:
        super().__init__(f"unknown voice {voice!r}; this server has: {', '.join(known)}")
        self.voice = voice


class ContextBudgetExceeded(BackboneError):
    """The instructions (with the answer's token budget) do not fit the model's context."""

    code = "context_length_exceeded"
    status = 400


class RequestRejected(BackboneError):
    """The engine refused a request as malformed (vLLM raised ValueError on it)."""

    code = "invalid_request"
    status = 400


class TranslationUnsupported(BackboneError):
    """The backbone cannot translate speech (an English-only ASR model, for one)."""

    code = "unsupported_feature"
    status = 400


class DescriptionUnsupported(BackboneError):
    """The backbone cannot describe audio in words (it has no audio-language model)."""

    code = "unsupported_feature"
    status = 400


class EngineUnavailable(BackboneError):
    """The engine has died; nothing more can be served by this process."""

    code = "engine_unavailable"
    status = 503
