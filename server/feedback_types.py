"""The feedback store's values and refusals: what is captured of an answer, what a client sends
and gets back, and the typed errors whose `code` and `param` the client is told."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxgate.model.types import Role
from voxgate.server.feedback_schema import MAX_ID_CHARS

# --- what is captured -----------------------------------------------------------------------


class Regime(StrEnum):
    """Which regime of the backbone gave the answer."""

    REALTIME = "realtime"
    SPEECH = "speech"


class Outcome(StrEnum):
    """What became of an answer (the realtime `response.done` status, with a barge-in told
    apart from a client's cancel)."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    """Cancelled because the person started speaking (barge-in, `turn_detected`)."""
    CANCELLED = "cancelled"
    """Cancelled by the client (`response.cancel`)."""
    INCOMPLETE = "incomplete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ContextMessage:
    """One message of the conversation as the backbone saw it (the persona as `system`)."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class AnswerAudio:
    """An answer's audio as it was sent: mono 16-bit PCM."""

    pcm16: bytes
    sample_rate: int


@dataclass(frozen=True, slots=True)
class CapturedResponse:
    """One answer, captured when it is recorded."""

    response_id: str
    session_id: str
    regime: Regime
    model: str
    """The backbone (model id) that answered."""
    context: Sequence[ContextMessage]
    text: str
    """What the answer said (its transcript, for a spoken answer)."""
    voice: str | None = None
    audio_ms: int | None = None
    """How much audio the answer had, in ms (None: a text answer)."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per stage of the turn (`streaming.timings.turn_timings`)."""
    outcome: Outcome = Outcome.IN_PROGRESS
    audio: AnswerAudio | None = None
    """Kept only with `FeedbackSettings.audio` on."""


# --- what a client sends, and what it gets back ---------------------------------------------


class Scale(StrEnum):
    THUMBS = "thumbs"
    """-1 (thumbs down) or +1 (thumbs up)."""
    STARS = "stars"
    """1 to 5."""


RATINGS: dict[Scale, tuple[int, ...]] = {Scale.THUMBS: (-1, 1), Scale.STARS: (1, 2, 3, 4, 5)}
"""The ratings each scale takes."""


class FeedbackRequest(BaseModel):
    """A rating of an answer: the body of `POST /v1/feedback`, and of the realtime client
    event `voxgate.feedback.create`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    response_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """The rated answer (its realtime response id)."""
    rating: int = Field(strict=True)
    """-1 or 1 on the `thumbs` scale, 1 to 5 on the `stars` scale."""
    scale: Scale = Scale.THUMBS
    tags: list[str] = []
    """Short labels (at most `VOXGATE_FEEDBACK__MAX_TAGS`, each at most `MAX_TAG_CHARS`)."""
    comment: str | None = None
    """Free text (at most `VOXGATE_FEEDBACK__MAX_COMMENT_CHARS`)."""


class PreferenceRequest(BaseModel):
    """The candidate of a pair preferred: the body of `POST /v1/feedback/preferences`, and of
    the realtime client event `voxgate.preference.create`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    pair_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """The pair of candidate answers."""
    chosen_response_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    """The one preferred, one of the pair's two."""


class FeedbackRecord(BaseModel):
    """A stored rating, as `POST /v1/feedback` answers it."""

    object: Literal["feedback"] = "feedback"
    id: str
    response_id: str
    rating: int
    scale: Scale
    tags: list[str]
    comment: str | None
    created_at: int
    """Unix seconds."""


class PairRecord(BaseModel):
    """A pair of candidate answers and the one preferred, as `POST /v1/feedback/preferences`
    answers it."""

    object: Literal["feedback.pair"] = "feedback.pair"
    id: str
    session_id: str
    response_ids: tuple[str, str]
    chosen_response_id: str | None
    created_at: int
    chosen_at: int | None


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a purge or a deletion removed."""

    responses: int = 0
    feedback: int = 0
    pairs: int = 0
    audio_files: int = 0


# --- errors -----------------------------------------------------------------------------------


class FeedbackError(Exception):
    """A feedback request refused: `code` and `param` are what the client is told."""

    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FeedbackDisabled(FeedbackError):
    code = "feedback_disabled"

    def __init__(self) -> None:
        super().__init__("feedback is not enabled on this server")


class UnknownResponse(FeedbackError):
    code = "response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"no response {response_id!r} is kept here", "response_id")


class UnknownPair(FeedbackError):
    code = "pair_not_found"

    def __init__(self, pair_id: str) -> None:
        super().__init__(f"no pair {pair_id!r} is kept here", "pair_id")


class NotInPair(FeedbackError):
    code = "response_not_in_pair"


class RatingOutOfRange(FeedbackError):
    code = "rating_out_of_range"


class CommentTooLong(FeedbackError):
    code = "string_above_max_length"


class TooManyTags(FeedbackError):
    code = "array_above_max_length"


class InvalidTag(FeedbackError):
    """A tag that is empty or longer than `max_tag_chars`."""
