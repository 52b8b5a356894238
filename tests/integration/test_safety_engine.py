"""The safety limits through the real process (cascade backbone, real engine, uvicorn): capped
and cancellable out-of-band responses, idle and old sessions closed, a client secret's session
cap, slow and per-client REST bodies, deep JSON, a foreign `Host`, foreign and many-channel
uploads, and the routes a key guards. The unit tests (tests/unit/test_limits.py,
test_trust.py) check the same rules in-process; these check that the real server applies them.

One server of its own, with short limits (its idle timeout, maximum age and body deadline are
seconds, so the tests that reach them take seconds): about a minute beside the engine's start.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import wave
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest
import websockets
from engine_server import RunningServer, launch
from realtime_helpers import sdk_client
from realtime_wire import text_item

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

IDLE_TIMEOUT_S = 3
MAX_SESSION_S = 8
BODY_TIMEOUT_S = 2
EVENT_TIMEOUT_S = 60
"""A bound on waiting for one server event (a guard against a hang, not a timing claim)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """This module's own server (in place of the shared one of conftest.py), its limits short."""
    env = {
        "VOXGATE_REALTIME__IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        "VOXGATE_REALTIME__MAX_SESSION_S": str(MAX_SESSION_S),
        "VOXGATE_REST__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        # One worker slot: a request served while a slow body is pending shows the body
        # holds none.
        "VOXGATE_REST__MAX_CONCURRENT_REQUESTS": "1",
    }
    with launch(tmp_path_factory, "safety", env) as running:
        yield running


def auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


async def connect(server: RunningServer, key: str | None = None) -> websockets.ClientConnection:
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    return await websockets.connect(server.ws_url, additional_headers=headers, max_size=None)


async def next_event(ws: websockets.ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return json.loads(await ws.recv())


async def closed_with(ws: websockets.ClientConnection) -> tuple[list[str], int | None]:
    """The error codes the server sends until it closes the connection, and its close code."""
    codes = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            event = await next_event(ws)
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    return codes, ws.close_code


# --- realtime ---------------------------------------------------------------------------------


STORY = {
    "conversation": "none",
    "output_modalities": ["text"],
    "max_output_tokens": 300,
    "input": [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a long story about the sea."}],
        }
    ],
}


async def cancel_each(
    conn: Any, event_ids: list[str], refusals: int
) -> tuple[dict[str, str], list[Any]]:
    """Ask for an out-of-band response per event id; cancel each by its id once it is
    created. Returns each response's final status and the errors, once `refusals` errors and
    the end of every response created have come."""
    for event_id in event_ids:
        await conn.response.create(response=STORY, event_id=event_id)
    created: list[str] = []
    done: dict[str, str] = {}
    errors: list[Any] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for event in conn:
            if event.type == "response.created":
                created.append(event.response.id)
                await conn.response.cancel(response_id=event.response.id)
            elif event.type == "response.done":
                done[event.response.id] = event.response.status
            elif event.type == "error":
                errors.append(event.error)
            if len(errors) >= refusals and len(done) == len(event_ids) - refusals:
                break
    assert set(done) == set(created)
    return done, errors


async def test_out_of_band_responses_are_capped_and_cancellable_by_id(server) -> None:
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        assert (await conn.recv()).type == "session.created"
        done, errors = await cancel_each(conn, ["a", "b", "c"], refusals=1)
        assert [(e.code, e.event_id) for e in errors] == [("response_limit_reached", "c")]
        assert list(done.values()) == ["cancelled", "cancelled"]
        # Both places are free again.
        done, errors = await cancel_each(conn, ["d", "e"], refusals=0)
        assert (errors, list(done.values())) == ([], ["cancelled", "cancelled"])


async def test_an_idle_session_is_closed(server) -> None:
    ws = await connect(server)
    assert (await next_event(ws))["type"] == "session.created"
    # Nothing is sent: after IDLE_TIMEOUT_S the server says why and closes normally.
    assert await closed_with(ws) == (["idle_timeout"], 1000)


async def test_a_busy_session_ends_at_its_maximum_age(server) -> None:
    """Short answers one after another: never idle, and still closed at MAX_SESSION_S."""
    ws = await connect(server)
    assert (await next_event(ws))["type"] == "session.created"
    await ws.send(json.dumps(text_item("Say one word.")))
    answer = {
        "type": "response.create",
        "response": {"output_modalities": ["text"], "max_output_tokens": 8},
    }
    answers, codes = 0, []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.send(json.dumps(answer))
            while (event := await next_event(ws))["type"] != "response.done":
                if event["type"] == "error":
                    codes.append(event["error"]["code"])
            answers += 1
    assert (codes, ws.close_code) == (["session_expired"], 1000)
    assert answers >= 2


async def test_a_client_secret_opens_a_bounded_number_of_sessions(server) -> None:
    secret = (await sdk_client(server).realtime.client_secrets.create()).value
    first, second = await connect(server, secret), await connect(server, secret)
    for ws in (first, second):
        assert (await next_event(ws))["type"] == "session.created"
    third = await connect(server, secret)
    assert await closed_with(third) == (["session_limit_reached"], 1013)
    await first.close()
    await second.close()


# --- REST -------------------------------------------------------------------------------------


class RawRequest:
    """An HTTP/1.1 request on its own socket, for what client libraries do not do: a body
    that never comes, a foreign `Host`."""

    def __init__(self, server: RunningServer, head: str, source: str = "127.0.0.1") -> None:
        address = urlsplit(server.base_url)
        self.sock = socket.create_connection(
            (address.hostname, address.port), timeout=EVENT_TIMEOUT_S, source_address=(source, 0)
        )
        self.reader = self.sock.makefile("rb")
        self.sock.sendall(head.encode())

    def response(self) -> tuple[int, dict[str, Any] | None]:
        """The next response's status and JSON body (None for an interim `100 Continue`)."""
        status = int(self.reader.readline().split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, None
        return status, json.loads(self.reader.read(int(headers["content-length"])))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def slow_speech(server: RunningServer, source: str = "127.0.0.1") -> RawRequest:
    """A speech request whose body never comes. It asks for `100 Continue`, which uvicorn
    sends when the app starts to read the body: the request then holds a body slot."""
    host = urlsplit(server.base_url).netloc
    return RawRequest(
        server,
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        source,
    )


SPEECH = {"model": "tts-1", "voice": "joe", "input": "Hi."}


def test_slow_bodies_time_out_and_hold_a_bounded_share(server) -> None:
    """Four slow bodies from one address: its fifth request is refused (429), while another
    address is served (the worker slot is free: bodies are read before one is taken), and
    each slow body ends in 408 after BODY_TIMEOUT_S."""
    slow = []
    try:
        for _ in range(4):  # VOXGATE_REST__MAX_PENDING_BODIES_PER_CLIENT's default
            slow.append(request := slow_speech(server))
            assert request.response() == (100, None)
        fifth = slow_speech(server)
        status, body = fifth.response()
        fifth.close()
        assert (status, body["error"]["code"]) == (429, "rate_limited"), body
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=EVENT_TIMEOUT_S) as other:
            reply = other.post(
                f"{server.base_url}/v1/audio/speech", json=SPEECH, headers=auth(server)
            )
        assert reply.status_code == 200, reply.text
        assert reply.content
        for request in slow:
            status, body = request.response()
            assert (status, body["error"]["code"]) == (408, "request_timeout"), body
    finally:
        for request in slow:
            request.close()
    # The address has its share back.
    reply = httpx.post(f"{server.base_url}/v1/audio/speech", json=SPEECH, headers=auth(server))
    assert reply.status_code == 200, reply.text


def test_deeply_nested_json_is_invalid_json(server) -> None:
    # Deeper than the 64 levels taken, within the size a speech request may have.
    nested = '{"model": "tts-1", "input": ' + "[" * 5000 + "]" * 5000 + "}"
    reply = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        content=nested,
        headers=auth(server) | {"Content-Type": "application/json"},
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_json"


def test_a_foreign_host_is_refused(server) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends its
    own name as `Host`; a loopback server serves only loopback names."""
    reply = httpx.get(
        f"{server.base_url}/v1/models", headers=auth(server) | {"Host": "evil.example"}
    )
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "host_not_allowed"
    handshake = RawRequest(
        server,
        "GET /v1/realtime HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {server.api_key}\r\n\r\n",
    )
    try:
        status, body = handshake.response()
    finally:
        handshake.close()
    assert (status, body["error"]["code"]) == (403, "host_not_allowed")


def wav(channels: int, seconds: float = 1.0, rate: int = 16_000) -> bytes:
    tone = np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.3
    frames = np.repeat((tone * 32767).astype("<i2")[:, None], channels, axis=1)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return out.getvalue()


MIDI = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"


def transcriptions(server: RunningServer) -> float:
    try:
        return server.metric("voxgate_asr_real_time_factor_count", backbone="cascade")
    except KeyError:  # none yet
        return 0.0


@pytest.mark.parametrize(
    ("name", "data", "told"),
    [("song.mid", MIDI, "unsupported audio file format"), ("many.wav", wav(9), "9 channels")],
    ids=["midi", "nine_channels"],
)
def test_foreign_and_many_channel_uploads_are_refused_before_decoding(
    server, name: str, data: bytes, told: str
) -> None:
    """A MIDI file is refused by its first bytes, before any demuxer sees it; a WAV of 9
    channels by its header, before a sample is decoded (server/audio_files.decode_upload).
    Neither reaches the speech recogniser."""
    transcribed = transcriptions(server)
    reply = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions",
        headers=auth(server),
        files={"file": (name, data, "application/octet-stream")},
        data={"model": "whisper-1"},
        timeout=EVENT_TIMEOUT_S,
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "unsupported_format"
    assert told in reply.json()["error"]["message"]
    assert transcriptions(server) == transcribed


@pytest.mark.parametrize("path", ["/metrics", "/v1/models", "/openapi.json"])
def test_the_key_guards_the_routes_that_describe_the_server(server, path: str) -> None:
    assert httpx.get(f"{server.base_url}{path}").status_code == 401
    wrong = {"Authorization": "Bearer not-the-key-0123456789"}
    assert httpx.get(f"{server.base_url}{path}", headers=wrong).status_code == 401
    assert httpx.get(f"{server.base_url}{path}", headers=auth(server)).status_code == 200


def test_the_sdk_is_refused_without_the_key(server) -> None:
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-the-key-0123456789")
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
