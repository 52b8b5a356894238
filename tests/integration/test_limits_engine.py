"""Limits through the real server (cascade backbone, real tokenizer and engine): instructions
counted in the model's own tokens when they are set, the report's "one session stalls
everyone" payloads refused while another connection is served, the browser boundary and deep
JSON on the real process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
import websockets
from realtime_wire import text_item

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

MEGABYTES_3_5 = int(3.5 * (1 << 20))


async def connect(server: Any, **kwargs: Any) -> websockets.ClientConnection:
    headers = {"Authorization": f"Bearer {server.api_key}"} | kwargs.pop("headers", {})
    ws = await websockets.connect(
        server.ws_url, additional_headers=headers, max_size=None, **kwargs
    )
    assert json.loads(await ws.recv())["type"] == "session.created"
    return ws


async def until(ws: websockets.ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(180):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
            if kind != "error" and event["type"] == "error":
                raise AssertionError(event)


async def error_of(ws: websockets.ClientConnection, event: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(event | {"event_id": "evt_probe"}))
    return (await until(ws, "error"))["error"]


async def text_answer(ws: websockets.ClientConnection) -> dict[str, Any]:
    await ws.send(
        json.dumps(
            {
                "type": "response.create",
                "response": {"output_modalities": ["text"], "max_output_tokens": 16},
            }
        )
    )
    return (await until(ws, "response.done"))["response"]


def test_instructions_are_counted_in_the_models_tokens_when_set(server) -> None:
    async def scenario() -> None:
        ws = await connect(server)
        # ~2,000 tokens of SmolLM2's tokenizer: under the character cap, over the context.
        rules = " ".join(f"Rule {i}: be brief." for i in range(400))
        update = {"type": "session.update", "session": {"type": "realtime", "instructions": rules}}
        error = await error_of(ws, update)
        assert (error["code"], error["param"]) == (
            "context_length_exceeded",
            "session.instructions",
        ), error
        assert "tokens" in error["message"]
        update["session"]["instructions"] = "x" * 40_000
        error = await error_of(ws, update)
        assert error["code"] == "string_above_max_length"
        # Still the old instructions, and the session answers through the engine.
        assert (await text_answer(ws))["status"] in ("completed", "incomplete")
        await ws.close()

    asyncio.run(scenario())


class HealthProbe(threading.Thread):
    """GETs /health on its own connection, one after another, until stopped. A failed probe
    (an exception, a status other than 200) is kept with its time, not lost with the thread."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop = threading.Event()
        self.answered = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = http.get(f"{self.base_url}/health").status_code
                except httpx.HTTPError as error:
                    status = f"{type(error).__name__}: {error}"
                took = time.monotonic() - started
                if status == 200:
                    self.latencies.append(took)
                    self.answered.set()
                elif len(self.failures) < 20:
                    self.failures.append(f"{status} after {took:.3f} s")


def test_megabytes_of_text_are_refused_while_others_are_served(server) -> None:
    """The report: 3.5 MB of instructions and three 3.5 MB items, then response.create, once
    stalled every connection of the server for seconds. Each is now refused by its own cap,
    parsed off the event loop, while /health keeps answering on another connection."""

    async def scenario() -> list[str]:
        ws = await connect(server)
        huge = "a" * MEGABYTES_3_5
        codes = []
        await ws.send(
            json.dumps(
                {"type": "session.update", "session": {"type": "realtime", "instructions": huge}}
            )
        )
        codes.append((await until(ws, "error"))["error"]["code"])
        for _ in range(3):
            await ws.send(json.dumps(text_item(huge)))
            codes.append((await until(ws, "error"))["error"]["code"])
        response = await text_answer(ws)
        assert response["status"] in ("completed", "incomplete"), response
        await ws.close()
        return codes

    probe = HealthProbe(server.base_url)
    probe.start()
    # The probe's connection is open and answered before the megabytes start.
    assert probe.answered.wait(timeout=30), probe.failures
    try:
        codes = asyncio.run(scenario())
    finally:
        probe.stop.set()
        probe.join(timeout=60)
    assert codes == ["string_above_max_length"] * 4
    assert not probe.is_alive(), "a /health probe still waits, 60 s after the scenario ended"
    assert not probe.failures, probe.failures
    slowest = max(probe.latencies)
    print(f"\n/health during the megabytes: {len(probe.latencies)} probes, slowest {slowest:.3f} s")
    # A hang check, not a timing claim: before the fix it did not answer within 5 s.
    assert slowest < 5.0


def test_the_real_process_refuses_foreign_pages_and_deep_json(server) -> None:
    async def scenario() -> None:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(server, headers={"Origin": "http://evil.example"})
        assert refused.value.response.status_code == 403
        ws = await connect(server)
        await ws.send('{"type":"session.update","session":' + "[" * 100_000 + "]" * 100_000 + "}")
        assert (await until(ws, "error"))["error"]["code"] == "invalid_json"
        remote = {
            "type": "function",
            "name": "fetch",
            "parameters": {"$ref": "http://169.254.169.254/latest/meta-data"},
        }
        update = {"type": "session.update", "session": {"type": "realtime", "tools": [remote]}}
        assert (await error_of(ws, update))["code"] == "invalid_value"
        assert (await text_answer(ws))["status"] in ("completed", "incomplete")
        await ws.close()

    asyncio.run(scenario())
    speech = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        content=json.dumps({"model": "tts-1", "voice": "joe", "input": "Hi."}),
        headers={
            "Origin": "http://evil.example",
            "Content-Type": "text/plain",
            "Authorization": f"Bearer {server.api_key}",
        },
    )
    assert speech.status_code == 403
    assert speech.json()["error"]["code"] == "origin_not_allowed"
