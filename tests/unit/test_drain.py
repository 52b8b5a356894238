"""Graceful shutdown: refusing new work while draining, live turns finishing first, 1001 closes,
the deadline, and SIGTERM to a real server process (over the fake backbone).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import fake_server
import httpx
import numpy as np
import pytest
import websockets
from fakes import FakeBackbone
from fastapi.testclient import TestClient
from in_process import app_over, pcm, send_audio
from realtime_wire import receive_until
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from voxgate.model.types import Role
from voxgate.server.drain import DrainState, TurnActivity
from voxgate.streaming.config import TurnDetection
from voxgate.streaming.events import (
    InputCommitted,
    Item,
    ItemDone,
    Response,
    ResponseFinished,
    ResponseStarted,
    SpeechStartedEvent,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> FakeBackbone:
    return FakeBackbone(reply=["word "] * 20, chunk_delay_s=0.02)


def begin_drain(client: TestClient) -> None:
    async def begin() -> None:
        client.app.state.services.drain.begin()

    client.portal.call(begin)


def closed_with(ws: WebSocketTestSession) -> tuple[int, list[str]]:
    """Read until the server closes: its close code, and the event types before it."""
    types = []
    with pytest.raises(WebSocketDisconnect) as closed:
        for _ in range(5000):
            types.append(ws.receive_json()["type"])
    return closed.value.code, types


# --- in process ------------------------------------------------------------------------------


def test_draining_refuses_new_sessions_and_requests(client: TestClient) -> None:
    begin_drain(client)
    with client.websocket_connect("/v1/realtime") as ws:
        error = ws.receive_json()["error"]
        assert error["code"] == "server_shutting_down"
        code, _ = closed_with(ws)
    assert code == 1013
    body = {"model": "tts-1", "voice": "joe", "input": "Hi.", "response_format": "pcm"}
    refused = client.post("/v1/audio/speech", json=body)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutting_down"
    assert refused.headers["retry-after"]
    ready = client.get("/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    assert client.get("/health").status_code == 200  # liveness: the process is fine
    assert "voxgate_draining 1.0" in client.get("/metrics").text


def test_an_idle_session_closes_with_going_away(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        begin_drain(client)
        code, types = closed_with(ws)
    assert (code, types) == (1001, [])


def test_the_running_response_finishes_before_the_close(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        ws.send_json({"type": "response.create"})
        receive_until(ws, "response.created")
        begin_drain(client)
        code, types = closed_with(ws)
    assert code == 1001
    assert types[-1] == "response.done"
    assert types.count("response.output_audio_transcript.delta") > 0


def test_a_turn_being_spoken_is_answered_before_the_close(client: TestClient, speak) -> None:
    speech = pcm(speak("Hello there, how are you today?"))
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        send_audio(ws, speech)
        receive_until(ws, "input_audio_buffer.speech_started")
        begin_drain(client)
        send_audio(ws, pcm(np.zeros(16000, np.float32)))  # the user stops: the turn ends
        code, types = closed_with(ws)
    assert code == 1001
    order = ["input_audio_buffer.committed", "response.created", "response.done"]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order), types
    assert types[-1] == "response.done"


def test_the_deadline_closes_a_session_mid_answer(fake: FakeBackbone) -> None:
    fake.reply = ["word "] * 1000  # 20 s of answer
    with TestClient(app_over(fake, drain_deadline_s=0.3)) as client:
        with client.websocket_connect("/v1/realtime") as ws:
            receive_until(ws, "session.created")
            ws.send_json({"type": "response.create"})
            receive_until(ws, "response.output_audio.delta")
            begin_drain(client)
            code, types = closed_with(ws)
    assert code == 1001
    assert "response.done" not in types


def test_run_returns_once_every_session_has_closed(client: TestClient) -> None:
    drain = client.app.state.services.drain
    with client.websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        ws.send_json({"type": "response.create"})
        receive_until(ws, "response.created")
        done = client.portal.start_task_soon(drain.run)
        code, types = closed_with(ws)
    done.result(timeout=10)
    assert code == 1001 and types[-1] == "response.done"
    assert drain.state is DrainState.DRAINED


# --- TurnActivity: between turns or not -------------------------------------------------------


def response(rid: str, in_conversation: bool = True) -> Response:
    return Response(rid, True, "joe", "audio/pcm", in_conversation, 100)


def test_turn_activity() -> None:
    vad = TurnDetection()
    activity = TurnActivity()
    assert activity.quiet.is_set()
    steps = [
        (SpeechStartedEvent("item_1", 0), False),  # the user speaks
        (InputCommitted("item_1", None), False),  # the turn ended; its answer is to come
        (ItemDone(Item("item_1", Role.USER, transcript="hi", audio=True)), False),
        (ResponseStarted(response("resp_1")), False),
        (ResponseFinished(response("resp_1")), True),
        (SpeechStartedEvent("item_2", 0), False),
        (InputCommitted("item_2", None), False),
        # A cough: no words, so the session answers nothing.
        (ItemDone(Item("item_2", Role.USER, transcript=" ", audio=True)), True),
    ]
    for event, quiet in steps:
        activity.observe(event, vad)
        assert activity.quiet.is_set() is quiet, event

    # A response out of the conversation does not answer the committed turn.
    activity.observe(InputCommitted("item_3", None), vad)
    activity.observe(ResponseStarted(response("resp_2", in_conversation=False)), vad)
    activity.observe(ResponseFinished(response("resp_2", in_conversation=False)), vad)
    assert not activity.quiet.is_set()
    # The user talks over it: that turn is answered together with the next one.
    activity.observe(SpeechStartedEvent("item_4", 0), vad)
    activity.observe(InputCommitted("item_4", None), vad)
    activity.observe(ResponseStarted(response("resp_3")), vad)
    activity.observe(ResponseFinished(response("resp_3")), vad)
    assert activity.quiet.is_set()

    # Without create_response nothing answers a committed turn by itself.
    manual = TurnDetection(create_response=False)
    activity.observe(SpeechStartedEvent("item_5", 0), manual)
    activity.observe(InputCommitted("item_5", None), manual)
    assert activity.quiet.is_set()


# --- SIGTERM to a real server ----------------------------------------------------------------


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    env = {
        "VOXGATE_LOG_FORMAT": "json",
        "VOXGATE_DRAIN_DEADLINE_S": "20",
        "FAKE_REPLY_WORDS": "30",
        "FAKE_CHUNK_DELAY_S": "0.05",
    }
    with fake_server.launch(tmp_path, env) as server:
        yield server.proc, server.port, server.log_path


async def test_sigterm_finishes_the_answer_then_closes_with_1001(server_process) -> None:
    proc, port, log_path = server_process
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    async with websockets.connect(url) as ws:
        created = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "response.create"}))
        while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
            pass
        proc.send_signal(signal.SIGTERM)

        # While the answer goes on (1.5 s of it), readiness goes off and new sessions are
        # refused. The server acts on the signal within its 100 ms tick: wait for that.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):  # 10 s at most
                if (await http.get("/ready")).status_code == 503:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("/ready still 200 after SIGTERM")
        async with websockets.connect(url) as late:
            error = json.loads(await late.recv())["error"]
            assert error["code"] == "server_shutting_down"
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await late.recv()
        assert refused.value.rcvd.code == 1013

        # The answer runs to its end, then the server closes with 1001.
        types = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    types.append(json.loads(await ws.recv())["type"])
    assert closed.value.rcvd.code == 1001
    assert types[-1] == "response.done"
    proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    session_id = created["session"]["id"]
    done = [line for line in lines if line.get("session_id") == session_id and "status" in line]
    assert [line["status"] for line in done] == ["completed"]
    assert done[0]["response_id"].startswith("resp_")
    assert any(line["message"].startswith("drained") for line in lines)
