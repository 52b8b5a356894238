"""The FastAPI app factory. The lifespan owns the backbone (and with it the vLLM engine)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from voxgate.model import artifacts
from voxgate.model.artifacts import SILERO_VAD
from voxgate.model.backbone import Backbone
from voxgate.server import client_secrets, rest, routes, web
from voxgate.server.draining import Drain
from voxgate.server.metrics import HttpMetrics, MeteredBackbone
from voxgate.server.realtime import realtime_endpoint
from voxgate.server.settings import Settings
from voxgate.streaming.config import SessionConfig, Transcription
from voxgate.streaming.vad import SileroModel, SileroVad

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 128
"""Spoken answers should be short; a session can ask for more (up to the server's cap)."""

BackboneFactory = Callable[[Settings], AbstractAsyncContextManager[Backbone]]


class SessionSlots:
    """Counts live realtime sessions against `max_sessions` (and REST requests against
    `rest.max_concurrent_requests`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()
        self._empty = asyncio.Event()
        self._empty.set()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            self._empty.clear()
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            if self.active == 0:
                self._empty.set()

    async def wait_empty(self) -> None:
        """Return once nothing holds a slot (at once if nothing does)."""
        await self._empty.wait()


@dataclass
class Services:
    """What the routes need, built once by the lifespan and kept in `app.state.services`."""

    settings: Settings
    backbone: Backbone
    vad_model: SileroModel
    sessions: SessionSlots
    rest_requests: SessionSlots = field(init=False)
    """REST requests being served (a streamed answer counts until its last byte)."""
    drain: Drain = field(init=False)
    """Graceful shutdown: whether the server still takes new work (`server/draining.py`)."""

    def __post_init__(self) -> None:
        self.rest_requests = SessionSlots(self.settings.rest.max_concurrent_requests)
        self.drain = Drain(self.settings.drain_deadline_s, self.sessions, self.rest_requests)

    @property
    def model_name(self) -> str:
        return f"voxgate-{self.backbone.name}"

    def new_vad(self) -> SileroVad:
        return SileroVad(self.vad_model)

    def default_session_config(self) -> SessionConfig:
        return SessionConfig(
            instructions=self.settings.realtime.instructions,
            voice=self.backbone.voices[0].name,
            # The transcript is computed anyway (the cascade's LM reads it): send it by default.
            transcription=Transcription(model=self.model_name),
            max_output_tokens=min(
                DEFAULT_MAX_OUTPUT_TOKENS, self.settings.realtime.session.max_output_tokens
            ),
        )


@asynccontextmanager
async def cascade_backbone(settings: Settings) -> AsyncIterator[Backbone]:
    from voxgate.model.cascade import CascadeBackbone

    async with CascadeBackbone.start(
        settings.home, settings.cascade, settings.engine, settings.fetch_missing_models
    ) as backbone:
        yield backbone


@asynccontextmanager
async def stepaudio2_backbone(settings: Settings) -> AsyncIterator[Backbone]:
    from voxgate.model.stepaudio2.backbone import StepAudio2Backbone

    if settings.model is None:
        raise ValueError("the stepaudio2 backbone needs a model folder: --model DIR")
    async with StepAudio2Backbone.start(
        settings.model, settings.engine, settings.stepaudio2
    ) as backbone:
        yield backbone


BACKBONES: dict[str, BackboneFactory] = {
    "cascade": cascade_backbone,
    "stepaudio2": stepaudio2_backbone,
}


def create_app(settings: Settings, backbone_factory: BackboneFactory | None = None) -> FastAPI:
    """Build the app; `backbone_factory` lets tests serve a fake backbone."""
    factory = backbone_factory or BACKBONES[settings.backbone]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.api_key is None:
            log.warning(
                "no API key configured (VOXGATE_API_KEY): anyone who can reach %s:%d can use "
                "this server",
                settings.host,
                settings.port,
            )
        if settings.fetch_missing_models:
            await asyncio.to_thread(artifacts.fetch, SILERO_VAD, settings.home)
        vad_dir = await asyncio.to_thread(artifacts.verify, SILERO_VAD, settings.home)
        vad_model = await asyncio.to_thread(SileroModel, vad_dir / SILERO_VAD.files[0].name)
        async with factory(settings) as backbone:
            app.state.services = Services(
                settings,
                MeteredBackbone(backbone),
                vad_model,
                SessionSlots(settings.realtime.max_sessions),
            )
            log.info("voxgate ready: backbone %s", backbone.name)
            yield

    app = FastAPI(title="voxgate", version="0.1.0", lifespan=lifespan)
    app.add_middleware(HttpMetrics)
    app.add_api_websocket_route("/v1/realtime", realtime_endpoint)
    app.include_router(routes.router)
    app.include_router(rest.router)
    rest.install_error_handlers(app)
    client_secrets.install(app, settings.client_secrets)
    app.include_router(web.router)
    return app
