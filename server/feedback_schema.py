"""The feedback database: its tables, and opening it (SQLite or PostgreSQL) with the tables made.

There are no migrations yet (no Alembic): this is the first version of the schema, so opening a
database creates whatever tables are missing (`metadata.create_all`) and records
`SCHEMA_VERSION` in `voxgate_schema_version`. A later version of the schema finds the number
there, and a database of another version is refused at opening rather than written wrongly:
that is where a migration tool comes in, once there is a second version to migrate to.

Times are stored in UTC. Audio files live outside the database (`FeedbackSettings.audio_dir`);
a row holds the file's path relative to that folder.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Engine, make_url

from voxgate.server.feedback_settings import SQLITE_FILE, FeedbackSettings

SCHEMA_VERSION = 1
"""The version of the tables below; bump it (and write a migration) when they change."""

MAX_ID_CHARS = 64
"""Longest id (of a response, session or pair) kept; ids name audio files as well."""


class UtcDateTime(sa.TypeDecorator[dt.datetime]):
    """A UTC time that comes back aware from both databases (SQLite keeps no time zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("feedback times must be aware (UTC)")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


_Json = sa.JSON().with_variant(JSONB(), "postgresql")


def _id(name: str, *constraints: Any, **kwargs: Any) -> sa.Column[str]:
    return sa.Column(name, sa.String(MAX_ID_CHARS), *constraints, **kwargs)


metadata = sa.MetaData()

schema_version = sa.Table(
    "voxgate_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

responses = sa.Table(
    "voxgate_responses",
    metadata,
    _id("id", primary_key=True),
    _id("session_id", nullable=False, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("regime", sa.String(16), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("voice", sa.String(100)),
    sa.Column("context", _Json, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("audio_path", sa.String(2 * MAX_ID_CHARS + 8)),
    sa.Column("audio_ms", sa.Integer),
    sa.Column("timings", _Json, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("heard_ms", sa.Integer),
)
"""One row per captured answer: the context the backbone saw (a list of `{role, content}`),
what it said, how it was served and what became of it (`outcome`; `heard_ms` once the client
said how much of the audio was played, `conversation.item.truncate`'s `audio_end_ms`)."""

feedback = sa.Table(
    "voxgate_feedback",
    metadata,
    _id("id", primary_key=True),
    _id("response_id", sa.ForeignKey(responses.c.id), nullable=False, unique=True),
    sa.Column("rating", sa.SmallInteger, nullable=False),
    sa.Column("scale", sa.String(8), nullable=False),
    sa.Column("tags", _Json, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
"""A person's rating of one answer (the latest replaces an earlier one)."""

pairs = sa.Table(
    "voxgate_pairs",
    metadata,
    _id("id", primary_key=True),
    _id("session_id", nullable=False, index=True),
    _id("first_response_id", sa.ForeignKey(responses.c.id), nullable=False),
    _id("second_response_id", sa.ForeignKey(responses.c.id), nullable=False),
    _id("chosen_response_id", sa.ForeignKey(responses.c.id)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("chosen_at", UtcDateTime),
)
"""Two candidate answers to one context, and the one the person preferred once they said."""


class SchemaVersionMismatch(RuntimeError):
    """The database holds another version of the schema than this voxgate writes."""


@dataclass(frozen=True)
class FeedbackDatabase:
    """An open feedback database and the folder of its audio files."""

    engine: Engine
    audio_dir: Path

    @classmethod
    def open(cls, settings: FeedbackSettings, home: Path) -> FeedbackDatabase:
        """Connect, create missing tables and check the schema version (blocking: call it in a
        thread from async code)."""
        url = database_url(settings, home)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        try:
            _create_tables(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, settings.audio_folder(home))

    def close(self) -> None:
        self.engine.dispose()


def database_url(settings: FeedbackSettings, home: Path) -> URL:
    """The database to connect to: PostgreSQL through psycopg 3 (whatever driver the URL
    names), or SQLite (a file under `home` by default)."""
    if settings.database_url is None:
        return URL.create("sqlite", database=str(home / SQLITE_FILE))
    url = make_url(settings.database_url.get_secret_value())
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


_LOCK_KEY = 0x766F78676174  # "voxgat": any constant shared by every replica


def _create_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Replicas starting together would race to create the same tables; the lock is
            # held until this transaction ends.
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
        metadata.create_all(connection)
        found = connection.execute(sa.select(schema_version.c.version)).scalars().all()
        if not found:
            connection.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        elif found != [SCHEMA_VERSION]:
            raise SchemaVersionMismatch(
                f"the feedback database has schema version {found}; this voxgate writes "
                f"version {SCHEMA_VERSION} and has no migration between them"
            )


def _sqlite_pragmas(connection: sqlite3.Connection, _record: object) -> None:
    """Foreign keys checked as in PostgreSQL; WAL so that readers (an export) do not block the
    server's writes."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()
