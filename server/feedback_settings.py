"""The feedback store's settings (nested under `VOXGATE_FEEDBACK__*`): whether it is on, where
it keeps its rows and audio, and every bound on what a client may send it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

SQLITE_FILE = Path("feedback", "feedback.sqlite3")
"""The embedded database, under `$VOXGATE_HOME`, when no `database_url` is set."""
AUDIO_FOLDER = Path("feedback", "audio")
"""Kept answer audio, under `$VOXGATE_HOME`, when no `audio_dir` is set."""
DATABASES = ("postgresql", "sqlite")
"""The databases the store is tested on (`tests/unit/test_feedback_store.py`)."""


class FeedbackSettings(BaseModel):
    """Human feedback on answers, kept as preference data (nested under `VOXGATE_FEEDBACK__*`).

    Off by default: nothing is captured or stored, and feedback requests are refused with
    `feedback_disabled`. `voxgate feedback export|delete|purge` work on what was stored either way.
    """

    enabled: bool = False
    """Capture answers and take feedback on them."""
    database_url: SecretStr | None = None
    """Where rows go: a SQLAlchemy URL, `postgresql://user:password@host/db` (several replicas
    share one; the psycopg 3 driver is used) or `sqlite:////path/file.sqlite3`. None: a SQLite
    file under `$VOXGATE_HOME/feedback/` (one replica). A secret: it may hold a password."""
    audio: bool = False
    """Keep each answer's audio too (a WAV file per answer, referenced by path), not only its
    text."""
    audio_dir: Path | None = None
    """Where answer audio goes. None: `$VOXGATE_HOME/feedback/audio/` (replicas that share a
    PostgreSQL database should share this folder too, or exports miss the others' audio)."""
    max_audio_seconds: float = Field(120.0, gt=0)
    """Longest answer audio kept; a longer answer keeps its first `max_audio_seconds`."""
    retention_days: int | None = Field(90, ge=1)
    """Answers (with their feedback, pairs and audio) older than this are deleted by
    `voxgate feedback purge`. None: kept until deleted."""
    max_comment_chars: int = Field(2000, ge=0)
    """Longest comment of one feedback; longer gets `string_above_max_length`."""
    max_tags: int = Field(8, ge=0)
    """Most tags of one feedback; more gets `array_above_max_length`."""
    max_tag_chars: int = Field(40, ge=1)
    """Longest tag; longer (or an empty tag) gets `invalid_value`."""
    max_context_chars: int = Field(64_000, ge=1)
    """Most characters of conversation kept with an answer: the oldest messages (after a
    leading system message) are left out until the rest fits."""
    max_body_bytes: int = Field(64 << 10, ge=1024)
    """Largest `POST /v1/feedback*` body; larger gets 413 `request_too_large`."""

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            scheme, separator, _ = url.get_secret_value().partition("://")
            if not separator or scheme.partition("+")[0] not in DATABASES:
                raise ValueError("a feedback database URL starts postgresql:// or sqlite://")
        return url

    def audio_folder(self, home: Path) -> Path:
        return self.audio_dir if self.audio_dir is not None else home / AUDIO_FOLDER
