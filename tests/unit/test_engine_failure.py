"""When the engine dies (server/engine_watch.py): new work refused, live sessions told and
closed, the process exits non-zero. Over the fake backbone, whose engine "dies" when its
`is_healthy` turns False (as a killed EngineCore makes the real one report); the real engine
is killed in tests/integration/test_engine_death.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fake_server
import httpx
import pytest
import websockets
from fakes import FakeBackbone
from fastapi.testclient import TestClient
from in_process import app_over
from realtime_wire import receive, receive_until, text_item
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from voxgate.model.engine import EngineHost
from voxgate.model.types import BackboneError, EngineUnavailable, RequestRejected
from voxgate.server.engine_watch import EXIT_ENGINE_DEAD

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> FakeBackbone:
    return FakeBackbone(reply=["word "] * 40, chunk_delay_s=0.02)


def engine_dies(client: TestClient, fake: FakeBackbone) -> None:
    """The engine dies; return once the server has noticed."""
    fake.is_healthy = False

    async def noticed() -> None:
        async with asyncio.timeout(10):
            await client.app.state.services.engine_watch.failed.wait()

    client.portal.call(noticed)


def test_a_live_session_is_told_and_closed_with_1011(client, fake) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        assert receive(ws)["type"] == "session.created"
        engine_dies(client, fake)
        error = receive_until(ws, "error")[-1]["error"]
        assert (error["type"], error["code"]) == ("server_error", "engine_unavailable")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1011


def test_new_work_is_refused_before_it_starts(client, fake) -> None:
    engine_dies(client, fake)
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/realtime"):
            pass  # pragma: no cover - the handshake is refused
    assert denied.value.status_code == 503
    assert denied.value.json()["error"]["code"] == "engine_unavailable"
    assert denied.value.headers["retry-after"] == "2"
    body = {"model": "tts-1", "voice": "joe", "input": "Hi."}
    for response in (
        client.post("/v1/audio/speech", json=body),
        client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")},
        ),
    ):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
        assert response.headers["retry-after"] == "2"
    assert client.get("/health").status_code == 503  # liveness fails: replace this process
    assert client.get("/ready").status_code == 503
    assert fake.synthesize_calls == [] and fake.transcribe_calls == []


def test_a_response_the_engine_fails_says_engine_unavailable(fake) -> None:
    fake.fail_after = 2
    fake.failure = EngineUnavailable("the speech engine has stopped")
    with TestClient(app_over(fake)) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ws.send_json(text_item("hello"))
        ws.send_json({"type": "response.create"})
        events = receive_until(ws, "response.done")
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["engine_unavailable"]
        details = events[-1]["response"]["status_details"]
        assert events[-1]["response"]["status"] == "failed"
        assert details["error"]["code"] == "engine_unavailable"


def test_the_process_exits_with_70_and_tells_its_sessions(tmp_path: Path) -> None:
    """A real `serve()` process: the engine dies mid-answer; the session gets its error and
    1011, and the process exits with EXIT_ENGINE_DEAD (for its supervisor to replace it)."""

    async def scenario(server: fake_server.FakeServer) -> tuple[list[dict[str, Any]], int]:
        events: list[dict[str, Any]] = []
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(
                '{"type":"conversation.item.create","item":{"type":"message","role":"user",'
                '"content":[{"type":"input_text","text":"hi"}]}}'
            )
            await ws.send('{"type":"response.create"}')
            try:
                async for message in ws:
                    events.append(event := json.loads(message))
                    if event["type"] == "response.output_audio.delta" and len(events) < 40:
                        os.kill(server.proc.pid, signal.SIGUSR1)  # the engine dies now
            except websockets.ConnectionClosed:
                pass
            assert ws.close_code is not None
            return events, ws.close_code

    with fake_server.launch(tmp_path, {"FAKE_CHUNK_DELAY_S": "0.1"}) as server:
        died = time.monotonic()
        events, close_code = asyncio.run(scenario(server))
        status = server.proc.wait(timeout=30)
        took = time.monotonic() - died
        log = server.log_path.read_text()
    codes = [e["error"]["code"] for e in events if e["type"] == "error"]
    assert "engine_unavailable" in codes, (codes, log[-3000:])
    assert close_code == 1011
    assert status == EXIT_ENGINE_DEAD, log[-3000:]
    print(f"engine death -> exit in {took:.2f} s (including the start of the answer)")
    assert "Traceback" not in log, log[-3000:]


def test_health_is_fine_while_the_engine_lives(client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert httpx.codes.is_success(client.get("/ready").status_code)


# --- vLLM's exceptions, mapped where they arise (model/engine.py) ------------------------------


class FailingEngine:
    """Stands in for vLLM's `AsyncLLM`: renders a prompt as the real one's renderer does, then
    fails every request with `error`, as vLLM's `generate` raises from its stream."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.errored = False
        self.model_config = SimpleNamespace(is_encoder_decoder=False)
        self.renderer = self
        self.requests: list[str] = []

    async def render_cmpl_async(self, prompts: list[Any]) -> list[Any]:
        return prompts

    def generate(self, prompt: Any, params: Any, *, request_id: str, priority: int) -> Any:
        self.requests.append(request_id)

        async def outputs() -> AsyncIterator[Any]:
            raise self.error
            yield  # an async generator, as vLLM's is

        return outputs()


def vllm_error(name: str) -> Exception:
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    return {
        "ValueError": ValueError("the prompt is longer than the model's context"),
        "VLLMValidationError": VLLMValidationError("bad sampling", parameter="max_tokens"),
        "EngineDeadError": EngineDeadError(),
        "EngineGenerateError": EngineGenerateError(),
    }[name]


# Importing vLLM imports torch, whose own modules use its deprecated APIs.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
@pytest.mark.parametrize(
    ("raised", "mapped", "healthy_after"),
    [
        ("ValueError", RequestRejected, True),
        ("VLLMValidationError", RequestRejected, True),
        ("EngineDeadError", EngineUnavailable, False),
        ("EngineGenerateError", BackboneError, True),
    ],
)
async def test_the_engines_exceptions_become_backbone_errors(
    raised: str, mapped: type[BackboneError], healthy_after: bool
) -> None:
    engine = FailingEngine(vllm_error(raised))
    host = EngineHost(engine, Path("/nowhere"))  # type: ignore[arg-type]

    async def first_output() -> None:
        async with aclosing(host.stream([1, 2, 3], SimpleNamespace(), "req-1")) as outputs:
            async for _ in outputs:
                raise AssertionError("the engine produced nothing")

    with pytest.raises(BackboneError) as caught:
        await first_output()
    assert type(caught.value) is mapped
    assert caught.value.__cause__ is engine.error
    assert host.is_healthy is healthy_after
    # A dead engine is not asked again: later requests are refused before they reach it.
    with pytest.raises(EngineUnavailable if not healthy_after else mapped):
        await first_output()
    assert len(engine.requests) == (1 if not healthy_after else 2)
