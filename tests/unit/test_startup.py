"""The server's start, stage by stage: the tracker's durations and log lines, and `/ready` while
the backbone is still starting (driven through the app's own lifespan, held on an Event)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fake_server
import httpx
import pytest
import websockets
import websockets.sync.client
from fakes import FakeBackbone
from fastapi import FastAPI
from in_process import TEST_HOSTS

from voxgate.model.artifacts import default_home
from voxgate.model.startup import StartupStage
from voxgate.server.app import BackboneFactory, create_app
from voxgate.server.draining import EXIT_START_FAILED
from voxgate.server.settings import Settings
from voxgate.server.startup import StartupState, StartupTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_finished_stage_is_logged_with_its_duration(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    startup = StartupTracker(clock)
    caplog.set_level(logging.INFO, logger="voxgate.server.startup")
    startup.begin(StartupStage.VERIFYING_MODELS)
    clock.now += 0.4
    startup.begin(StartupStage.STARTING_ENGINE)
    clock.now += 38.2
    startup.begin(StartupStage.WARMING_UP)
    clock.now += 3.0
    assert startup.ready() == pytest.approx(41.6)
    assert caplog.messages == [
        "models verified in 0.4 s",
        "engine ready in 38.2 s",
        "warm-up done in 3.0 s",
    ]
    done = startup.snapshot()
    assert (done.state, done.stage) == (StartupState.READY, None)
    assert list(done.stages_done) == [
        StartupStage.VERIFYING_MODELS,
        StartupStage.STARTING_ENGINE,
        StartupStage.WARMING_UP,
    ]


def test_a_stage_begun_again_adds_its_time_and_the_current_one_counts_from_its_start() -> None:
    clock = Clock()
    startup = StartupTracker(clock)
    startup.begin(StartupStage.VERIFYING_MODELS)
    clock.now += 1.0
    startup.begin(StartupStage.VERIFYING_MODELS)  # the stage under way: nothing changes
    clock.now += 1.0
    startup.begin(StartupStage.LOADING_MODELS)
    clock.now += 0.5
    startup.begin(StartupStage.VERIFYING_MODELS)
    clock.now += 0.25
    now = startup.snapshot()
    assert (now.stage, now.stage_elapsed_s) == (StartupStage.VERIFYING_MODELS, 0.25)
    assert dict(now.stages_done) == {
        StartupStage.VERIFYING_MODELS: 2.0,
        StartupStage.LOADING_MODELS: 0.5,
    }


def test_a_failed_start_names_its_stage_and_moves_no_further(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    startup = StartupTracker(clock)
    startup.begin(StartupStage.STARTING_ENGINE)
    clock.now += 12.3
    startup.failed()
    assert caplog.messages == [
        "startup failed during starting_engine, 12.3 s after the start began"
    ]
    failed = startup.snapshot()
    assert (failed.state, failed.stage) == (StartupState.FAILED, StartupStage.STARTING_ENGINE)
    with pytest.raises(RuntimeError, match="it is failed"):
        startup.begin(StartupStage.WARMING_UP)
    with pytest.raises(RuntimeError, match="it is failed"):
        startup.ready()


# --- /ready while the app's lifespan is starting ---------------------------------------------


def app_over_factory(factory: BackboneFactory) -> FastAPI:
    settings = Settings(
        home=default_home(), fetch_missing_models=False, allowed_hosts=TEST_HOSTS, api_key=None
    )
    return create_app(settings, backbone_factory=factory)


async def run_lifespan(app: FastAPI, started: asyncio.Event, stop: asyncio.Event) -> None:
    """The app's lifespan, as uvicorn runs it: `started` once it has started, then until `stop`."""
    async with app.router.lifespan_context(app):
        started.set()
        await stop.wait()


async def test_ready_says_which_stage_the_start_is_in() -> None:
    in_engine_start, engine_up = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def slow_engine(settings: Settings) -> AsyncIterator[FakeBackbone]:
        app.state.startup.begin(StartupStage.STARTING_ENGINE)  # as the real backbones do
        in_engine_start.set()
        await engine_up.wait()
        yield FakeBackbone()

    app = app_over_factory(slow_engine)
    started, stop = asyncio.Event(), asyncio.Event()
    transport = httpx.ASGITransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
        asyncio.TaskGroup() as tasks,
    ):
        tasks.create_task(run_lifespan(app, started, stop))
        await in_engine_start.wait()

        starting = await http.get("/ready")
        body = starting.json()
        assert starting.status_code == 503
        assert (body["status"], body["stage"]) == ("starting", "starting_engine")
        assert list(body["stages_done"]) == ["verifying_models"]
        assert body["stage_elapsed_s"] >= 0
        assert (await http.get("/health")).json() == {"status": "ok"}  # alive while it starts

        engine_up.set()
        await started.wait()
        ready = await http.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "backbone": "fake", "realtime_sessions": 0}
        stop.set()


async def test_a_start_that_fails_logs_its_stage_and_is_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @asynccontextmanager
    async def broken_engine(settings: Settings) -> AsyncIterator[FakeBackbone]:
        app.state.startup.begin(StartupStage.STARTING_ENGINE)
        raise RuntimeError("no memory for the KV cache")
        yield FakeBackbone()  # pragma: no cover - never reached

    app = app_over_factory(broken_engine)
    with pytest.raises(RuntimeError, match="KV cache"):
        await run_lifespan(app, asyncio.Event(), asyncio.Event())
    assert any(m.startswith("startup failed during starting_engine") for m in caplog.messages)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        unready = await http.get("/ready")
    assert (unready.status_code, unready.json()) == (503, {"status": "unavailable"})


# --- a real server process: it listens while it starts ----------------------------------------


def test_a_real_server_answers_while_it_starts(tmp_path: Path) -> None:
    """`voxgate serve` listens from the first second: the probes answer, /ready names the
    stage, every other route (REST and the WebSocket handshake) is 503 `server_starting` with
    Retry-After; once the start is over the same server serves."""
    gate = tmp_path / "engine-start"
    os.mkfifo(gate)
    with fake_server.launch(tmp_path, {"FAKE_START_GATE": str(gate)}, until="listening") as srv:
        ready = httpx.get(f"{srv.base_url}/ready", timeout=10)
        assert ready.status_code == 503
        assert (ready.json()["status"], ready.json()["stage"]) == ("starting", "starting_engine")
        assert httpx.get(f"{srv.base_url}/health", timeout=10).json() == {"status": "ok"}
        speech = httpx.post(
            f"{srv.base_url}/v1/audio/speech",
            json={"model": "tts", "input": "hi", "voice": "alloy"},
            timeout=10,
        )
        assert speech.status_code == 503 and speech.headers["retry-after"] == "5"
        assert speech.json()["error"]["code"] == "server_starting"
        with pytest.raises(websockets.InvalidStatus) as refused:
            with websockets.sync.client.connect(srv.ws_url, open_timeout=10):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["error"]["code"] == "server_starting"

        gate.write_text("go\n")  # the fake engine's start ends
        deadline = time.monotonic() + fake_server.START_TIMEOUT_S
        while httpx.get(f"{srv.base_url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, srv.log_path.read_text()
            time.sleep(0.1)  # another process: nothing to wait on but its answers
        voices = httpx.get(f"{srv.base_url}/v1/audio/voices", timeout=10)
        assert voices.status_code == 200
        with websockets.sync.client.connect(srv.ws_url, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    log = srv.log_path.read_text()
    assert "engine ready in" in log and "voxgate ready: backbone fake" in log


def test_a_start_that_fails_in_the_background_ends_the_process_with_3(tmp_path: Path) -> None:
    failure = "no memory for the KV cache"
    with fake_server.launch(tmp_path, {"FAKE_START_FAILS": failure}, until=None) as srv:
        assert srv.proc.wait(timeout=fake_server.START_TIMEOUT_S) == EXIT_START_FAILED
    log = srv.log_path.read_text()
    assert "startup failed during starting_engine" in log and failure in log
    assert "exiting with status 3: the server could not start" in log
