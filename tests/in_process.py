"""Helpers for tests that run the app in this process: the app over a fake backbone (feedback
capture off, or on with its database in a test's folder), a real uvicorn server on a free port,
and microphone audio in the wire's default format."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fakes import FakeBackbone, backbone_factory
from fastapi import FastAPI
from starlette.testclient import WebSocketTestSession

from voxgate.model.artifacts import default_home
from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.server.app import create_app
from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.settings import Settings
from voxgate.streaming import audio
from voxgate.streaming.audio import AudioFormat, StreamResampler


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[int]:
    """Run `app` with uvicorn on a free port of 127.0.0.1; yield the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on")
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])  # returns once the app's lifespan has started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[sock])
        sock.close()


def pcm(samples: np.ndarray) -> bytes:
    """16 kHz float32 -> 24 kHz pcm16, the default input format."""
    resampler = StreamResampler(INPUT_SAMPLE_RATE, 24_000)
    return audio.encode(
        np.concatenate([resampler.process(samples), resampler.flush()]), AudioFormat.PCM
    )


def send_audio(ws: WebSocketTestSession, data: bytes) -> None:
    """Send pcm16 as 40 ms `input_audio_buffer.append` events."""
    for piece in audio.iter_slices(data, AudioFormat.PCM, 40):
        ws.send_json(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
        )


TEST_HOSTS = ["testserver", "localhost", "127.0.0.1"]
"""`allowed_hosts` for apps driven by Starlette's TestClient (it sends `Host: testserver`) and
by real clients on loopback."""
TEST_KEY = "test-key-0123456789"
"""An API key long enough for the server to accept (at least 16 characters)."""


def app_over(fake: FakeBackbone, **settings: Any) -> FastAPI:
    """The real app over `fake`: models where the tests find them, never fetched, no API key
    (whatever $VOXGATE_API_KEY says), the hosts test clients use; `settings` override these."""
    defaults = {
        "home": default_home(),
        "fetch_missing_models": False,
        "allowed_hosts": TEST_HOSTS,
        "api_key": None,
    }
    return create_app(Settings(**(defaults | settings)), backbone_factory=backbone_factory(fake))


def feedback_on(folder: Path, **changes: Any) -> FeedbackSettings:
    """Feedback capture on, its SQLite database and audio in `folder` (never in the models'
    home, which `app_over` serves from); `changes` override any setting."""
    fields = {
        "enabled": True,
        "database_url": f"sqlite:///{folder / 'feedback.sqlite3'}",
        "audio_dir": folder / "audio",
    }
    return FeedbackSettings(**(fields | changes))
