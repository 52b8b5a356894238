"""Fixtures shared by the unit tests: the app over a fake backbone (with its `TestClient` and a
realtime socket), and sessions driven directly with the real silero VAD.

A module scripts the backbone differently by defining its own `fake`, and builds the app with
its own settings by defining its own `app`; `client` and `ws` then use those.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from direct_session import SERVER_VAD, Events, SessionMaker
from fakes import FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import app_over
from realtime_wire import receive
from starlette.testclient import WebSocketTestSession

from voxgate.streaming.config import SessionConfig, SessionLimits, Transcription
from voxgate.streaming.events import SessionConfigured
from voxgate.streaming.session import RealtimeSession
from voxgate.streaming.vad import SileroModel, SileroVad

# --- the app over a fake backbone -------------------------------------------------------------


@pytest.fixture
def fake() -> FakeBackbone:
    return FakeBackbone()


@pytest.fixture
def app(fake: FakeBackbone) -> FastAPI:
    return app_over(fake)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def ws(client: TestClient) -> Iterator[WebSocketTestSession]:
    """A realtime connection whose `session.created` has been read."""
    with client.websocket_connect("/v1/realtime") as ws:
        assert receive(ws)["type"] == "session.created"
        yield ws


# --- sessions driven directly -----------------------------------------------------------------


@pytest.fixture(scope="module")
def silero(silero_path: Path) -> SileroModel:
    return SileroModel(silero_path)


@pytest.fixture
async def make(silero: SileroModel) -> AsyncIterator[SessionMaker]:
    """make(backbone, **config) -> a started session and its event reader; closed afterwards."""
    sessions: list[RealtimeSession] = []

    async def make(
        backbone: FakeBackbone, limits: SessionLimits | None = None, **config: Any
    ) -> tuple[RealtimeSession, Events]:
        settings = {
            "instructions": "Be brief.",
            "voice": "joe",
            "transcription": Transcription(model="fake"),
            "turn_detection": SERVER_VAD,
        } | config
        session = RealtimeSession(
            backbone,
            lambda: SileroVad(silero),
            SessionConfig(**settings),
            limits or SessionLimits(event_queue_size=4096),
        )
        sessions.append(session)
        events = Events(session)
        await session.start()
        configured = await events.next()
        assert isinstance(configured, SessionConfigured) and configured.created
        return session, events

    yield make
    for session in sessions:
        await session.close()
