"""The real app (`create_app`) over a fake backbone: /v1/realtime, auth, limits and HTTP routes.

Most tests drive the app with Starlette's `TestClient`; the last ones run a real uvicorn server
on a free port and talk to it with the official `openai` SDK.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import websockets
from fakes import FakeBackbone
from fastapi import FastAPI
from fastapi.testclient import TestClient
from in_process import TEST_KEY, app_over, pcm, serving
from openai import AsyncOpenAI
from pydantic import SecretStr
from realtime_wire import receive, receive_until, text_item
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from voxgate.model.types import Role, Turn
from voxgate.server.settings import RealtimeSettings
from voxgate.streaming import audio
from voxgate.streaming.audio import AudioFormat

pytestmark = pytest.mark.timeout(30)

MAX_EVENT_BYTES = 8192


def app_for(fake: FakeBackbone, **overrides: Any) -> FastAPI:
    """The app with this file's cap on event size (and `realtime` settings)."""
    realtime = {"max_event_bytes": MAX_EVENT_BYTES} | overrides.pop("realtime", {})
    return app_over(fake, realtime=RealtimeSettings(**realtime), **overrides)


@pytest.fixture
def app(fake: FakeBackbone) -> FastAPI:
    return app_for(fake)


# --- the wire -------------------------------------------------------------------------------


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def collapsed(events: list[dict[str, Any]]) -> list[str]:
    """Event types with each run of response deltas shown once, as "deltas"."""
    names = ["deltas" if t.endswith(".delta") else t for t in types(events)]
    return [name for i, name in enumerate(names) if i == 0 or name != names[i - 1]]


def still_works(ws: WebSocketTestSession, note: str = "still here") -> None:
    """The connection still answers: a session.update first, then a whole text response."""
    ws.send_json({"type": "session.update", "session": {"type": "realtime", "instructions": note}})
    (updated,) = receive_until(ws, "session.updated")
    assert updated["session"]["instructions"] == note
    ws.send_json(text_item("are you there?"))
    ws.send_json({"type": "response.create"})
    done = receive_until(ws, "response.done")[-1]
    assert done["response"]["status"] == "completed"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def appends(data: bytes, ms: int = 40) -> list[dict[str, Any]]:
    return [
        {"type": "input_audio_buffer.append", "audio": b64(piece)}
        for piece in audio.iter_slices(data, AudioFormat.PCM, ms)
    ]


# --- a conversation -------------------------------------------------------------------------


def test_session_created_describes_the_defaults(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        created = receive(ws)
    session = created["session"]
    assert created["type"] == "session.created"
    assert session["model"] == "voxgate-fake"
    assert session["id"].startswith("sess_")
    assert session["audio"]["output"]["voice"] == "joe"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["transcription"] == {
        "model": "voxgate-fake",
        "language": None,
        "prompt": None,
    }


def test_text_turn(ws: WebSocketTestSession, fake: FakeBackbone) -> None:
    ws.send_json(text_item("hi") | {"event_id": "evt_1"})
    ws.send_json({"type": "response.create"})
    got = receive_until(ws, "response.done")
    assert collapsed(got) == [
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "deltas",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    created, done = got[2]["response"], got[-1]["response"]
    # response.created describes the response as it was created, whatever followed.
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert got[3]["item"]["status"] == "in_progress"
    assert got[3]["item"]["content"] == []
    assert done["id"] == created["id"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0] == {
        "type": "output_audio",
        "transcript": fake.reply_text,
    }
    assert done["usage"]["total_tokens"] == 18
    transcript = "".join(e["delta"] for e in got if e["type"].endswith("transcript.delta"))
    assert transcript == fake.reply_text
    sent = b"".join(base64.b64decode(e["delta"]) for e in got if e["type"].endswith("audio.delta"))
    assert abs(len(sent) // 2 - 4800) <= 4
    assert fake.respond_calls[0].conversation == [Turn(Role.USER, "hi")]


def test_speech_turn(ws: WebSocketTestSession, fake: FakeBackbone, speak) -> None:
    speech = speak("Hello there, how are you today?")
    samples = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(16000, np.float32)])
    for event in appends(pcm(samples)):
        ws.send_json(event)
    got = receive_until(ws, "response.done")
    assert types(got)[:7] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.done",
        "response.created",
    ]
    assert got[4]["transcript"] == "hello"
    assert got[0]["item_id"] == got[2]["item_id"] == got[4]["item_id"]
    done = got[-1]
    assert done["response"]["status"] == "completed"
    timings = done["x_voxgate"]["timings_ms"]
    assert {"end_of_turn_wait", "asr", "turn_latency"} <= timings.keys()
    # The test sends faster than real time, so the spans are short but in order.
    assert 0 <= timings["end_of_turn_wait"] <= timings["turn_latency"]


def test_barge_in_over_the_socket(client: TestClient, fake: FakeBackbone, speak) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    speech = speak("Hello there, how are you today?")
    with client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        for event in appends(pcm(np.concatenate([speech, np.zeros(16000, np.float32)]))):
            ws.send_json(event)
        receive_until(ws, "response.output_audio.delta")
        for event in appends(pcm(speech)):
            ws.send_json(event)
        got = receive_until(ws, "response.done")
    assert "input_audio_buffer.speech_started" in types(got)
    assert got[-1]["response"]["status"] == "cancelled"
    assert got[-1]["response"]["status_details"]["reason"] == "turn_detected"
    assert fake.respond_calls[0].stopped_early


def test_client_cancel_over_the_socket(ws: WebSocketTestSession, fake: FakeBackbone) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    ws.send_json(text_item("hi"))
    ws.send_json({"type": "response.create"})
    created = receive_until(ws, "response.created")[-1]["response"]
    ws.send_json({"type": "response.cancel", "response_id": created["id"]})
    done = receive_until(ws, "response.done")[-1]["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "client_cancelled")


def test_cancel_straight_after_create(ws: WebSocketTestSession) -> None:
    """Whichever wins the race, the response ends properly and the session is free again."""
    ws.send_json(text_item("hi"))
    ws.send_json({"type": "response.create"})
    ws.send_json({"type": "response.cancel", "event_id": "evt_cancel"})
    done = receive_until(ws, "response.done")[-1]["response"]
    if done["status"] == "completed":  # it finished before the cancel arrived
        error = receive(ws)["error"]
        assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_cancel")
    else:
        assert (done["status"], done["status_details"]["reason"]) == (
            "cancelled",
            "client_cancelled",
        )
    still_works(ws)


def test_conversation_item_events(ws: WebSocketTestSession) -> None:
    ws.send_json(text_item("one") | {"item": text_item("one")["item"] | {"id": "item_one"}})
    receive_until(ws, "conversation.item.done")
    ws.send_json({"type": "conversation.item.retrieve", "item_id": "item_one"})
    (retrieved,) = receive_until(ws, "conversation.item.retrieved")
    assert retrieved["item"]["content"] == [{"type": "input_text", "text": "one"}]
    ws.send_json({"type": "conversation.item.delete", "item_id": "item_one"})
    (deleted,) = receive_until(ws, "conversation.item.deleted")
    assert deleted["item_id"] == "item_one"


# --- bad input: an error event, and the connection carries on --------------------------------


def send_text(text: str) -> Callable[[WebSocketTestSession], None]:
    return lambda ws: ws.send_text(text)


def send_json(event: Any) -> Callable[[WebSocketTestSession], None]:
    return lambda ws: ws.send_json(event)


BAD_INPUT: dict[str, tuple[Callable[[WebSocketTestSession], None], str, str | None, str | None]] = {
    # name: (send, code, param, event_id echoed)
    "malformed json": (send_text('{"type": "session.update",'), "invalid_json", None, None),
    "non-object json": (send_text("[1, 2, 3]"), "invalid_event", None, None),
    "json string": (send_text('"hello"'), "invalid_event", None, None),
    "missing type": (
        send_json({"event_id": "evt_1"}),
        "missing_required_parameter",
        "type",
        "evt_1",
    ),
    "type not a string": (send_json({"type": 7}), "missing_required_parameter", "type", None),
    "unknown type": (
        send_json({"type": "session.destroy", "event_id": "evt_42"}),
        "unknown_event_type",
        "type",
        "evt_42",
    ),
    "unknown field": (
        send_json({"type": "input_audio_buffer.commit", "event_id": "evt_2", "force": True}),
        "unknown_parameter",
        "force",
        "evt_2",
    ),
    "nested unknown field": (
        send_json({"type": "session.update", "session": {"type": "realtime", "voice": "joe"}}),
        "unknown_parameter",
        "session.voice",
        None,
    ),
    "wrong type": (
        send_json({"type": "input_audio_buffer.append", "audio": 12}),
        "invalid_type",
        "audio",
        None,
    ),
    "invalid base64": (
        send_json({"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e"}),
        "invalid_audio",
        "audio",
        "e",
    ),
    "odd-length pcm16": (
        send_json({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x01\x02")}),
        "invalid_audio",
        "audio",
        None,
    ),
    "empty audio": (
        send_json({"type": "input_audio_buffer.append", "audio": ""}),
        "invalid_audio",
        "audio",
        None,
    ),
    "oversized message": (
        send_json({"type": "input_audio_buffer.append", "audio": b64(bytes(MAX_EVENT_BYTES))}),
        "message_too_large",
        None,
        None,
    ),
    "binary frame": (
        lambda ws: ws.send_bytes(b'{"type": "response.create"}'),
        "invalid_event",
        None,
        None,
    ),
    "commit of an empty buffer": (
        send_json({"type": "input_audio_buffer.commit", "event_id": "evt_3"}),
        "input_audio_buffer_commit_empty",
        None,
        "evt_3",
    ),
    "cancel without a response": (
        send_json({"type": "response.cancel", "event_id": "evt_4"}),
        "response_cancel_not_active",
        None,
        "evt_4",
    ),
    "unknown voice": (
        send_json(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}},
            }
        ),
        "invalid_value",
        "session.audio.output.voice",
        None,
    ),
    "rate other than 24 kHz": (
        send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                },
            }
        ),
        "invalid_value",
        "session.audio.input.format.rate",
        None,
    ),
    "vad threshold the VAD cannot take": (
        send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0}}},
                },
            }
        ),
        "invalid_value",
        "session",
        None,
    ),
    "delete of an unknown item": (
        send_json({"type": "conversation.item.delete", "item_id": "item_nope"}),
        "item_delete_invalid_item_id",
        "item_id",
        None,
    ),
    "unsupported: mcp tools": (
        send_json(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [{"type": "mcp", "server_label": "s"}]},
            }
        ),
        "unsupported_feature",
        "session.tools[0].type",
        None,
    ),
    "bad semantic_vad eagerness": (
        send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}
                    },
                },
            }
        ),
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
        None,
    ),
    "truncate of an unknown item": (
        send_json(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_1",
                "content_index": 0,
                "audio_end_ms": 10,
            }
        ),
        "item_truncate_invalid_item_id",
        "item_id",
        None,
    ),
    "unsupported: output_audio_buffer.clear": (
        send_json({"type": "output_audio_buffer.clear"}),
        "unsupported_feature",
        "type",
        None,
    ),
    "function output for a call that was never made": (
        send_json(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
            }
        ),
        "invalid_value",
        "item.call_id",
        None,
    ),
    "a tool without a name": (
        send_json({"type": "response.create", "response": {"tools": [{"type": "function"}]}}),
        "missing_required_parameter",
        "response.tools[0].name",
        None,
    ),
}


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_is_reported_and_the_connection_carries_on(
    ws: WebSocketTestSession, fake: FakeBackbone, name: str
) -> None:
    send, code, param, event_id = BAD_INPUT[name]
    send(ws)
    error = receive(ws)  # the very next event is the error
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (
        code,
        param,
        event_id,
    )
    assert error["error"]["message"]
    still_works(ws)
    assert len(fake.respond_calls) == 1  # the bad event never reached the backbone


def test_many_bad_inputs_in_a_row(ws: WebSocketTestSession) -> None:
    for name, (send, code, _, _) in BAD_INPUT.items():
        send(ws)
        error = receive(ws)
        assert (error["type"], error["error"]["code"]) == ("error", code), name
    still_works(ws)


def test_second_response_while_one_runs(ws: WebSocketTestSession, fake: FakeBackbone) -> None:
    fake.reply, fake.chunk_delay_s = ["word "] * 500, 0.02
    ws.send_json(text_item("hi"))
    ws.send_json({"type": "response.create"})
    receive_until(ws, "response.created")
    ws.send_json({"type": "response.create", "event_id": "evt_again"})
    error = receive_until(ws, "error")[-1]["error"]
    assert (error["code"], error["event_id"]) == (
        "conversation_already_has_active_response",
        "evt_again",
    )
    ws.send_json({"type": "response.cancel"})
    assert receive_until(ws, "response.done")[-1]["response"]["status"] == "cancelled"


# --- auth and limits ------------------------------------------------------------------------


@pytest.fixture
def keyed(fake: FakeBackbone) -> Iterator[TestClient]:
    with TestClient(app_for(fake, api_key=SecretStr(TEST_KEY))) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "connect"),
    [
        ("/v1/realtime", {}),
        ("/v1/realtime?api_key=wrong", {}),
        ("/v1/realtime", {"headers": {"Authorization": "Bearer wrong"}}),
        ("/v1/realtime", {"subprotocols": ["realtime", "openai-insecure-api-key.wrong"]}),
    ],
    ids=["no key", "wrong query key", "wrong bearer", "wrong subprotocol key"],
)
def test_without_the_key_the_socket_is_refused(
    keyed: TestClient, path: str, connect: dict[str, Any]
) -> None:
    with keyed.websocket_connect(path, **connect) as ws:
        error = receive(ws)
        assert (error["type"], error["error"]["code"]) == ("error", "invalid_api_key")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


@pytest.mark.parametrize(
    ("path", "connect"),
    [
        ("/v1/realtime", {"headers": {"Authorization": f"Bearer {TEST_KEY}"}}),
        (f"/v1/realtime?api_key={TEST_KEY}", {}),
        ("/v1/realtime", {"subprotocols": ["realtime", f"openai-insecure-api-key.{TEST_KEY}"]}),
    ],
    ids=["bearer", "query", "subprotocol"],
)
def test_the_key_opens_the_socket(keyed: TestClient, path: str, connect: dict[str, Any]) -> None:
    with keyed.websocket_connect(path, **connect) as ws:
        assert receive(ws)["type"] == "session.created"
        if "subprotocols" in connect:
            assert ws.accepted_subprotocol == "realtime"
        still_works(ws)


def test_session_limit(fake: FakeBackbone) -> None:
    with TestClient(app_for(fake, realtime={"max_sessions": 1})) as client:
        with client.websocket_connect("/v1/realtime") as first:
            assert receive(first)["type"] == "session.created"
            assert client.get("/ready").json()["realtime_sessions"] == 1
            with client.websocket_connect("/v1/realtime") as second:
                error = receive(second)
                assert (error["type"], error["error"]["code"]) == ("error", "session_limit_reached")
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
            assert closed.value.code == 1013
            still_works(first)  # the refused one did not disturb the first
        # The first session's slot is free again once it has gone.
        with client.websocket_connect("/v1/realtime") as third:
            assert receive(third)["type"] == "session.created"


# --- HTTP routes ----------------------------------------------------------------------------


def test_http_routes(client: TestClient, fake: FakeBackbone) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "backbone": "fake", "realtime_sessions": 0}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["voxgate-fake"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "python_info" in metrics.text
    fake.is_healthy = False
    unready = client.get("/ready")
    assert (unready.status_code, unready.json()) == (503, {"status": "unavailable"})


# --- a real server and the official SDK -----------------------------------------------------


async def sdk_events_until(connection: Any, kind: str) -> list[Any]:
    got = []
    async with asyncio.timeout(15):
        async for event in connection:
            got.append(event)
            if event.type == kind:
                return got
    raise AssertionError(f"the connection ended before {kind}")


async def test_official_sdk_against_a_real_server(fake: FakeBackbone, speak) -> None:
    speech = speak("Hello there, how are you today?")
    samples = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(16000, np.float32)])
    app = app_for(fake, api_key=SecretStr(TEST_KEY), realtime={"max_event_bytes": 4 << 20})
    async with serving(app) as port:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TEST_KEY)
        async with client, client.realtime.connect(model="voxgate-fake") as connection:
            created = (await sdk_events_until(connection, "session.created"))[-1]
            assert created.session.model == "voxgate-fake"
            await connection.session.update(
                session={
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                }
            )
            updated = (await sdk_events_until(connection, "session.updated"))[-1]
            assert updated.session.audio.input.transcription.model == "whisper-1"

            # A spoken turn, in 100 ms appends, answered by server VAD.
            for piece in audio.iter_slices(pcm(samples), AudioFormat.PCM, 100):
                await connection.input_audio_buffer.append(audio=b64(piece))
            got = await sdk_events_until(connection, "response.done")
            kinds = [e.type for e in got]
            assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index(
                "response.created"
            )
            transcribed = next(
                e for e in got if e.type == "conversation.item.input_audio_transcription.completed"
            )
            assert transcribed.transcript == "hello"
            assert got[-1].response.status == "completed"

            # A typed turn and a text-only answer.
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                }
            )
            await connection.response.create(response={"output_modalities": ["text"]})
            got = await sdk_events_until(connection, "response.done")
            text = "".join(e.delta for e in got if e.type == "response.output_text.delta")
            assert text == fake.reply_text
            assert not [e for e in got if e.type == "response.output_audio.delta"]

            # A bad event is answered with an error; the connection stays.
            await connection.send_raw('{"type": "nope", "event_id": "evt_bad"}')
            error = (await sdk_events_until(connection, "error"))[-1]
            assert (error.error.code, error.error.event_id) == ("unknown_event_type", "evt_bad")
    assert [c.conversation[-1] for c in fake.respond_calls] == [
        Turn(Role.USER, "hello"),
        Turn(Role.USER, "hi"),
    ]


async def test_real_server_refuses_a_missing_key(fake: FakeBackbone) -> None:
    async with serving(app_for(fake, api_key=SecretStr(TEST_KEY))) as port:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["error"]["code"] == "invalid_api_key"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1008


def test_openai_voice_names_are_aliases_of_the_default_voice(client, fake) -> None:
    with client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        update = {"type": "realtime", "audio": {"output": {"voice": "marin"}}}
        ws.send_json({"type": "session.update", "session": update})
        updated = receive_until(ws, "session.updated")[-1]
        assert updated["session"]["audio"]["output"]["voice"] == "marin"  # the client's name
        ws.send_json(text_item("hello"))
        ws.send_json(
            {"type": "response.create", "response": {"audio": {"output": {"voice": "ash"}}}}
        )
        done = receive_until(ws, "response.done")[-1]
        assert done["response"]["status"] == "completed"
        assert fake.respond_calls[-1].options.voice == "joe"  # the voice it stands for
        ws.send_json(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}},
            }
        )
        error = receive_until(ws, "error")[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "session.audio.output.voice")
        assert "alloy" in error["message"] and "joe" in error["message"]
