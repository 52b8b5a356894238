"""The responder's side of the answer log: what it notes of each response while it runs, and
the record the log is given when the response is done (`streaming/answer_log.py`).

A response is noted when it starts, its context when the backbone is asked, its audio as it is
sent (when the log keeps audio); the notes go when the response is logged, or dropped unheard.
So they are bounded by the responses a session has under way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from voxgate.model.memory import with_summary
from voxgate.model.types import ResponseOptions, Role, Turn
from voxgate.streaming.answer_log import (
    AnswerLog,
    AnswerOutcome,
    AnswerRecord,
    AnswerSound,
    Said,
    SpokenAudio,
)
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.candidates import Candidate
from voxgate.streaming.events import Response, ResponseStatus
from voxgate.streaming.timings import turn_timings


@dataclass(slots=True)
class _Notes:
    candidate: Candidate | None
    context: tuple[Said, ...] | None = None
    """What the backbone was given (None until it is asked: then there is nothing to log)."""
    spoken: SpokenAudio | None = field(default=None, repr=False)


class AnswerNotes:
    """Notes on one session's responses for its answer log (None: nothing is noted)."""

    def __init__(self, log: AnswerLog | None) -> None:
        self.log = log
        self._notes: dict[str, _Notes] = {}

    def started(self, response: Response, candidate: Candidate | None) -> None:
        if self.log is not None:
            self._notes[response.id] = _Notes(candidate)

    def candidate(self, response: Response) -> Candidate | None:
        notes = self._notes.get(response.id)
        return notes.candidate if notes is not None else None

    def asked(
        self, response: Response, options: ResponseOptions, turns: Sequence[Turn]
    ) -> SpokenAudio | None:
        """The backbone is given `turns`: note them; the collector of the answer's audio when
        the log keeps audio."""
        notes = self._notes.get(response.id)
        if notes is None or self.log is None:
            return None
        system = with_summary(options.instructions, options.summary)
        notes.context = (Said(Role.SYSTEM, system), *(Said(t.role, t.text) for t in turns))
        if response.audio and self.log.wants_audio:
            notes.spoken = SpokenAudio(AudioFormat(response.audio_format), self.log.max_audio_s)
        return notes.spoken

    def forget(self, response: Response) -> None:
        """`response` is dropped without a word to the client: nothing of it is logged."""
        self._notes.pop(response.id, None)

    async def done(self, response: Response) -> None:
        """Log `response`, which the client is about to be told is done; and its pair, once
        both candidates are logged."""
        notes = self._notes.pop(response.id, None)
        if notes is None or notes.context is None or self.log is None:
            return
        sound = notes.spoken.sound() if notes.spoken is not None else None
        await self.log.answered(answer_record(response, notes.context, sound))
        candidate = notes.candidate
        if candidate is not None and (both := candidate.pair.log(candidate.index, response.id)):
            await self.log.paired(candidate.pair.id, *both)


def outcome(response: Response) -> AnswerOutcome:
    """How a response ended, a barge-in (`turn_detected`) told apart from a cancel."""
    if response.status is ResponseStatus.CANCELLED:
        return "interrupted" if response.reason == "turn_detected" else "cancelled"
    return cast(AnswerOutcome, response.status.value)


def answer_record(
    response: Response, context: tuple[Said, ...], sound: AnswerSound | None
) -> AnswerRecord:
    """`response` as the log keeps it, now that it is done."""
    return AnswerRecord(
        response_id=response.id,
        context=context,
        text="\n".join(text for item in response.items if (text := item.content_text)),
        outcome=outcome(response),
        timings=turn_timings(response.trace),
        voice=response.voice if response.audio else None,
        audio_ms=sum(item.audio_ms for item in response.items) if response.audio else None,
        audio=sound,
    )
