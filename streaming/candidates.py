"""Candidate answers: one turn answered twice, so that a person can say which answer is better.

`response.create` with `x_voxgate.candidates: 2` asks for them (only where answers are
captured: an `AnswerLog` keeps both). Candidate 0 is the turn's answer like any other: in the
conversation (unless the request says otherwise), spoken, streamed. Candidate 1 answers the
same context, the conversation as it was when the pair was asked for (`Pair.items`), out of
band: never in the conversation, at batch priority, and started only once candidate 0 is over,
so that it never competes with the live answer. Each one's `response.done` says which pair and
candidate it is (`CandidateFinished`); the log hears of the pair once both are logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxgate.streaming.conversation import Conversation
from voxgate.streaming.events import (
    Item,
    Response,
    ResponseFinished,
    SessionEvent,
    remade_end,
)
from voxgate.streaming.requests import new_id

CANDIDATES = 2
"""Candidates of a pair."""


@dataclass(slots=True)
class Pair:
    """Two candidate answers to one turn."""

    id: str
    items: list[Item]
    """The context both answer: the conversation (or the request's input) when asked for."""
    summary: str
    """The conversation's summary then."""
    logged: list[str | None] = field(default_factory=lambda: [None] * CANDIDATES)
    """The response id of each candidate once it is logged."""

    @classmethod
    def asked(cls, conversation: Conversation, given: list[Item] | None) -> Pair:
        """A new pair, answering `given` (a request's own input), else the conversation as it
        is now."""
        if given is not None:
            return cls(new_id("pair"), list(given), "")
        return cls(new_id("pair"), list(conversation.items), conversation.summary)

    def log(self, candidate: int, response_id: str) -> tuple[str, str] | None:
        """Candidate `candidate` is logged; both ids once both are."""
        self.logged[candidate] = response_id
        first, second = self.logged
        return (first, second) if first is not None and second is not None else None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A response's place in a pair."""

    pair: Pair
    index: int
    """0: the turn's answer; 1: the second answer, out of band."""


@dataclass(frozen=True, slots=True)
class CandidateFinished(ResponseFinished):
    """`response.done` of a candidate answer: it also says which pair, and which candidate."""

    pair_id: str
    candidate: int


def finished(response: Response, candidate: Candidate | None) -> ResponseFinished:
    """The end of `response`, as a candidate's when it is one."""
    if candidate is None:
        return ResponseFinished(response)
    return CandidateFinished(response, candidate.pair.id, candidate.index)


def remade(event: SessionEvent, response: Response) -> SessionEvent:
    """`remade_end`, keeping a candidate's place in its pair."""
    if isinstance(event, CandidateFinished):
        return CandidateFinished(response, event.pair_id, event.candidate)
    return remade_end(event, response)
