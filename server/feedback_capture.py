"""Feedback in a realtime session: its answers captured into the feedback store (the server's
`AnswerLog`, `streaming/answer_log.py`), and the client's ratings of them.

The session hands over each answer as it is done, the heard point of a truncated one, and the
pairs of candidates; `SessionCapture` writes them in that order, one at a time, from a task of
its own, so the session never waits on the database. What it cannot keep is left out, never
in the session's way:
- at most `MAX_PENDING_WRITES` wait to be written; when that many wait (the database is slow or
  down), a new answer is not captured: logged, and counted in
  `voxgate_feedback_captures_dropped_total{reason="queue_full"}`;
- a write the store refuses or fails is logged with its exception and counted
  (`reason="store_error"`);
- writes still waiting `CLOSE_TIMEOUT_S` after the session ended are given up
  (`reason="session_closed"`).

An answer's row is written once the client has been sent its `response.done` (the connection's
writer says so with `sent`): its timings are then whole, with the first audio's send time the
writer marks. A rating waits until what the session captured before it is written
(`settled`): the answer it rates may be on its way to the store.

The client events `voxgate.feedback.create` and `voxgate.preference.create` are answered by
`rate` and `prefer`: the store's refusals become `SessionRejected` (an `error` event with the
store's code and param), a server with capture off refuses them with `feedback_disabled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from voxgate.server import metrics
from voxgate.server import server_events as wire
from voxgate.server.extension_events import FeedbackCreatedEvent, PreferenceCreatedEvent
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.feedback_types import (
    AnswerAudio,
    CapturedResponse,
    ContextMessage,
    FeedbackError,
    Outcome,
    Regime,
)
from voxgate.server.protocol import FeedbackCreate, PreferenceCreate
from voxgate.streaming.answer_log import AnswerRecord
from voxgate.streaming.events import ResponseFinished
from voxgate.streaming.requests import SessionRejected
from voxgate.streaming.timings import turn_timings

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 32
"""Writes one session may have waiting; an answer beyond them is not captured."""
CLOSE_TIMEOUT_S = 10.0
"""How long a closed session's waiting writes may still take."""


@dataclass(slots=True)
class _Answer:
    record: AnswerRecord
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the client was sent the answer's `response.done` (or never will be)."""
    timings: Mapping[str, float] | None = None
    """The answer's timings as of that send."""


@dataclass(frozen=True, slots=True)
class _Truncation:
    response_id: str
    heard_ms: int


@dataclass(frozen=True, slots=True)
class _Pair:
    pair_id: str
    first: str
    second: str


_Write = _Answer | _Truncation | _Pair


def _what(write: _Write) -> str:
    """A write in a log line (an answer's record holds its audio: never logged whole)."""
    match write:
        case _Answer(record=record):
            return f"answer {record.response_id}"
        case _Truncation(response_id=response_id):
            return f"the truncation of {response_id}"
        case _Pair(pair_id=pair_id):
            return f"pair {pair_id}"


class SessionCapture:
    """Writes one session's answers to the store (see the module docstring), until `close()`;
    an `AnswerLog`."""

    def __init__(
        self, store: FeedbackStore, session_id: str, model: str, candidate_priority: int
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._model = model
        self._candidate_priority = candidate_priority
        self._writes: asyncio.Queue[_Write] = asyncio.Queue(MAX_PENDING_WRITES)
        self._unsent: dict[str, _Answer] = {}
        """Answers whose `response.done` the writer has not sent yet, by response id."""
        self._queued = 0
        self._written = 0
        """Writes taken so far, and those done (or given up) of them, in order."""
        self._progress = asyncio.Condition()
        self._writer = asyncio.create_task(self._write_all(), name=f"capture-{session_id}")

    # --- the AnswerLog ------------------------------------------------------------------

    @property
    def wants_audio(self) -> bool:
        return self._store.settings.audio

    @property
    def max_audio_s(self) -> float:
        return self._store.settings.max_audio_seconds

    @property
    def candidate_priority(self) -> int:
        return self._candidate_priority

    async def answered(self, record: AnswerRecord) -> None:
        answer = _Answer(record)
        if self._queue(answer):
            self._unsent[record.response_id] = answer

    async def truncated(self, response_id: str, heard_ms: int) -> None:
        self._queue(_Truncation(response_id, heard_ms))

    async def paired(self, pair_id: str, first: str, second: str) -> None:
        self._queue(_Pair(pair_id, first, second))

    # --- from the connection -------------------------------------------------------------

    def sent(self, event: ResponseFinished) -> None:
        """The writer is done with a `response.done` (sent, or the client is gone): the
        answer's row may be written, with its timings as they are now."""
        answer = self._unsent.pop(event.response.id, None)
        if answer is not None:
            answer.timings = turn_timings(event.response.trace)
            answer.sent.set()

    async def settled(self) -> None:
        """Wait until every write taken so far is done (or given up)."""
        queued = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= queued)

    # --- writing ------------------------------------------------------------------------

    def _queue(self, write: _Write) -> bool:
        try:
            self._writes.put_nowait(write)
        except asyncio.QueueFull:
            log.warning(
                "feedback capture of session %s: %d writes wait already; %s is not captured",
                self._session_id,
                MAX_PENDING_WRITES,
                _what(write),
            )
            metrics.CAPTURES_DROPPED.labels(reason="queue_full").inc()
            return False
        self._queued += 1
        return True

    async def _write_all(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                await self._write(write)
            except FeedbackError as e:  # refused: what it is about is not kept
                log.warning(
                    "feedback capture of session %s: %s not kept: %s",
                    self._session_id,
                    _what(write),
                    e,
                )
            except Exception:
                log.exception(
                    "feedback capture of session %s: the store failed to keep %s",
                    self._session_id,
                    _what(write),
                )
                metrics.CAPTURES_DROPPED.labels(reason="store_error").inc()
            finally:
                self._writes.task_done()
                await self._done(1)

    async def _write(self, write: _Write) -> None:
        match write:
            case _Answer(record=record):
                await write.sent.wait()
                await self._store.record_response(self._captured(record, write.timings))
            case _Truncation(response_id=response_id, heard_ms=heard_ms):
                await self._store.record_truncation(response_id, heard_ms)
            case _Pair(pair_id=pair_id, first=first, second=second):
                await self._store.record_pair(pair_id, self._session_id, first, second)

    async def _done(self, writes: int) -> None:
        async with self._progress:
            self._written += writes
            self._progress.notify_all()

    def _captured(
        self, record: AnswerRecord, timings: Mapping[str, float] | None
    ) -> CapturedResponse:
        sound = record.audio
        return CapturedResponse(
            response_id=record.response_id,
            session_id=self._session_id,
            regime=Regime.REALTIME,
            model=self._model,
            context=[ContextMessage(said.role, said.content) for said in record.context],
            text=record.text,
            voice=record.voice,
            audio_ms=record.audio_ms,
            timings=dict(record.timings if timings is None else timings),
            outcome=Outcome(record.outcome),
            audio=AnswerAudio(sound.pcm16, sound.sample_rate) if sound is not None else None,
        )

    async def close(self) -> None:
        """The session is over: write what waits (answers whose `response.done` was never
        sent keep the timings they had), for at most `CLOSE_TIMEOUT_S`."""
        for answer in self._unsent.values():
            answer.sent.set()
        self._unsent.clear()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writes.join()
        except TimeoutError:
            left = self._writes.qsize() + 1  # and the one being written
            log.warning(
                "feedback capture of session %s: %d writes given up %.0f s after it closed",
                self._session_id,
                left,
                CLOSE_TIMEOUT_S,
            )
            metrics.CAPTURES_DROPPED.labels(reason="session_closed").inc(left)
        finally:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            await self._done(self._queued - self._written)  # nobody waits for the rest


# --- the client's feedback ------------------------------------------------------------------


def capture_object(store: FeedbackStore) -> wire.FeedbackCaptureObject | None:
    """What `session.x_voxgate.feedback` says (None: capture is off)."""
    if not store.enabled:
        return None
    return wire.FeedbackCaptureObject(audio=store.settings.audio)


async def rate(
    store: FeedbackStore, capture: SessionCapture | None, event: FeedbackCreate
) -> FeedbackCreatedEvent:
    """`voxgate.feedback.create`: the rating stored, once the answer is (it may be on its
    way to the store)."""
    if capture is not None:
        await capture.settled()
    try:
        record = await store.add_feedback(
            event.response_id, event.rating, event.scale, event.tags, event.comment
        )
    except FeedbackError as e:
        raise SessionRejected(e.code, str(e), e.param) from e
    return FeedbackCreatedEvent(feedback=record)


async def prefer(
    store: FeedbackStore, capture: SessionCapture | None, event: PreferenceCreate
) -> PreferenceCreatedEvent:
    """`voxgate.preference.create`: the preferred candidate stored, once the pair is."""
    if capture is not None:
        await capture.settled()
    try:
        pair = await store.choose(event.pair_id, event.chosen_response_id)
    except FeedbackError as e:
        raise SessionRejected(e.code, str(e), e.param) from e
    return PreferenceCreatedEvent(pair=pair)
