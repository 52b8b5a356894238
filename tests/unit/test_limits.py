"""Every limit is refused up front with its own error, and the session stays usable: field and
conversation caps, instructions in tokens, tools, out-of-band responses, idle and old sessions,
client secrets, deep JSON, slow REST bodies, and failures inside the server. Over the fake
backbone (the real engine's tokenizer is checked in tests/integration/test_limits_engine.py).
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fake_server
import httpx
import pytest
import websockets
from fakes import FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import TEST_KEY, app_over
from pydantic import SecretStr
from realtime_wire import answers, next_error, receive, receive_until, session_update, text_item
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from voxgate.model import tools
from voxgate.model.types import ToolSpec
from voxgate.server import outgoing
from voxgate.server.settings import (
    ClientSecretSettings,
    RealtimeSettings,
    RestSettings,
)
from voxgate.streaming.config import SessionConfig, SessionLimits
from voxgate.streaming.events import ErrorReported
from voxgate.streaming.session import RealtimeSession

pytestmark = pytest.mark.timeout(60)

LIMITS = SessionLimits(
    max_instructions_chars=200,
    max_item_chars=100,
    max_conversation_chars=1024,
    max_tools=3,
    max_tool_schema_bytes=300,
    max_tool_description_chars=100,
)


def app_for(
    fake: FakeBackbone, *, realtime: dict[str, Any] | None = None, **settings: Any
) -> FastAPI:
    """The app with this file's small session limits (and `realtime` settings)."""
    return app_over(
        fake, realtime=RealtimeSettings(**({"session": LIMITS} | (realtime or {}))), **settings
    )


@pytest.fixture
def app(fake: FakeBackbone) -> FastAPI:
    return app_for(fake)


def refused(ws: WebSocketTestSession, event: dict[str, Any]) -> dict[str, Any]:
    """Send `event`; return its error (carrying its event_id); the session still answers."""
    ws.send_json(event | {"event_id": "evt_limit"})
    error = next_error(ws)
    assert error["event_id"] == "evt_limit", error
    answers(ws)
    return error


def function_tool(name: str = "f", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": parameters or {"type": "object"}}


# --- caps on what a client hands over ---------------------------------------------------------


def test_long_instructions_are_refused_by_characters(ws, fake) -> None:
    error = refused(ws, session_update(instructions="x" * 201))
    assert (error["code"], error["param"]) == ("string_above_max_length", "session.instructions")
    error = refused(ws, {"type": "response.create", "response": {"instructions": "x" * 201}})
    assert (error["code"], error["param"]) == ("string_above_max_length", "response.instructions")
    assert all(c.options.instructions != "x" * 201 for c in fake.respond_calls)


def test_instructions_that_leave_no_room_are_refused_when_set(ws, fake) -> None:
    fake.context_tokens = 300  # one "token" per character in the fake
    error = refused(ws, session_update(instructions="x" * 150, max_output_tokens=200))
    assert (error["code"], error["param"]) == ("context_length_exceeded", "session.instructions")
    ws.send_json(session_update(instructions="x" * 150, max_output_tokens=100))
    assert receive_until(ws, "session.updated")[-1]["session"]["max_output_tokens"] == 100
    # A response that asks for a longer answer than fits beside them is refused too.
    error = refused(ws, {"type": "response.create", "response": {"max_output_tokens": 200}})
    assert error["code"] == "context_length_exceeded"


def test_long_items_and_large_conversations_are_refused(ws, fake) -> None:
    error = refused(ws, text_item("y" * 101))
    assert (error["code"], error["param"]) == ("string_above_max_length", "item.text")
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{" * 101}
    error = refused(ws, {"type": "conversation.item.create", "item": call})
    assert error["param"] == "item.arguments"
    # Items of 90 characters until the conversation's 1024 are full.
    added: list[str] = []
    for _ in range(20):
        ws.send_json(text_item("z" * 90))
        event = receive(ws)
        while event["type"] not in ("conversation.item.done", "error"):
            event = receive(ws)
        if event["type"] == "error":
            assert event["error"]["code"] == "conversation_too_large"
            break
        added.append(event["item"]["id"])
    else:
        raise AssertionError("the conversation grew past its limit")
    assert 5 <= len(added) <= 11
    # Deleting items makes room again.
    ws.send_json({"type": "conversation.item.delete", "item_id": added[0]})
    receive_until(ws, "conversation.item.deleted")
    ws.send_json(text_item("z" * 90))
    assert receive_until(ws, "conversation.item.done")[-1]["item"]["content"][0]["text"]
    assert fake.respond_calls and all(
        all(len(t.text) <= 100 for t in c.conversation) for c in fake.respond_calls
    )


def test_tools_are_bounded_in_number_size_and_reach(ws) -> None:
    four = [function_tool(f"f{i}") for i in range(4)]
    error = refused(ws, session_update(tools=four))
    assert (error["code"], error["param"]) == ("array_above_max_length", "session.tools")
    big = function_tool(parameters={"type": "object", "description": "d" * 400})
    error = refused(ws, session_update(tools=[big]))
    assert (error["code"], error["param"]) == (
        "string_above_max_length",
        "session.tools[0].parameters",
    )
    remote = function_tool(parameters={"$ref": "http://169.254.169.254/latest/meta-data"})
    error = refused(ws, {"type": "response.create", "response": {"tools": [remote]}})
    assert (error["code"], error["param"]) == ("invalid_value", "response.tools[0].parameters")
    assert "refers outside itself" in error["message"]
    local = function_tool(
        parameters={
            "type": "object",
            "$defs": {"n": {"type": "integer"}},
            "properties": {"n": {"$ref": "#/$defs/n"}},
        }
    )
    ws.send_json(session_update(tools=[local]))
    assert receive_until(ws, "session.updated")[-1]["session"]["tools"][0]["name"] == "f"


def test_tool_descriptions_are_bounded(ws) -> None:
    """A description goes whole into every tool prompt: over its cap (OpenAI's is 1,024
    characters) it is refused, for the session's tools and a response's."""
    long = function_tool() | {"description": "d" * 101}
    error = refused(ws, session_update(tools=[long]))
    assert (error["code"], error["param"]) == (
        "string_above_max_length",
        "session.tools[0].description",
    )
    error = refused(ws, {"type": "response.create", "response": {"tools": [function_tool(), long]}})
    assert (error["code"], error["param"]) == (
        "string_above_max_length",
        "response.tools[1].description",
    )
    ws.send_json(session_update(tools=[long | {"description": "d" * 100}]))
    assert receive_until(ws, "session.updated")[-1]["session"]["tools"][0]["description"]
    assert SessionLimits().max_tool_description_chars == 1024


def test_checking_arguments_never_fetches_a_reference() -> None:
    """Even a schema that got past the session check resolves nothing remote."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/schema.json"
        tool = ToolSpec("f", "", {"type": "object", "properties": {"n": {"$ref": url}}})
        with pytest.raises(ValueError, match="do not match"):
            tools.parse_decision('{"call": "f", "arguments": {"n": 3}}', [tool])
    finally:
        server.shutdown()
    assert hits == []


def test_metadata_is_bounded_as_at_openai(ws) -> None:
    many = {f"k{i}": "v" for i in range(17)}
    error = refused(ws, {"type": "response.create", "response": {"metadata": many}})
    assert (error["code"], error["param"]) == ("array_above_max_length", "response.metadata")
    long = {"k": "v" * 513}
    error = refused(ws, {"type": "response.create", "response": {"metadata": long}})
    assert error["code"] == "string_above_max_length"


def test_tracing_metadata_is_bounded_as_response_metadata_is(ws) -> None:
    """The session keeps its tracing settings and says them back in every session.updated:
    any JSON (OpenAI's type is an object), within 16 pairs and their JSON length."""

    def tracing(metadata: Any) -> dict[str, Any]:
        return session_update(tracing={"workflow_name": "w", "metadata": metadata})

    error = refused(ws, tracing({f"k{i}": "v" for i in range(17)}))
    assert (error["code"], error["param"]) == ("array_above_max_length", "session.tracing.metadata")
    error = refused(ws, tracing({"k": "v" * (16 * 576)}))
    assert (error["code"], error["param"]) == (
        "string_above_max_length",
        "session.tracing.metadata",
    )
    error = refused(ws, tracing({"k" * 65: "v"}))
    assert error["code"] == "string_above_max_length"
    error = refused(ws, tracing({"k" * 1_000_000: "v"}))  # the key is not echoed whole
    assert error["param"] == "session.tracing.metadata." + "k" * 64 + "....[key]"
    assert len(error["message"]) < 400
    error = refused(ws, tracing({"k": {"deeper": ["x"] * 2000}}))
    assert (error["code"], error["param"]) == (
        "string_above_max_length",
        "session.tracing.metadata",
    )
    flat = {"user": "ada", "attempt": 2, "ratio": 0.5, "beta": True, "none": None}
    flat["nested"] = {"tags": ["a", "b"], "depth": {"n": 1}}
    logprobs = "item.input_audio_transcription.logprobs"
    update = tracing(flat)
    update["session"]["include"] = [logprobs] * 1000
    ws.send_json(update)
    session = receive_until(ws, "session.updated")[-1]["session"]
    assert session["tracing"]["metadata"] == flat
    assert session["include"] == [logprobs]  # kept once, however often it was asked


@pytest.mark.parametrize(
    ("transcription", "code", "param"),
    [
        ({"prompt": "p" * 2001}, "string_above_max_length", "prompt"),
        ({"keywords": ["k"] * 101}, "array_above_max_length", "keywords"),
        ({"keywords": ["k" * 65]}, "string_above_max_length", "keywords[0]"),
        ({"languages": ["en"] * 101}, "array_above_max_length", "languages"),
        ({"language": "l" * 17}, "string_above_max_length", "language"),
        ({"model": "m" * 129}, "string_above_max_length", "model"),
        # Within the bounds, keywords are refused as a feature this server lacks.
        ({"keywords": ["voxgate"] * 100}, "unsupported_feature", "keywords"),
    ],
)
def test_transcription_settings_are_bounded(ws, transcription, code, param) -> None:
    update = session_update(audio={"input": {"transcription": {"model": "m"} | transcription}})
    error = refused(ws, update)
    assert (error["code"], error["param"]) == (code, f"session.audio.input.transcription.{param}")


def test_the_transcription_prompt_cap_is_the_rest_one(client) -> None:
    """2,000 characters for a realtime session's transcription prompt and a REST upload's."""
    headers = {"Authorization": "Bearer none"}
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    form = {"model": "whisper-1", "prompt": "p" * 2001}
    response = client.post("/v1/audio/transcriptions", files=files, data=form, headers=headers)
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "string_above_max_length",
        "prompt",
    )
    with client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ok = {"audio": {"input": {"transcription": {"model": "m", "prompt": "p" * 2000}}}}
        ws.send_json(session_update(**ok))
        updated = receive_until(ws, "session.updated")[-1]["session"]
        assert len(updated["audio"]["input"]["transcription"]["prompt"]) == 2000


@pytest.mark.parametrize("depth", [65, 5000])
def test_deeply_nested_json_is_invalid_json(ws, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    ws.send_text(f'{{"type":"session.update","event_id":"e","session":{nested}}}')
    assert next_error(ws)["code"] == "invalid_json"
    answers(ws)


def test_deeply_nested_rest_bodies_are_invalid_json(client) -> None:
    nested = "[" * 5000 + "]" * 5000
    for path in ("/v1/audio/speech", "/v1/realtime/client_secrets"):
        response = client.post(path, content=nested, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json"


# --- out-of-band responses --------------------------------------------------------------------


def out_of_band(event_id: str) -> dict[str, Any]:
    return {
        "type": "response.create",
        "event_id": event_id,
        "response": {"conversation": "none", "output_modalities": ["text"]},
    }


def test_out_of_band_responses_are_capped_and_cancellable_by_id() -> None:
    fake = FakeBackbone(reply=["word "] * 200, chunk_delay_s=0.05)
    with TestClient(app_for(fake)) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ws.send_json(out_of_band("a"))
        ws.send_json(out_of_band("b"))
        ws.send_json(out_of_band("c"))
        created, error = [], None
        while error is None or len(created) < 2:
            event = receive(ws)
            if event["type"] == "response.created":
                created.append(event["response"]["id"])
            elif event["type"] == "error":
                error = event["error"]
        assert (error["code"], error["event_id"]) == ("response_limit_reached", "c")
        for response_id in created:
            ws.send_json({"type": "response.cancel", "response_id": response_id})
        done = {}
        while len(done) < 2:
            event = receive(ws)
            if event["type"] == "response.done":
                done[event["response"]["id"]] = event["response"]["status"]
        assert done == dict.fromkeys(created, "cancelled")
        assert client.app.state.services.out_of_band_responses.active == 0
        ws.send_json(out_of_band("d"))  # room again
        assert receive_until(ws, "response.created")[-1]["type"] == "response.created"


def test_out_of_band_responses_are_capped_over_the_server() -> None:
    fake = FakeBackbone(reply=["word "] * 200, chunk_delay_s=0.05)
    app = app_for(fake, realtime={"max_out_of_band_responses": 1})
    with (
        TestClient(app) as client,
        client.websocket_connect("/v1/realtime") as one,
        client.websocket_connect("/v1/realtime") as two,
    ):
        receive(one), receive(two)
        one.send_json(out_of_band("a"))
        receive_until(one, "response.created")
        two.send_json(out_of_band("b"))
        assert next_error(two)["code"] == "response_limit_reached"


# --- idle, old, and per-secret sessions -------------------------------------------------------


def closed_with(ws: WebSocketTestSession, code: str, close_code: int) -> None:
    assert next_error(ws)["code"] == code
    with pytest.raises(WebSocketDisconnect) as closed:
        while True:
            ws.receive_json()
    assert closed.value.code == close_code


def test_an_idle_session_is_closed(fake) -> None:
    app = app_for(fake, realtime={"idle_timeout_s": 0.3})
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        closed_with(ws, "idle_timeout", 1000)
    assert app.state.services.sessions.active == 0


def test_an_answer_under_way_is_not_idleness() -> None:
    fake = FakeBackbone(reply=["word "] * 20, chunk_delay_s=0.05)  # a one second answer
    app = app_for(fake, realtime={"idle_timeout_s": 0.3})
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ws.send_json(text_item("talk for a while"))
        ws.send_json({"type": "response.create"})
        events = receive_until(ws, "response.done")
        assert events[-1]["response"]["status"] == "completed"
        assert "error" not in [e["type"] for e in events]
        closed_with(ws, "idle_timeout", 1000)


def test_a_session_ends_at_its_maximum_age(fake) -> None:
    app = app_for(fake, realtime={"max_session_s": 0.5})
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        answers(ws)  # busy or not, the age counts
        closed_with(ws, "session_expired", 1000)


def test_a_client_secret_opens_a_bounded_number_of_sessions(fake) -> None:
    app = app_for(
        fake,
        api_key=SecretStr(TEST_KEY),
        client_secrets=ClientSecretSettings(max_sessions_per_secret=1),
    )
    with TestClient(app) as client:
        minted = client.post(
            "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {TEST_KEY}"}
        )
        headers = {"Authorization": f"Bearer {minted.json()['value']}"}
        with client.websocket_connect("/v1/realtime", headers=headers) as first:
            assert receive(first)["type"] == "session.created"
            with client.websocket_connect("/v1/realtime", headers=headers) as second:
                closed_with(second, "session_limit_reached", 1013)
        with client.websocket_connect("/v1/realtime", headers=headers) as again:
            assert receive(again)["type"] == "session.created"


# --- REST bodies ------------------------------------------------------------------------------


async def trickle(stop: asyncio.Event) -> AsyncIterator[bytes]:
    yield b'{"model": "tts-1", '
    await stop.wait()
    yield b'"voice": "joe", "input": "Hi."}'


async def test_a_slow_body_times_out_without_holding_a_slot(fake) -> None:
    app = app_for(fake, rest=RestSettings(max_concurrent_requests=1, body_timeout_s=1.0))
    stop = asyncio.Event()
    body = {"model": "tts-1", "voice": "joe", "input": "Hi."}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as c,
    ):
        slow = asyncio.create_task(c.post("/v1/audio/speech", content=trickle(stop)))
        # While the slow body trickles in, the one worker slot stays free for others.
        fast = await c.post("/v1/audio/speech", json=body)
        assert fast.status_code == 200
        response = await slow
        stop.set()
    assert response.status_code == 408
    assert response.json()["error"]["code"] == "request_timeout"
    assert len(fake.synthesize_calls) == 1


async def test_bodies_being_received_are_bounded(fake) -> None:
    app = app_for(fake, rest=RestSettings(max_pending_bodies=1, body_timeout_s=5.0))
    stop = asyncio.Event()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as c,
    ):
        reading = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            reading.set()  # the server has started to read the slow body
            async for chunk in trickle(stop):
                yield chunk

        slow = asyncio.create_task(c.post("/v1/audio/speech", content=body()))
        await reading.wait()
        busy = await c.post("/v1/audio/speech", json={"model": "tts-1"})
        stop.set()
        assert (await slow).status_code == 200
    assert busy.status_code == 429
    assert busy.json()["error"]["code"] == "rate_limited"


async def test_one_client_holds_a_bounded_share_of_the_bodies(fake) -> None:
    """Slow uploads from one address take at most `max_pending_bodies_per_client` of the
    server's `max_pending_bodies`: that client's next body is refused, another's is served.
    An IPv6 client counts by its /64."""
    rest = RestSettings(max_pending_bodies=6, max_pending_bodies_per_client=2, body_timeout_s=5)
    app = app_for(fake, rest=rest)
    stop = asyncio.Event()
    body = {"model": "tts-1", "voice": "joe", "input": "Hi."}

    def client_at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async with (
        app.router.lifespan_context(app),
        client_at("203.0.113.7") as slow,
        client_at("2001:db8::1") as slow6,
        client_at("2001:db8::2") as same6,
        client_at("198.51.100.9") as other,
    ):

        async def started(c: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
            """A slow upload, once the server has begun to read it."""
            began = asyncio.Event()

            async def trickling() -> AsyncIterator[bytes]:
                began.set()
                async for chunk in trickle(stop):
                    yield chunk

            task = asyncio.create_task(c.post("/v1/audio/speech", content=trickling()))
            await began.wait()
            return task

        uploads = [await started(c) for c in (slow, slow, slow6, same6)]
        refused = [await c.post("/v1/audio/speech", json=body) for c in (slow, same6)]
        served = await other.post("/v1/audio/speech", json=body)
        stop.set()
        finished = [await task for task in uploads]
    assert served.status_code == 200, served.text
    assert [r.status_code for r in refused] == [429, 429]
    assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)
    assert all("this client is already sending 2" in r.json()["error"]["message"] for r in refused)
    assert [r.status_code for r in finished] == [200] * 4


# --- failures inside the server ---------------------------------------------------------------


async def test_a_failed_session_task_is_reported() -> None:
    session = RealtimeSession(
        FakeBackbone(),
        lambda: pytest.fail("no VAD needed"),
        SessionConfig(instructions="", voice="joe", turn_detection=None),
        SessionLimits(),
    )

    async def broken() -> None:
        raise RuntimeError("a bug")

    await asyncio.wait([session._spawn(broken())])
    event = session.events.get_nowait()
    assert isinstance(event, ErrorReported) and event.code == "server_error"
    await session.close()


def test_a_failed_transcription_is_an_error_when_transcripts_are_off() -> None:
    """The turn goes unanswered: a client that asked for no transcripts hears it as an
    `error`, not as silence (with transcripts on it is OpenAI's transcription.failed)."""

    def broken_asr(samples: Any) -> str:
        raise RuntimeError("ASR crashed")

    fake = FakeBackbone(transcript=broken_asr)
    audio = {"type": "input_audio", "audio": base64.b64encode(bytes(4800)).decode()}
    item = {"type": "message", "role": "user", "content": [audio]}
    with TestClient(app_for(fake)) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        for transcription in (None, {"model": "whisper-1"}):
            ws.send_json(session_update(audio={"input": {"transcription": transcription}}))
            receive_until(ws, "session.updated")
            ws.send_json({"type": "conversation.item.create", "item": item})
            told = receive_until(ws, "conversation.item.done")[-2]
            if transcription is None:
                assert told["type"] == "error", told
                assert (told["error"]["code"], told["error"]["type"]) == (
                    "transcription_failed",
                    "server_error",
                )
            else:
                assert told["type"] == "conversation.item.input_audio_transcription.failed"
        assert len(fake.transcribe_calls) == 2


def test_a_failure_of_the_connection_ends_it_with_an_error_and_1011(monkeypatch, ws) -> None:
    wire_events = outgoing.Outgoing.wire_events

    def broken(self: outgoing.Outgoing, event: Any) -> list[dict[str, Any]]:
        if type(event).__name__ == "ResponseStarted":
            raise RuntimeError("a bug in the writer")
        return wire_events(self, event)

    monkeypatch.setattr(outgoing.Outgoing, "wire_events", broken)
    ws.send_json(text_item("hello"))
    ws.send_json({"type": "response.create"})
    closed_with(ws, "server_error", 1011)


def test_a_message_too_large_is_refused_and_the_session_goes_on(fake) -> None:
    app = app_for(fake, realtime={"max_event_bytes": 2048})
    with TestClient(app) as client, client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        ws.send_text(json.dumps(session_update(instructions="x" * 4000)))
        assert next_error(ws)["code"] == "message_too_large"
        answers(ws)


def test_the_transport_refuses_a_message_over_the_event_cap(tmp_path) -> None:
    """A real `serve()` process: a message over the cap never reaches the app whole; the
    socket closes with 1009 (message too big), and the server serves the next client."""

    async def scenario(server: fake_server.FakeServer) -> int | None:
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.recv()  # session.created
            await ws.send(json.dumps(session_update(instructions="x" * 70_000)))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            return ws.close_code

    env = {"VOXGATE_REALTIME__MAX_EVENT_BYTES": "65536"}
    with fake_server.launch(tmp_path, env) as server:
        assert asyncio.run(scenario(server)) == 1009
        assert httpx.get(f"{server.base_url}/ready").status_code == 200


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux's VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = (line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


MESSAGE_MIB = 3.5
SENT_MESSAGES = 40


def test_a_client_that_outpaces_its_session_parks_little_in_the_server(tmp_path) -> None:
    """A real `serve()` process: a client sends 40 messages of 3.5 MiB (140 MiB) as fast as
    the socket takes them, reading nothing until the last is sent. The server reads a socket
    only when the session has taken what it read (`draining.WS_PROTOCOL`), so its peak memory
    grows by a few messages, not by what the client pushed. The client offers compression, and
    the server declines it: these messages would deflate to a few KB each, and one read would
    then hold dozens of them (the peak grew by about 100 MiB when the server accepted)."""
    huge = session_update(instructions="x" * int(MESSAGE_MIB * (1 << 20)))

    async def scenario(server: fake_server.FakeServer) -> tuple[float, float]:
        async with websockets.connect(server.ws_url, max_size=None, compression="deflate") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.recv()  # session.created
            for _ in range(2):  # the first messages set the baseline (buffers, parse thread)
                await ws.send(json.dumps(huge))
                assert json.loads(await ws.recv())["type"] == "error"
            before = peak_rss_mib(server.proc.pid)
            text = json.dumps(huge)
            for _ in range(SENT_MESSAGES):
                await ws.send(text)  # waits while the server does not read
            codes = [json.loads(await ws.recv())["error"]["code"] for _ in range(SENT_MESSAGES)]
            assert codes == ["string_above_max_length"] * SENT_MESSAGES
            return before, peak_rss_mib(server.proc.pid)

    # Large blocks straight from the OS and back on free (glibc): the peak resident memory is
    # then the peak of what the server holds, not what its allocator kept for reuse.
    with fake_server.launch(tmp_path, {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}) as server:
        before, after = asyncio.run(scenario(server))
    grown = after - before
    sent = SENT_MESSAGES * MESSAGE_MIB
    print(f"\npeak RSS {before:.0f} -> {after:.0f} MiB with {sent:.0f} MiB sent")
    # Each message held costs a few copies (frame bytes, text, parsed JSON): 8 messages' worth
    # is room for two or three in flight; reading ahead would hold many more.
    assert grown < 8 * MESSAGE_MIB, (before, after)
