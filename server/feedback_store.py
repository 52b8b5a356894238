"""The feedback store: captured answers, people's ratings of them and their preferred candidate
of a pair, kept in the feedback database (`server/feedback_schema.py`) with answer audio as
files beside it.

Every method is async and runs its database work in a thread, so the event loop never waits on
a disk or a database server. Off (`FeedbackSettings.enabled` false), the store opens no
database: capturing stores nothing, and feedback is refused with `FeedbackDisabled`.
What a client may send is bounded by the settings and refused with a typed `FeedbackError`
(`server/feedback_types.py`). Each rating and preference stored is counted
(`voxgate_feedback_total`, `voxgate_feedback_preferences_total`), whichever way it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import sqlalchemy as sa

from voxgate.model.types import Role
from voxgate.server import metrics
from voxgate.server.feedback_schema import (
    MAX_ID_CHARS,
    FeedbackDatabase,
    feedback,
    pairs,
    responses,
)
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.feedback_types import (
    RATINGS,
    AnswerAudio,
    CapturedResponse,
    CommentTooLong,
    ContextMessage,
    Deleted,
    FeedbackDisabled,
    FeedbackError,
    FeedbackRecord,
    InvalidTag,
    NotInPair,
    Outcome,
    PairRecord,
    RatingOutOfRange,
    Scale,
    TooManyTags,
    UnknownPair,
    UnknownResponse,
)

_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}}")
"""Ids the store keeps; they name audio files, so nothing that could leave the folder."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_ids(**ids: str) -> None:
    for name, value in ids.items():
        if not _ID.fullmatch(value):
            raise ValueError(f"{name} must be 1 to {MAX_ID_CHARS} of [A-Za-z0-9_-]")


class FeedbackStore:
    """Captures answers and takes feedback on them (see the module docstring)."""

    def __init__(
        self,
        settings: FeedbackSettings,
        database: FeedbackDatabase | None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.database = database
        """None while the store is off."""
        self._clock = clock

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        settings: FeedbackSettings,
        home: Path,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> AsyncIterator[FeedbackStore]:
        """The store for a server's lifespan: its database opened (tables created) when on,
        closed at the end."""
        if not settings.enabled:
            yield cls(settings, None, clock)
            return
        database = await asyncio.to_thread(FeedbackDatabase.open, settings, home)
        try:
            yield cls(settings, database, clock)
        finally:
            await asyncio.to_thread(database.close)

    @property
    def enabled(self) -> bool:
        return self.database is not None

    # --- capture (stores nothing while off) ---

    async def record_response(self, captured: CapturedResponse) -> None:
        """Keep an answer: its context (the newest `max_context_chars` of it), text, how it
        was served, and its audio when `audio` is on (the first `max_audio_seconds`)."""
        if self.database is None:
            return
        _check_ids(response_id=captured.response_id, session_id=captured.session_id)
        await asyncio.to_thread(self._insert_response, self.database, captured)

    async def record_outcome(self, response_id: str, outcome: Outcome) -> None:
        """What became of an answer recorded earlier."""
        await self._update_response(response_id, outcome=outcome)

    async def record_truncation(self, response_id: str, heard_ms: int) -> None:
        """The client played only the first `heard_ms` of the answer's audio
        (`conversation.item.truncate`'s `audio_end_ms`)."""
        if heard_ms < 0:
            raise ValueError("heard_ms must not be negative")
        await self._update_response(response_id, heard_ms=heard_ms)

    async def record_pair(
        self, pair_id: str, session_id: str, first_response_id: str, second_response_id: str
    ) -> None:
        """Two recorded answers are candidates for the same turn; the client will say which
        one it prefers (`choose`)."""
        if self.database is None:
            return
        _check_ids(pair_id=pair_id, session_id=session_id)
        if first_response_id == second_response_id:
            raise ValueError("a pair is two different answers")
        await asyncio.to_thread(
            self._insert_pair,
            self.database,
            pair_id,
            session_id,
            (first_response_id, second_response_id),
        )

    # --- feedback (refused while off) ---

    async def add_feedback(
        self,
        response_id: str,
        rating: int,
        scale: Scale = Scale.THUMBS,
        tags: Sequence[str] = (),
        comment: str | None = None,
    ) -> FeedbackRecord:
        """Rate an answer; a later rating of the same answer replaces this one."""
        database = self._enabled()
        if rating not in RATINGS[scale]:
            allowed = ", ".join(map(str, RATINGS[scale]))
            raise RatingOutOfRange(f"a {scale} rating is one of {allowed}, not {rating}", "rating")
        limits = self.settings
        if comment is not None and len(comment) > limits.max_comment_chars:
            raise CommentTooLong(
                f"comment has {len(comment)} characters; this server takes at most "
                f"{limits.max_comment_chars}",
                "comment",
            )
        if comment is not None and "\0" in comment:
            raise FeedbackError("a comment holds no NUL character", "comment")
        if len(tags) > limits.max_tags:
            raise TooManyTags(
                f"{len(tags)} tags; this server takes at most {limits.max_tags}", "tags"
            )
        for i, tag in enumerate(tags):
            if not 0 < len(tag) <= limits.max_tag_chars or "\0" in tag:
                raise InvalidTag(
                    f"a tag has 1 to {limits.max_tag_chars} characters, none of them NUL",
                    f"tags[{i}]",
                )
        if not _ID.fullmatch(response_id):
            raise UnknownResponse(response_id)  # an id it could never have kept
        return await asyncio.to_thread(
            self._insert_feedback, database, response_id, rating, scale, list(tags), comment
        )

    async def choose(self, pair_id: str, chosen_response_id: str) -> PairRecord:
        """The client prefers `chosen_response_id` of the pair (a later choice replaces it)."""
        database = self._enabled()
        if not _ID.fullmatch(pair_id):
            raise UnknownPair(pair_id)  # an id it could never have kept
        return await asyncio.to_thread(self._choose, database, pair_id, chosen_response_id)

    # --- deletion ---

    async def purge(self) -> Deleted:
        """Delete answers older than `retention_days`, with their feedback, pairs and audio."""
        if self.database is None or self.settings.retention_days is None:
            return Deleted()
        cutoff = self._clock() - dt.timedelta(days=self.settings.retention_days)
        return await asyncio.to_thread(self._delete, self.database, responses.c.created_at < cutoff)

    async def delete_session(self, session_id: str) -> Deleted:
        """Delete everything kept of one session: answers, feedback, pairs and audio files."""
        if self.database is None:
            return Deleted()
        return await asyncio.to_thread(
            self._delete, self.database, responses.c.session_id == session_id
        )

    # --- the work, in a thread ---

    def _enabled(self) -> FeedbackDatabase:
        if self.database is None:
            raise FeedbackDisabled()
        return self.database

    def _insert_response(self, database: FeedbackDatabase, captured: CapturedResponse) -> None:
        audio = captured.audio if self.settings.audio else None
        audio_path = f"{captured.session_id}/{captured.response_id}.wav" if audio else None
        with database.engine.begin() as connection:
            connection.execute(
                responses.insert().values(
                    id=captured.response_id,
                    session_id=captured.session_id,
                    created_at=self._clock(),
                    regime=captured.regime,
                    model=captured.model,
                    voice=captured.voice,
                    context=bounded_context(captured.context, self.settings.max_context_chars),
                    text=captured.text,
                    audio_path=audio_path,
                    audio_ms=captured.audio_ms,
                    timings=dict(captured.timings),
                    outcome=captured.outcome,
                )
            )
            # Written before the row commits: a file that cannot be written takes its row
            # with it, and a row is never committed without its file.
            if audio is not None and audio_path is not None:
                _write_wav(database.audio_dir / audio_path, audio, self.settings.max_audio_seconds)

    async def _update_response(self, response_id: str, **values: object) -> None:
        if self.database is None:
            return
        await asyncio.to_thread(self._update, self.database, response_id, values)

    @staticmethod
    def _update(database: FeedbackDatabase, response_id: str, values: dict[str, object]) -> None:
        with database.engine.begin() as connection:
            changed = connection.execute(
                responses.update().where(responses.c.id == response_id).values(**values)
            ).rowcount
        if not changed:
            raise UnknownResponse(response_id)

    def _insert_pair(
        self,
        database: FeedbackDatabase,
        pair_id: str,
        session_id: str,
        response_ids: tuple[str, str],
    ) -> None:
        with database.engine.begin() as connection:
            _require_responses(connection, response_ids)
            connection.execute(
                pairs.insert().values(
                    id=pair_id,
                    session_id=session_id,
                    first_response_id=response_ids[0],
                    second_response_id=response_ids[1],
                    created_at=self._clock(),
                )
            )

    def _insert_feedback(
        self,
        database: FeedbackDatabase,
        response_id: str,
        rating: int,
        scale: Scale,
        tags: list[str],
        comment: str | None,
    ) -> FeedbackRecord:
        now = self._clock()
        feedback_id = f"fb_{uuid.uuid4().hex}"
        with database.engine.begin() as connection:
            # The answer's row is locked (PostgreSQL) so that two ratings of one answer at once
            # replace each other instead of one failing on the unique response_id.
            regime = connection.execute(
                sa.select(responses.c.regime).where(responses.c.id == response_id).with_for_update()
            ).scalar_one_or_none()
            if regime is None:
                raise UnknownResponse(response_id)
            connection.execute(feedback.delete().where(feedback.c.response_id == response_id))
            connection.execute(
                feedback.insert().values(
                    id=feedback_id,
                    response_id=response_id,
                    rating=rating,
                    scale=scale,
                    tags=tags,
                    comment=comment,
                    created_at=now,
                )
            )
        metrics.feedback_stored(regime, scale, rating)
        return FeedbackRecord(
            id=feedback_id,
            response_id=response_id,
            rating=rating,
            scale=scale,
            tags=tags,
            comment=comment,
            created_at=int(now.timestamp()),
        )

    def _choose(self, database: FeedbackDatabase, pair_id: str, chosen: str) -> PairRecord:
        now = self._clock()
        with database.engine.begin() as connection:
            pair = connection.execute(
                sa.select(pairs).where(pairs.c.id == pair_id).with_for_update()
            ).one_or_none()
            if pair is None:
                raise UnknownPair(pair_id)
            candidates = (pair.first_response_id, pair.second_response_id)
            if chosen not in candidates:
                raise NotInPair(
                    f"{chosen!r} is not one of the pair's answers ({', '.join(candidates)})",
                    "chosen_response_id",
                )
            connection.execute(
                pairs.update()
                .where(pairs.c.id == pair_id)
                .values(chosen_response_id=chosen, chosen_at=now)
            )
            regime = connection.execute(
                sa.select(responses.c.regime).where(responses.c.id == chosen)
            ).scalar_one()
        metrics.preference_stored(regime)
        return PairRecord(
            id=pair.id,
            session_id=pair.session_id,
            response_ids=candidates,
            chosen_response_id=chosen,
            created_at=int(pair.created_at.timestamp()),
            chosen_at=int(now.timestamp()),
        )

    @staticmethod
    def _delete(database: FeedbackDatabase, which: sa.ColumnElement[bool]) -> Deleted:
        ids = sa.select(responses.c.id).where(which)
        with database.engine.begin() as connection:
            audio_paths = (
                connection.execute(
                    sa.select(responses.c.audio_path).where(
                        which, responses.c.audio_path.is_not(None)
                    )
                )
                .scalars()
                .all()
            )
            pairs_deleted = connection.execute(
                pairs.delete().where(
                    sa.or_(pairs.c.first_response_id.in_(ids), pairs.c.second_response_id.in_(ids))
                )
            ).rowcount
            feedback_deleted = connection.execute(
                feedback.delete().where(feedback.c.response_id.in_(ids))
            ).rowcount
            responses_deleted = connection.execute(responses.delete().where(which)).rowcount
        # Files go once the rows are gone: a crash in between leaves a stray file, never a row
        # that points at nothing.
        files_deleted = sum(_remove_audio(database.audio_dir / path) for path in audio_paths)
        return Deleted(responses_deleted, feedback_deleted, pairs_deleted, files_deleted)


def bounded_context(messages: Sequence[ContextMessage], max_chars: int) -> list[dict[str, str]]:
    """`messages` as JSON, at most `max_chars` of content: a leading system message, then the
    newest messages that fit; the oldest one kept is cut to what is left (its end kept)."""
    head = 1 if messages and messages[0].role is Role.SYSTEM else 0
    kept: list[dict[str, str]] = []
    budget = max_chars
    for message in [*messages[:head], *reversed(messages[head:])]:
        if budget <= 0:
            break
        content = message.content[-budget:] if len(message.content) > budget else message.content
        kept.append({"role": str(message.role), "content": content})
        budget -= len(content)
    return kept[:head] + kept[head:][::-1]


def _require_responses(connection: sa.Connection, response_ids: Sequence[str]) -> None:
    query = sa.select(responses.c.id).where(responses.c.id.in_(response_ids))
    found = set(connection.execute(query).scalars())
    for response_id in response_ids:
        if response_id not in found:
            raise UnknownResponse(response_id)


def _write_wav(path: Path, audio: AnswerAudio, max_seconds: float) -> None:
    kept_bytes = int(max_seconds * audio.sample_rate) * 2
    pcm = audio.pcm16[: min(kept_bytes, len(audio.pcm16) // 2 * 2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(pcm)


def _remove_audio(path: Path) -> bool:
    """Remove an answer's file, and its session's folder once empty."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        path.parent.rmdir()
    return True
