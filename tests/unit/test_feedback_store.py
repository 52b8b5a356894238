"""The feedback store on SQLite and on a real PostgreSQL: every operation, every refusal, the
retention purge and the deletion of a session (rows and audio files), and nothing stored at
all while feedback is off."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest
import sqlalchemy as sa
from feedback_data import AUDIO_RATE, CONTEXT, START, Clock, captured, tone

from voxgate.model.types import Role
from voxgate.server import app
from voxgate.server.feedback_schema import (
    FeedbackDatabase,
    SchemaVersionMismatch,
    database_url,
    feedback,
    pairs,
    responses,
    schema_version,
)
from voxgate.server.feedback_settings import SQLITE_FILE, FeedbackSettings
from voxgate.server.feedback_store import FeedbackStore, bounded_context
from voxgate.server.feedback_types import (
    CommentTooLong,
    ContextMessage,
    Deleted,
    FeedbackDisabled,
    FeedbackError,
    InvalidTag,
    NotInPair,
    Outcome,
    RatingOutOfRange,
    Regime,
    Scale,
    TooManyTags,
    UnknownPair,
    UnknownResponse,
)

pytest_plugins = ["postgres", "feedback_fixtures"]


def rows(store: FeedbackStore, table: sa.Table) -> list[dict[str, object]]:
    assert store.database is not None
    with store.database.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.select(table))]


def response_row(store: FeedbackStore, response_id: str) -> dict[str, object]:
    (row,) = [row for row in rows(store, responses) if row["id"] == response_id]
    return row


def audio_files(store: FeedbackStore) -> list[str]:
    assert store.database is not None
    root = store.database.audio_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def refused(error: FeedbackError, code: str, param: str | None) -> None:
    assert (error.code, error.param) == (code, param)


# --- capture ----------------------------------------------------------------------------------


async def test_an_answer_is_kept_with_everything_captured(store: FeedbackStore) -> None:
    await store.record_response(captured("resp_1"))
    assert response_row(store, "resp_1") == {
        "id": "resp_1",
        "session_id": "sess_a",
        "created_at": START,
        "regime": "realtime",
        "model": "voxgate-cascade",
        "voice": "joe",
        "context": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "text": "Paris (resp_1).",
        "audio_path": "sess_a/resp_1.wav",
        "audio_ms": 200,
        "timings": {"asr": 0.12, "turn_latency": 0.61},
        "outcome": "completed",
        "heard_ms": None,
    }
    assert store.database is not None
    with wave.open(str(store.database.audio_dir / "sess_a" / "resp_1.wav")) as kept:
        assert (kept.getnchannels(), kept.getsampwidth(), kept.getframerate()) == (1, 2, AUDIO_RATE)
        assert kept.readframes(kept.getnframes()) == tone(200).pcm16


async def test_a_text_answer_keeps_no_audio(store: FeedbackStore) -> None:
    await store.record_response(
        captured("resp_1", regime=Regime.SPEECH, voice=None, audio_ms=None, audio=None)
    )
    row = response_row(store, "resp_1")
    assert (row["regime"], row["voice"], row["audio_path"], row["audio_ms"]) == (
        "speech",
        None,
        None,
        None,
    )
    assert audio_files(store) == []


async def test_audio_is_kept_only_when_asked_for(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> None:
    settings = feedback_settings.model_copy(update={"audio": False})
    async with FeedbackStore.start(settings, tmp_path, clock) as store:
        await store.record_response(captured("resp_1"))
        assert response_row(store, "resp_1")["audio_path"] is None
        assert audio_files(store) == []


async def test_long_audio_keeps_its_first_max_audio_seconds(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> None:
    settings = feedback_settings.model_copy(update={"max_audio_seconds": 0.05})
    async with FeedbackStore.start(settings, tmp_path, clock) as store:
        await store.record_response(captured("resp_1"))
        assert store.database is not None
        with wave.open(str(store.database.audio_dir / "sess_a" / "resp_1.wav")) as kept:
            assert kept.readframes(kept.getnframes()) == tone(50).pcm16


def test_the_context_keeps_the_persona_and_the_newest_messages() -> None:
    system, old, mid, new = (
        ContextMessage(Role.SYSTEM, "abc"),
        ContextMessage(Role.USER, "0123456789"),
        ContextMessage(Role.ASSISTANT, "01234"),
        ContextMessage(Role.USER, "xyz"),
    )
    assert bounded_context([system, old, mid, new], 100) == [
        {"role": "system", "content": "abc"},
        {"role": "user", "content": "0123456789"},
        {"role": "assistant", "content": "01234"},
        {"role": "user", "content": "xyz"},
    ]
    # 3 (persona) + 3 (newest) + 5 (next) = 11: the oldest goes, the one before it is cut.
    assert bounded_context([system, old, mid, new], 11) == [
        {"role": "system", "content": "abc"},
        {"role": "assistant", "content": "01234"},
        {"role": "user", "content": "xyz"},
    ]
    assert bounded_context([system, old, mid, new], 9) == [
        {"role": "system", "content": "abc"},
        {"role": "assistant", "content": "234"},
        {"role": "user", "content": "xyz"},
    ]
    assert bounded_context([old, new], 5) == [
        {"role": "user", "content": "89"},
        {"role": "user", "content": "xyz"},
    ]


async def test_the_stored_context_is_bounded(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> None:
    settings = feedback_settings.model_copy(update={"max_context_chars": 20})
    async with FeedbackStore.start(settings, tmp_path, clock) as store:
        await store.record_response(captured("resp_1"))
        assert response_row(store, "resp_1")["context"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": " of France?"},
        ]
    assert sum(len(m.content) for m in CONTEXT) > 20


async def test_outcome_and_truncation_are_recorded_later(store: FeedbackStore) -> None:
    await store.record_response(captured("resp_1", outcome=Outcome.IN_PROGRESS))
    await store.record_outcome("resp_1", Outcome.INTERRUPTED)
    await store.record_truncation("resp_1", 80)
    row = response_row(store, "resp_1")
    assert (row["outcome"], row["heard_ms"], row["audio_ms"]) == ("interrupted", 80, 200)
    with pytest.raises(UnknownResponse) as e:
        await store.record_outcome("resp_nope", Outcome.CANCELLED)
    refused(e.value, "response_not_found", "response_id")
    with pytest.raises(UnknownResponse):
        await store.record_truncation("resp_nope", 10)


async def test_ids_that_could_leave_the_audio_folder_are_refused(store: FeedbackStore) -> None:
    for bad in (
        captured("../resp_1"),
        captured("resp_1", session_id="sess/a"),
        captured("r" * 65),
    ):
        with pytest.raises(ValueError, match="must be 1 to 64"):
            await store.record_response(bad)
    assert rows(store, responses) == []


# --- feedback ---------------------------------------------------------------------------------


async def test_a_rating_is_stored_and_a_later_one_replaces_it(store: FeedbackStore) -> None:
    await store.record_response(captured("resp_1"))
    first = await store.add_feedback("resp_1", -1, tags=["slow"], comment="too long")
    assert first.model_dump() == {
        "object": "feedback",
        "id": first.id,
        "response_id": "resp_1",
        "rating": -1,
        "scale": Scale.THUMBS,
        "tags": ["slow"],
        "comment": "too long",
        "created_at": int(START.timestamp()),
    }
    second = await store.add_feedback("resp_1", 5, Scale.STARS)
    assert second.id != first.id
    assert rows(store, feedback) == [
        {
            "id": second.id,
            "response_id": "resp_1",
            "rating": 5,
            "scale": "stars",
            "tags": [],
            "comment": None,
            "created_at": START,
        }
    ]


async def test_a_rating_of_an_unknown_answer_is_refused(store: FeedbackStore) -> None:
    with pytest.raises(UnknownResponse) as e:
        await store.add_feedback("resp_nope", 1)
    refused(e.value, "response_not_found", "response_id")
    assert rows(store, feedback) == []


@pytest.mark.parametrize(
    ("scale", "good", "bad"),
    [(Scale.THUMBS, (-1, 1), (0, 2, -2, 5)), (Scale.STARS, (1, 2, 3, 4, 5), (0, 6, -1))],
)
async def test_a_rating_must_be_on_its_scale(
    store: FeedbackStore, scale: Scale, good: tuple[int, ...], bad: tuple[int, ...]
) -> None:
    await store.record_response(captured("resp_1"))
    for rating in bad:
        with pytest.raises(RatingOutOfRange) as e:
            await store.add_feedback("resp_1", rating, scale)
        refused(e.value, "rating_out_of_range", "rating")
    for rating in good:
        assert (await store.add_feedback("resp_1", rating, scale)).rating == rating


async def test_comments_and_tags_are_bounded(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> None:
    limits = {"max_comment_chars": 10, "max_tags": 2, "max_tag_chars": 5}
    settings = feedback_settings.model_copy(update=limits)
    async with FeedbackStore.start(settings, tmp_path, clock) as store:
        await store.record_response(captured("resp_1"))
        with pytest.raises(CommentTooLong) as e:
            await store.add_feedback("resp_1", 1, comment="x" * 11)
        refused(e.value, "string_above_max_length", "comment")
        with pytest.raises(TooManyTags) as e:
            await store.add_feedback("resp_1", 1, tags=["a", "b", "c"])
        refused(e.value, "array_above_max_length", "tags")
        for tags in (["ok", "toolong"], ["ok", ""]):
            with pytest.raises(InvalidTag) as e:
                await store.add_feedback("resp_1", 1, tags=tags)
            refused(e.value, "invalid_value", "tags[1]")
        assert rows(store, feedback) == []
        kept = await store.add_feedback("resp_1", 1, tags=["a", "bcdef"], comment="x" * 10)
        assert (kept.tags, kept.comment) == (["a", "bcdef"], "x" * 10)


# --- pairs ------------------------------------------------------------------------------------


async def test_the_preferred_candidate_of_a_pair(store: FeedbackStore, clock: Clock) -> None:
    for response_id in ("resp_1", "resp_2"):
        await store.record_response(captured(response_id))
    await store.record_pair("pair_1", "sess_a", "resp_1", "resp_2")
    clock.advance(seconds=30)
    chosen = await store.choose("pair_1", "resp_2")
    assert chosen.model_dump() == {
        "object": "feedback.pair",
        "id": "pair_1",
        "session_id": "sess_a",
        "response_ids": ("resp_1", "resp_2"),
        "chosen_response_id": "resp_2",
        "created_at": int(START.timestamp()),
        "chosen_at": int(START.timestamp()) + 30,
    }
    assert (await store.choose("pair_1", "resp_1")).chosen_response_id == "resp_1"
    (row,) = rows(store, pairs)
    assert (row["chosen_response_id"], row["chosen_at"]) == ("resp_1", clock.now)


async def test_pair_refusals(store: FeedbackStore) -> None:
    for response_id in ("resp_1", "resp_2", "resp_3"):
        await store.record_response(captured(response_id))
    with pytest.raises(UnknownResponse) as e:
        await store.record_pair("pair_1", "sess_a", "resp_1", "resp_nope")
    refused(e.value, "response_not_found", "response_id")
    with pytest.raises(ValueError, match="two different answers"):
        await store.record_pair("pair_1", "sess_a", "resp_1", "resp_1")
    await store.record_pair("pair_1", "sess_a", "resp_1", "resp_2")
    with pytest.raises(UnknownPair) as e:
        await store.choose("pair_nope", "resp_1")
    refused(e.value, "pair_not_found", "pair_id")
    with pytest.raises(NotInPair) as e:
        await store.choose("pair_1", "resp_3")
    refused(e.value, "response_not_in_pair", "chosen_response_id")
    (row,) = rows(store, pairs)
    assert row["chosen_response_id"] is None


# --- deletion ---------------------------------------------------------------------------------


async def fill(store: FeedbackStore) -> None:
    """Session a: two answers (rated, in a pair); session b: one rated answer."""
    for response_id in ("resp_1", "resp_2"):
        await store.record_response(captured(response_id, "sess_a"))
    await store.record_pair("pair_1", "sess_a", "resp_1", "resp_2")
    await store.choose("pair_1", "resp_1")
    await store.add_feedback("resp_1", 1)
    await store.record_response(captured("resp_3", "sess_b"))
    await store.add_feedback("resp_3", -1)


async def test_deleting_a_session_removes_its_rows_and_audio(store: FeedbackStore) -> None:
    await fill(store)
    assert audio_files(store) == ["sess_a/resp_1.wav", "sess_a/resp_2.wav", "sess_b/resp_3.wav"]
    assert await store.delete_session("sess_a") == Deleted(
        responses=2, feedback=1, pairs=1, audio_files=2
    )
    assert [row["id"] for row in rows(store, responses)] == ["resp_3"]
    assert [row["response_id"] for row in rows(store, feedback)] == ["resp_3"]
    assert rows(store, pairs) == []
    assert audio_files(store) == ["sess_b/resp_3.wav"]
    assert store.database is not None
    assert not (store.database.audio_dir / "sess_a").exists()
    assert await store.delete_session("sess_a") == Deleted()


async def test_purge_deletes_what_is_older_than_the_retention(
    store: FeedbackStore, clock: Clock
) -> None:
    await fill(store)
    clock.advance(days=store.settings.retention_days or 0, seconds=-1)
    await store.record_response(captured("resp_4", "sess_c"))
    assert await store.purge() == Deleted()  # nothing is older than the retention yet
    clock.advance(seconds=2)
    assert await store.purge() == Deleted(responses=3, feedback=2, pairs=1, audio_files=3)
    assert [row["id"] for row in rows(store, responses)] == ["resp_4"]
    assert rows(store, feedback) == rows(store, pairs) == []
    assert audio_files(store) == ["sess_c/resp_4.wav"]


async def test_without_a_retention_purge_keeps_everything(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> None:
    settings = feedback_settings.model_copy(update={"retention_days": None})
    async with FeedbackStore.start(settings, tmp_path, clock) as store:
        await store.record_response(captured("resp_1"))
        clock.advance(days=10_000)
        assert await store.purge() == Deleted()
        assert len(rows(store, responses)) == 1


async def test_a_running_server_purges_at_start_and_every_round(
    store: FeedbackStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's retention task: it purges at once, then once a round (an hour)."""
    await fill(store)
    clock.advance(days=(store.settings.retention_days or 0) + 1)
    rounds: list[Deleted] = []
    purge = store.purge

    async def counted() -> Deleted:
        rounds.append(await purge())
        if len(rounds) == 2:
            raise asyncio.CancelledError  # two rounds seen: end the task
        return rounds[-1]

    monkeypatch.setattr(store, "purge", counted)
    monkeypatch.setattr(app, "RETENTION_EVERY_S", 0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(app._keep_retention(store), timeout=10)
    assert rounds == [Deleted(responses=3, feedback=2, pairs=1, audio_files=3), Deleted()]
    assert rows(store, responses) == []


# --- off, and the schema ----------------------------------------------------------------------


async def test_nothing_is_stored_while_feedback_is_off(
    feedback_settings: FeedbackSettings, tmp_path: Path
) -> None:
    off = feedback_settings.model_copy(update={"enabled": False})
    async with FeedbackStore.start(off, tmp_path) as store:
        assert not store.enabled
        await store.record_response(captured("resp_1"))
        await store.record_outcome("resp_1", Outcome.COMPLETED)
        await store.record_truncation("resp_1", 10)
        await store.record_pair("pair_1", "sess_a", "resp_1", "resp_2")
        with pytest.raises(FeedbackDisabled) as e:
            await store.add_feedback("resp_1", 1)
        refused(e.value, "feedback_disabled", None)
        with pytest.raises(FeedbackDisabled):
            await store.choose("pair_1", "resp_1")
        assert await store.purge() == await store.delete_session("sess_a") == Deleted()
    assert list(tmp_path.iterdir()) == []  # no SQLite file, no audio folder
    if off.database_url is not None:  # not even a table
        engine = sa.create_engine(database_url(off, tmp_path))
        try:
            assert sa.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()


async def test_opening_again_keeps_the_rows(
    feedback_settings: FeedbackSettings, tmp_path: Path
) -> None:
    async with FeedbackStore.start(feedback_settings, tmp_path) as store:
        await store.record_response(captured("resp_1"))
    async with FeedbackStore.start(feedback_settings, tmp_path) as store:
        assert [row["id"] for row in rows(store, responses)] == ["resp_1"]
    if feedback_settings.database_url is None:
        assert (tmp_path / SQLITE_FILE).is_file()


async def test_a_database_of_another_schema_version_is_refused(
    feedback_settings: FeedbackSettings, tmp_path: Path
) -> None:
    database = FeedbackDatabase.open(feedback_settings, tmp_path)
    with database.engine.begin() as connection:
        connection.execute(schema_version.update().values(version=99))
    database.close()
    with pytest.raises(SchemaVersionMismatch, match="schema version \\[99\\]"):
        FeedbackDatabase.open(feedback_settings, tmp_path)
