"""The FastAPI app factory. The lifespan owns the backbone (and with it the vLLM engine) and the
feedback store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from voxgate.model import artifacts
from voxgate.model.artifacts import RNNOISE, SILERO_VAD
from voxgate.model.backbone import Backbone
from voxgate.model.startup import StartupStage, StartupStages
from voxgate.model.voices import VoiceBook
from voxgate.server import browsers, client_secrets, feedback_routes, metrics, rest, routes, web
from voxgate.server.client_secret_store import ClientSecretStore
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.metrics import HttpMetrics, MeteredBackbone
from voxgate.server.realtime import realtime_endpoint
from voxgate.server.services import Services
from voxgate.server.settings import Settings
from voxgate.server.startup import StartingGate, StartupTracker
from voxgate.streaming.denoise import RNNoiseLibrary
from voxgate.streaming.vad import SileroModel

log = logging.getLogger(__name__)

BackboneFactory = Callable[[Settings], AbstractAsyncContextManager[Backbone]]
"""Starts a backbone for the lifespan: how a test serves a fake (which reports no stages)."""
ReportingBackboneFactory = Callable[
    [Settings, StartupStages], AbstractAsyncContextManager[Backbone]
]
"""Starts a real backbone, which reports its stages to the server's `StartupTracker`."""


LOOP_LAG_PROBE_S = 0.1
"""How often the event-loop lag probe's timer fires (`voxgate_event_loop_lag_seconds`)."""


@asynccontextmanager
async def cascade_backbone(settings: Settings, stages: StartupStages) -> AsyncIterator[Backbone]:
    from voxgate.model.cascade import CascadeBackbone

    async with CascadeBackbone.start(
        settings.home, settings.cascade, settings.engine, settings.fetch_missing_models, stages
    ) as backbone:
        yield backbone


@asynccontextmanager
async def stepaudio2_backbone(settings: Settings, stages: StartupStages) -> AsyncIterator[Backbone]:
    from voxgate.model.stepaudio2.backbone import StepAudio2Backbone

    if settings.model is None:
        raise ValueError("the stepaudio2 backbone needs a model folder: --model DIR")
    async with StepAudio2Backbone.start(
        settings.model, settings.engine, settings.stepaudio2, stages
    ) as backbone:
        yield backbone


BACKBONES: dict[str, ReportingBackboneFactory] = {
    "cascade": cascade_backbone,
    "stepaudio2": stepaudio2_backbone,
}


def create_app(
    settings: Settings,
    backbone_factory: BackboneFactory | None = None,
    *,
    start_in_background: bool = False,
) -> FastAPI:
    """Build the app; `backbone_factory` lets tests serve a fake backbone.

    `start_in_background` (what `voxgate serve` asks for): the lifespan starts the models and
    the engine in a task and returns at once, so uvicorn listens from the first second:
    `/health` answers, `/ready` says which stage the start is in, every other route answers 503
    `server_starting` (`StartingGate`). A start that fails sets `app.state.start_failed`, and
    the server ends the process with a non-zero status (`server/draining.py`). Without it (an
    app under test) the lifespan returns once the start is over, as before."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        startup = StartupTracker()
        app.state.startup = startup
        app.state.start_failed = False
        if settings.api_key is None:
            log.warning(
                "no API key configured (VOXGATE_API_KEY): anyone who can reach %s:%d can use "
                "this server",
                settings.host,
                settings.port,
            )
        factory = backbone_factory or functools.partial(
            BACKBONES[settings.backbone], stages=startup
        )
        async with contextlib.AsyncExitStack() as running:

            async def start() -> None:
                try:
                    services = await _start_services(
                        settings, factory, app.state.client_secrets, startup, running
                    )
                except Exception:
                    startup.failed()  # says in which stage
                    app.state.start_failed = True
                    raise
                took = startup.ready()
                app.state.services = services
                for task in (
                    asyncio.create_task(services.engine_watch.watch(), name="engine-watch"),
                    asyncio.create_task(_probe_loop_lag(), name="loop-lag-probe"),
                    asyncio.create_task(_keep_retention(services.feedback), name="retention"),
                ):
                    task.add_done_callback(_log_failure)
                    running.push_async_callback(_cancelled, task)
                log.info(
                    "voxgate ready: backbone %s, started in %.1f s", services.backbone.name, took
                )

            if not start_in_background:
                await start()  # a failure propagates: uvicorn logs it and exits
                yield
                return
            starting = asyncio.create_task(start(), name="start")
            starting.add_done_callback(_log_failure)
            try:
                yield
            finally:
                # A shutdown while starting: the start stops where it is (an engine being
                # built is shut down once built, in `EngineHost.start`).
                await _cancelled(starting)

    # The schema is served by `routes.openapi` (behind the key when there is one); the docs
    # pages fetch it without credentials, so they exist only on a server without a key.
    app = FastAPI(
        title="voxgate", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None
    )
    if settings.api_key is None:
        _add_docs(app)
    app.add_middleware(HttpMetrics)
    app.add_middleware(StartingGate)
    browsers.install(app, settings)  # outermost: a foreign page's request goes no further
    app.add_api_websocket_route("/v1/realtime", realtime_endpoint)
    app.include_router(routes.router)
    app.include_router(rest.router)
    app.include_router(feedback_routes.router)
    rest.install_error_handlers(app)
    client_secrets.install(app, settings.client_secrets)
    app.include_router(web.router)
    return app


async def _start_services(
    settings: Settings,
    factory: BackboneFactory,
    client_secrets: ClientSecretStore,
    startup: StartupTracker,
    backbone_running: contextlib.AsyncExitStack,
) -> Services:
    """Open the feedback store, check and load the models, start the backbone (both kept open
    by `backbone_running`)."""
    startup.begin(StartupStage.VERIFYING_MODELS)
    # First: a feedback database that cannot be opened (a wrong URL) fails the start before
    # anything slow is loaded.
    feedback = await backbone_running.enter_async_context(
        FeedbackStore.start(settings.feedback, settings.home)
    )
    if settings.fetch_missing_models:
        await asyncio.to_thread(artifacts.fetch, SILERO_VAD, settings.home)
    vad_dir = await asyncio.to_thread(artifacts.verify, SILERO_VAD, settings.home)
    vad_model = await asyncio.to_thread(SileroModel, vad_dir / SILERO_VAD.files[0].name)
    rnnoise = await _noise_suppressor(settings)
    backbone = await backbone_running.enter_async_context(factory(settings))
    voices = VoiceBook(backbone.voices, settings.voice_aliases)  # a bad alias: no start
    return Services(
        settings, MeteredBackbone(backbone), vad_model, client_secrets, voices, feedback, rnnoise
    )


RETENTION_EVERY_S = 3600.0
"""How often a running server deletes feedback older than `VOXGATE_FEEDBACK__RETENTION_DAYS`."""


async def _keep_retention(store: FeedbackStore) -> None:
    """Delete expired feedback at start and every hour (`voxgate feedback purge` does the same
    by hand). A failed purge is logged and tried again at the next round."""
    if not store.enabled or store.settings.retention_days is None:
        return
    while True:
        try:
            deleted = await store.purge()
        except Exception:
            log.exception("the feedback retention purge failed; trying again in an hour")
        else:
            if deleted.responses:
                log.info("feedback retention: deleted %s", deleted)
        await asyncio.sleep(RETENTION_EVERY_S)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end (a failure of its own was logged when it ended,
    by `_log_failure`)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task of the lifespan ended with an error: log it when it happens."""
    if not task.cancelled() and (error := task.exception()) is not None:
        if task.get_name() == "start":
            log.error("the server could not start", exc_info=error)
        else:
            log.error("background task %s failed", task.get_name(), exc_info=error)


async def _probe_loop_lag() -> None:
    """Measure how late a periodic timer fires: whatever held the event loop meanwhile made
    every session wait as long (`voxgate_event_loop_lag_seconds`)."""
    while True:
        due = time.monotonic() + LOOP_LAG_PROBE_S
        await asyncio.sleep(LOOP_LAG_PROBE_S)
        metrics.EVENT_LOOP_LAG.observe(max(0.0, time.monotonic() - due))


def _add_docs(app: FastAPI) -> None:
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="voxgate")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="voxgate")


async def _noise_suppressor(settings: Settings) -> RNNoiseLibrary | None:
    """RNNoise, when switched on (`realtime.noise_suppressor`): its library fetched (if allowed),
    checked against its sha256 and loaded."""
    if settings.realtime.noise_suppressor != "rnnoise":
        return None
    if settings.fetch_missing_models:
        await asyncio.to_thread(artifacts.fetch, RNNOISE, settings.home)
    directory = await asyncio.to_thread(artifacts.verify, RNNOISE, settings.home)
    return await asyncio.to_thread(RNNoiseLibrary, directory / RNNOISE.files[0].name)
