"""What a session tells whoever keeps its answers (the server's feedback capture), and what it
tells it with.

`AnswerLog` is the boundary: the session calls it when an answer is done (`answered`, with an
`AnswerRecord`), when the client says how much of an answer's audio it played (`truncated`), and
when two candidate answers of one turn are both done (`paired`). The server implements it on
its feedback store; a session without one (capture off) keeps nothing. `SpokenAudio` collects
an answer's audio for its record, at most `AnswerLog.max_audio_s` of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from voxgate.model.types import Role
from voxgate.streaming import audio
from voxgate.streaming.audio import AudioFormat

AnswerOutcome = Literal["completed", "interrupted", "cancelled", "incomplete", "failed"]
"""What became of an answer: `response.done`'s status, with a barge-in (`interrupted`, the
person spoke over it) told apart from a client's cancel (`cancelled`)."""


@dataclass(frozen=True, slots=True)
class Said:
    """One message of the context an answer was given in."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class AnswerSound:
    """An answer's audio as it was sent: mono 16-bit PCM."""

    pcm16: bytes
    sample_rate: int


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """One finished answer, as its session knows it."""

    response_id: str
    """The id the client sees in `response.done`."""
    context: tuple[Said, ...]
    """What the backbone was given: the system prompt (instructions and the conversation's
    summary), then the turns it answered, in order."""
    text: str
    """What the answer said (its transcript, for a spoken answer)."""
    outcome: AnswerOutcome
    timings: Mapping[str, float]
    """Seconds per stage of the turn, as far as they are known when the answer is done
    (`streaming.timings.turn_timings`)."""
    voice: str | None = None
    """The voice it spoke with (None: a text answer)."""
    audio_ms: int | None = None
    """How much audio it sent (None: a text answer)."""
    audio: AnswerSound | None = None
    """Its audio, when the log keeps audio (`AnswerLog.wants_audio`)."""


class AnswerLog(Protocol):
    """Keeps a session's answers; every call returns at once (the log does its writing in the
    background, and a failure of its own never reaches the session)."""

    @property
    def wants_audio(self) -> bool:
        """Records carry the answer's audio."""
        ...

    @property
    def max_audio_s(self) -> float:
        """The most audio of one answer a record carries."""
        ...

    @property
    def candidate_priority(self) -> int:
        """The engine priority a second candidate answer runs at (batch work: after live
        turns)."""
        ...

    async def answered(self, record: AnswerRecord) -> None:
        """An answer is done; called before the client is told (`response.done`)."""
        ...

    async def truncated(self, response_id: str, heard_ms: int) -> None:
        """The client played only the first `heard_ms` of the answer's audio
        (`conversation.item.truncate`)."""
        ...

    async def paired(self, pair_id: str, first: str, second: str) -> None:
        """Two answers, both `answered`, are the candidates of one turn (by response id)."""
        ...


class SpokenAudio:
    """An answer's audio as it is sent, kept as 16-bit PCM up to a bound: what is sent after
    `max_s` is not kept."""

    def __init__(self, fmt: AudioFormat, max_s: float) -> None:
        self._format = fmt
        self._room = audio.ms_to_samples(max_s * 1000, fmt.sample_rate) * 2
        self._pcm = bytearray()

    def add(self, piece: bytes) -> None:
        """`piece`: audio sent to the client, in the response's output format."""
        if len(self._pcm) >= self._room:
            return
        if self._format is not AudioFormat.PCM:  # G.711: back to 16-bit, same rate
            piece = audio.encode(audio.decode(piece, self._format), AudioFormat.PCM)
        self._pcm += piece[: self._room - len(self._pcm)]

    def sound(self) -> AnswerSound:
        return AnswerSound(bytes(self._pcm), self._format.sample_rate)
