"""Turn-taking policy: who speaks when, as a pure state machine.

`TurnPolicy.step(event)` takes what happened (the user started, paused or finished a turn, a
transcript came in, a response began or ended) and returns what to do about it, as `Decision`
values (turn_decisions.py): answer turn X, hold response R until the user's words are known,
start on a turn early, set the VAD's silence to N ms, ... It owns what the agent owes each
committed user turn (`Reply`), the paused answer of a possible interruption and the early
(speculative) work on a turn. No asyncio, no audio, no models: the session carries the
decisions out and tells the policy what happened, so the policy is tested with synthetic
event sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from voxgate.streaming.config import TurnDetection
from voxgate.streaming.turn_decisions import (
    Adopt,
    Answer,
    AnswerEarly,
    AnswerOnRequest,
    Commit,
    Configured,
    Decision,
    DropDraft,
    DropSpeculation,
    EarlyTranscript,
    EndTurnNow,
    Hold,
    Interrupt,
    Release,
    ReleaseDraft,
    ResponseBegan,
    ResponseDone,
    ResponseEnded,
    ResponseRequested,
    SetMinSpeech,
    SetSilence,
    Speculate,
    StopHeld,
    Transcript,
    TurnInput,
    Unanswered,
    UserCleared,
    UserCommitted,
    UserFinished,
    UserPaused,
    UserResumed,
    UserStarted,
    Why,
)

SEMANTIC_EARLY_MS = 200
"""Silence after which semantic end of turn looks at the words so far."""
TRAILING_WORDS = frozenset(
    {"and", "but", "or", "so", "because", "um", "uh", "er", "like", "then", "the", "a", "to"}
)
"""A thought that ends on one of these is not finished: wait longer for the rest."""


def pause_ms(detection: TurnDetection) -> int | None:
    """Silence after which the turn detector reports a pause (None: never): speculative start
    needs it, and semantic end of turn needs the words of a pause too, so it listens early."""
    if detection.speculative_start_ms is None and detection.eagerness is not None:
        return SEMANTIC_EARLY_MS
    return detection.speculative_start_ms


class Reply(StrEnum):
    """What the agent owes a committed user turn (a turn owed nothing has no entry)."""

    WHEN_TRANSCRIBED = "when_transcribed"
    """Answered as soon as its words are known (unless it has none)."""
    DRAFTED = "drafted"
    """An answer was written early (speculative start) and waits, held, for the turn's words."""
    AFTER_CURRENT = "after_current"
    """Has words; answered once the client is told the response under way is done."""
    ON_REQUEST = "on_request"
    """Not answered by itself (no automatic answers): the client's next response.create
    answers it. Only the newest such turn is kept."""


_ALLOWED: dict[Reply | None, frozenset[Reply | None]] = {
    # None: owed nothing (not yet committed, answered, or left unanswered).
    None: frozenset({Reply.WHEN_TRANSCRIBED, Reply.DRAFTED, Reply.ON_REQUEST}),
    Reply.WHEN_TRANSCRIBED: frozenset({Reply.AFTER_CURRENT, None}),
    Reply.DRAFTED: frozenset({Reply.AFTER_CURRENT, None}),
    Reply.AFTER_CURRENT: frozenset({None}),
    Reply.ON_REQUEST: frozenset({None}),
}


# --- the machine ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Speaking:
    response: str
    audio: bool


@dataclass(frozen=True, slots=True)
class _Hold:
    response: str
    turn: str
    """The turn whose words decide whether it interrupted."""


@dataclass(slots=True)
class _Speculation:
    number: int
    turn: str
    answered: bool = False
    """An early answer was started."""


class TurnPolicy:
    """Decides turn-taking; pure, fed one event at a time (`step`).

    Decisions come in the order they are to be carried out. A change of the VAD's thresholds
    comes first, so it applies before anything that may take time.
    """

    def __init__(self) -> None:
        self._detection: TurnDetection | None = None
        self._replies: dict[str, Reply] = {}
        self._speaking: _Speaking | None = None
        """The conversation's response under way."""
        self._hold: _Hold | None = None
        self._speculation: _Speculation | None = None
        self._speculations = 0
        self._trailing = False
        """The words of the current pause trail off: wait longer for the rest."""
        self._tuned: tuple[int, int] | None = None
        """The VAD's (min_speech_ms, silence_duration_ms) as last decided."""
        self._out: list[Decision] = []

    @property
    def replies(self) -> dict[str, Reply]:
        """What the agent owes each committed turn still owed something (a copy)."""
        return dict(self._replies)

    def step(self, event: TurnInput) -> list[Decision]:
        """Take one event; return the decisions it calls for, in order."""
        self._out = []
        match event:
            case Configured(detection=detection):
                self._detection, self._tuned, self._trailing = detection, None, False
            case UserStarted(turn=turn):
                self._user_started(turn)
            case UserPaused(turn=turn):
                self._user_paused(turn)
            case UserResumed():
                self._trailing = False
                self._drop_speculation()
            case UserFinished(turn=turn):
                self._user_finished(turn)
            case UserCommitted(turn=turn):
                self._trailing = False
                self._drop_speculation()
                self._commit(turn)
            case UserCleared():
                self._trailing = False
                self._drop_speculation()
            case EarlyTranscript(speculation=number, text=text):
                self._early_transcript(number, text)
            case Transcript(turn=turn, text=text):
                self._transcript(turn, text)
            case ResponseBegan(response=response, audio=audio):
                self._speaking = _Speaking(response, audio)
            case ResponseEnded(response=response):
                if self._speaking is not None and self._speaking.response == response:
                    self._speaking = None
            case ResponseDone():
                self._answer_after_current()
            case ResponseRequested():
                if (turn := self._owed(Reply.ON_REQUEST)) is not None:
                    self._owe(turn, None)
                    self._decide(AnswerOnRequest(turn))
        decisions, self._out = self._tuning() + self._out, []
        return decisions

    # --- the user's turn -----------------------------------------------------------------

    def _user_started(self, turn: str) -> None:
        td = self._detection
        if td is None or not td.interrupt_response:
            return
        # The user goes on speaking: a turn still waiting for its answer is answered with
        # this one instead (it stays in the conversation).
        for waiting, reply in list(self._replies.items()):
            if reply is Reply.DRAFTED:
                self._decide(DropDraft(waiting))
            if reply is not Reply.ON_REQUEST:
                self._leave_unanswered(waiting, Why.USER_WENT_ON)
        if self._hold is not None:
            # Speaking again before the last interruption was judged: it was one.
            held, self._hold = self._hold, None
            self._decide(StopHeld(held.response))
        elif self._speaking is not None and td.min_interruption_words:
            self._hold = _Hold(self._speaking.response, turn)
            self._decide(Hold(self._speaking.response, turn))
        elif self._speaking is not None:
            self._decide(Interrupt(self._speaking.response))

    def _user_paused(self, turn: str) -> None:
        if self._detection is None:
            return
        self._drop_speculation()
        self._speculations += 1
        self._speculation = _Speculation(self._speculations, turn)
        self._decide(Speculate(turn, self._speculations))

    def _user_finished(self, turn: str) -> None:
        self._trailing = False
        spec, self._speculation = self._speculation, None
        if spec is not None and spec.turn == turn:
            self._settle_on_request()
            self._decide(Adopt(turn, spec.number))
            self._owe(turn, Reply.DRAFTED if spec.answered else self._first_reply())
            return
        if spec is not None:
            self._decide(DropSpeculation(spec.number))
        self._commit(turn)

    def _commit(self, turn: str) -> None:
        self._settle_on_request()
        self._decide(Commit(turn))
        self._owe(turn, self._first_reply())

    def _first_reply(self) -> Reply:
        td = self._detection
        return Reply.WHEN_TRANSCRIBED if td is not None and td.create_response else Reply.ON_REQUEST

    def _settle_on_request(self) -> None:
        """A newer turn is committed: the one waiting for response.create no longer does."""
        if (turn := self._owed(Reply.ON_REQUEST)) is not None:
            self._leave_unanswered(turn, Why.SUPERSEDED)

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._decide(DropSpeculation(self._speculation.number))
            self._speculation = None

    # --- words -------------------------------------------------------------------------

    def _early_transcript(self, number: int, text: str) -> None:
        spec, td = self._speculation, self._detection
        if spec is None or spec.number != number or td is None or not text.strip():
            return  # adopted or dropped already, or nothing to go on
        if td.eagerness is not None:
            # Semantic end of turn: end now after a complete thought; wait longer after one
            # that trails off.
            words = text.strip().lower()
            last = (words.rstrip(".,!?;:").split() or [""])[-1]
            if words.endswith((",", "...", "-")) or last in TRAILING_WORDS:
                self._trailing = True
            elif words.endswith((".", "!", "?")) and td.eagerness != "low":
                self._decide(EndTurnNow(number))
                return  # the turn ends here: it is answered the usual way
        if (
            td.speculative_start_ms is not None
            and td.create_response
            and self._speaking is None
            and self._hold is None
            and Reply.DRAFTED not in self._replies.values()
        ):
            spec.answered = True
            self._decide(AnswerEarly(number))

    def _transcript(self, turn: str, text: str) -> None:
        words = len(text.split())
        if self._hold is not None and self._hold.turn == turn:
            self._judge_interruption(turn, words)
            return
        reply = self._replies.get(turn)
        if reply not in (Reply.WHEN_TRANSCRIBED, Reply.DRAFTED):
            return
        if reply is Reply.DRAFTED:
            if words and self._speaking is None:
                self._owe(turn, None)
                self._decide(ReleaseDraft(turn))
                return
            self._decide(DropDraft(turn))
        if not words:
            self._leave_unanswered(turn, Why.NO_WORDS)
        elif self._speaking is not None:
            # The agent still talks (interrupt_response is off): answer after it.
            self._owe_after_current(turn)
        else:
            self._answer(turn)

    def _judge_interruption(self, turn: str, words: int) -> None:
        """The interrupting turn's words are known: did it really interrupt?"""
        assert self._hold is not None
        held, self._hold = self._hold, None
        td = self._detection
        answering = self._replies.get(turn) is Reply.WHEN_TRANSCRIBED  # not: on request
        if words >= (td.min_interruption_words if td is not None else 0):
            self._decide(StopHeld(held.response))
            if not answering:
                return
            if self._speaking is not None and self._speaking.response != held.response:
                self._owe_after_current(turn)
            else:
                self._answer(turn)  # once the held answer has ended
            return
        if td is not None and td.false_interruption == "resume":
            self._decide(Release(held.response))  # a backchannel: the agent goes on
        else:
            self._decide(StopHeld(held.response))  # stay silent
        if answering:
            self._leave_unanswered(turn, Why.FALSE_INTERRUPTION)

    # --- answers -----------------------------------------------------------------------

    def _answer(self, turn: str) -> None:
        self._owe(turn, None)
        self._decide(Answer(turn))

    def _owe_after_current(self, turn: str) -> None:
        if (earlier := self._owed(Reply.AFTER_CURRENT)) is not None:
            self._leave_unanswered(earlier, Why.SUPERSEDED)
        self._owe(turn, Reply.AFTER_CURRENT)

    def _answer_after_current(self) -> None:
        if self._speaking is None and (turn := self._owed(Reply.AFTER_CURRENT)) is not None:
            self._answer(turn)

    def _leave_unanswered(self, turn: str, why: Why) -> None:
        self._owe(turn, None)
        self._decide(Unanswered(turn, why))

    def _owed(self, reply: Reply) -> str | None:
        return next((turn for turn, owed in self._replies.items() if owed is reply), None)

    def _owe(self, turn: str, reply: Reply | None) -> None:
        now = self._replies.get(turn)
        if reply not in _ALLOWED[now]:
            raise RuntimeError(f"illegal reply transition for {turn}: {now} -> {reply}")
        if reply is None:
            del self._replies[turn]
        else:
            self._replies[turn] = reply

    # --- the VAD's thresholds ----------------------------------------------------------

    def _tuning(self) -> list[Decision]:
        """Threshold changes since they were last decided. While the agent speaks, speech must
        last min_interruption_ms to count as a turn; a trailing thought waits twice the
        silence."""
        td = self._detection
        if td is None:
            return []
        floor = td.vad.min_speech_ms
        talking = td.interrupt_response and self._speaking is not None and self._speaking.audio
        wanted = (
            max(floor, td.min_interruption_ms) if talking else floor,
            td.vad.silence_duration_ms * (2 if self._trailing else 1),
        )
        before, self._tuned = self._tuned, wanted
        changes: list[Decision] = []
        if before is None or wanted[0] != before[0]:
            changes.append(SetMinSpeech(wanted[0]))
        if before is None or wanted[1] != before[1]:
            changes.append(SetSilence(wanted[1]))
        return changes

    def _decide(self, decision: Decision) -> None:
        self._out.append(decision)
