"""What the turn-taking policy is told and what it decides: its inputs and decisions.

Plain frozen values, so a sequence of them can be written down in a test. Turns and responses
are named by id: a turn by its user item's id, a response by its id. `TurnPolicy`
(turn_policy.py) maps inputs to decisions; the session's `TurnTaker` carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from voxgate.streaming.config import TurnDetection


class Why(StrEnum):
    """Why a turn goes unanswered (it stays in the conversation, as context of later answers)."""

    NO_WORDS = "no_words"
    """Its transcript is empty, or it could not be transcribed."""
    FALSE_INTERRUPTION = "false_interruption"
    """It interrupted the agent with too few words: a backchannel, not a turn."""
    USER_WENT_ON = "user_went_on"
    """The user spoke again before it was answered: the next turn is answered instead."""
    SUPERSEDED = "superseded"
    """A newer turn took its place (one turn waits after the current answer, one on request)."""


# --- what happened (inputs) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configured:
    """Turn detection was set (None: off); the VAD starts from its own thresholds."""

    detection: TurnDetection | None


@dataclass(frozen=True, slots=True)
class UserStarted:
    """The VAD heard the user start `turn`."""

    turn: str


@dataclass(frozen=True, slots=True)
class UserPaused:
    """The user paused long enough that `turn` probably ends here (not yet certain)."""

    turn: str


@dataclass(frozen=True, slots=True)
class UserResumed:
    """Speech came back after a pause: the turn goes on."""


@dataclass(frozen=True, slots=True)
class UserFinished:
    """The VAD (or semantic end of turn) ended `turn`."""

    turn: str


@dataclass(frozen=True, slots=True)
class UserCommitted:
    """The client committed the input buffer as `turn`."""

    turn: str


@dataclass(frozen=True, slots=True)
class UserCleared:
    """The client cleared the input buffer: a turn under way went with it."""


@dataclass(frozen=True, slots=True)
class EarlyTranscript:
    """The words of a pause (speculation `speculation`), before the turn surely ended."""

    speculation: int
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """The words of committed `turn` ("" when it could not be transcribed)."""

    turn: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseBegan:
    """Response `response` runs as the conversation's answer (`audio`: it speaks)."""

    response: str
    audio: bool


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    """The conversation's response `response` stopped (finished or cancelled): it says no
    more, though its end may not have reached the client yet."""

    response: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The client was told that response `response` is done (any response)."""

    response: str


@dataclass(frozen=True, slots=True)
class ResponseRequested:
    """The client asked for a response (response.create)."""


TurnInput = (
    Configured
    | UserStarted
    | UserPaused
    | UserResumed
    | UserFinished
    | UserCommitted
    | UserCleared
    | EarlyTranscript
    | Transcript
    | ResponseBegan
    | ResponseEnded
    | ResponseDone
    | ResponseRequested
)


# --- what to do (decisions) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetMinSpeech:
    """Speech must last `ms` before the VAD starts a turn."""

    ms: int


@dataclass(frozen=True, slots=True)
class SetSilence:
    """Silence of `ms` ends a turn."""

    ms: int


@dataclass(frozen=True, slots=True)
class Speculate:
    """Transcribe `turn` so far, in case it ends at this pause (speculation `speculation`)."""

    turn: str
    speculation: int


@dataclass(frozen=True, slots=True)
class EndTurnNow:
    """The words of the pause make a complete thought: end the turn now (if the user is still
    in the pause of speculation `speculation`)."""

    speculation: int


@dataclass(frozen=True, slots=True)
class AnswerEarly:
    """Start answering the words of the pause; the answer says nothing until released."""

    speculation: int


@dataclass(frozen=True, slots=True)
class DropSpeculation:
    """Stop the early work of speculation `speculation` (its answer goes unsaid)."""

    speculation: int


@dataclass(frozen=True, slots=True)
class Adopt:
    """`turn` ended where it paused: commit it with the words of speculation `speculation`
    (and its early answer, if any, as the turn's draft)."""

    turn: str
    speculation: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit `turn`'s audio and transcribe it."""

    turn: str


@dataclass(frozen=True, slots=True)
class ReleaseDraft:
    """`turn`'s early answer is its answer: it runs on, and what it said goes out."""

    turn: str


@dataclass(frozen=True, slots=True)
class DropDraft:
    """`turn`'s early answer will not be used: stop it (it goes unsaid)."""

    turn: str


@dataclass(frozen=True, slots=True)
class Answer:
    """Start the conversation's response to `turn`."""

    turn: str


@dataclass(frozen=True, slots=True)
class AnswerOnRequest:
    """The response the client asked for answers `turn` (it is timed on that turn)."""

    turn: str


@dataclass(frozen=True, slots=True)
class Unanswered:
    """The agent will not answer `turn` by itself."""

    turn: str
    why: Why


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The user barged in: stop `response` now."""

    response: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The user may be interrupting: pause `response`'s output until `turn`'s words are
    known."""

    response: str
    turn: str


@dataclass(frozen=True, slots=True)
class StopHeld:
    """The held `response` was interrupted after all: stop it; what it said, without its
    audio, goes out, ending as cancelled."""

    response: str


@dataclass(frozen=True, slots=True)
class Release:
    """The held `response` was not interrupted: it goes on where it paused."""

    response: str


Decision = (
    SetMinSpeech
    | SetSilence
    | Speculate
    | EndTurnNow
    | AnswerEarly
    | DropSpeculation
    | Adopt
    | Commit
    | ReleaseDraft
    | DropDraft
    | Answer
    | AnswerOnRequest
    | Unanswered
    | Interrupt
    | Hold
    | StopHeld
    | Release
)
