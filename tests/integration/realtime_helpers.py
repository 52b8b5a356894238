"""Realtime sessions with a real server through the official SDK: speech streamed in, each turn's
events collected and checked, answers talked over; polling for server-side state."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI
from realtime_wire import SERVER_EVENT, text_item

from voxgate.streaming.audio import AudioFormat

ANSWER_TIMEOUT_S = 180


@dataclass
class WireTurn:
    """What one response looked like on the wire."""

    types: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)

    def first(self, type_: str) -> dict[str, Any]:
        return next(e for e in self.events if e["type"] == type_)

    def all(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def summary(self) -> str:
        """For failure messages: how many of each event, the errors, the seconds of audio."""
        counts = Counter(self.types)
        return (
            f"events {dict(counts)}; errors {self.all('error')}; "
            f"{len(self.audio) / 2 / AudioFormat.PCM.sample_rate:.1f} s of audio"
        )


async def collect(connection: Any, until: str = "response.done") -> WireTurn:
    """Read SDK events until `until`; each must validate against the SDK's own types."""
    turn = WireTurn()

    async def read() -> None:
        async for event in connection:
            wire = event.to_dict()
            if not event.type.startswith("voxgate."):  # documented extension events
                SERVER_EVENT.validate_python(wire)
            turn.types.append(event.type)
            if event.type == "response.output_audio.delta":
                turn.audio += base64.b64decode(event.delta)
                wire = {"type": event.type, "response_id": event.response_id}
            turn.events.append(wire)
            if event.type == until:
                return

    await asyncio.wait_for(read(), ANSWER_TIMEOUT_S)
    return turn


async def stream_speech(connection: Any, pcm: bytes, *, realtime: bool) -> None:
    """Append `pcm` in random 20-100 ms chunks, at real-time pace if asked."""
    rng = random.Random(7)
    start, sent = time.monotonic(), 0
    while sent < len(pcm):
        size = rng.randrange(20, 101) * 48  # 48 bytes per ms of 24 kHz pcm16
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(pcm[sent : sent + size]).decode()
        )
        sent += size
        if realtime:
            await asyncio.sleep(max(0.0, start + sent / 48_000 - time.monotonic()))


async def answer_to(connection: Any, pcm: bytes, *, realtime: bool) -> WireTurn:
    """Stream `pcm` (see `stream_speech`) while reading the answer it gets, up to its
    `response.done`."""
    sender = asyncio.create_task(stream_speech(connection, pcm, realtime=realtime))
    turn = await collect(connection)
    await sender
    return turn


async def start_an_answer_to_interrupt(
    connection: Any, prompt: str, max_output_tokens: int
) -> None:
    """Ask for a long text-prompted answer, with the VAD on but not answering by itself, so a
    barge-in test can talk over it and count exactly one engine request."""
    await connection.session.update(
        session={
            "type": "realtime",
            "max_output_tokens": max_output_tokens,
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": False,
                        # One engine request to count: no early transcription of the pause.
                        "x_voxgate": {"speculative_start_ms": 0},
                    }
                }
            },
        }
    )
    await connection.send(text_item(prompt))
    await connection.response.create()


@dataclass
class Interruption:
    turn: WireTurn
    """Events from the user's first words to the interrupted response's `response.done`."""
    generated_tokens: float
    """Tokens the engine wrote for the answer, counted from before it was asked for."""


async def talk_over_an_answer(
    server: Any,
    speech: bytes,
    prompt: str,
    *,
    max_output_tokens: int,
    after: str,
    attempts: int = 3,
) -> Interruption:
    """Ask for a long answer and, once `after` arrives, send `speech` (prepared beforehand) as
    fast as the socket takes it, until a barge-in lands while the engine is still generating.

    An attempt can show an engine abort only if the engine had not finished the answer yet. On
    a loaded machine, or with a model that may stop after a few hundred tokens (the random tiny
    checkpoint), it sometimes has; that attempt is repeated, up to `attempts` in all."""
    for _ in range(attempts):
        finished_before = _finished_requests(server)
        generated_before = server.metric("vllm:generation_tokens_total")
        async with sdk_client(server).realtime.connect(model="voxgate") as conn:
            await start_an_answer_to_interrupt(conn, prompt, max_output_tokens)
            await collect(conn, until=after)
            await stream_speech(conn, speech, realtime=False)
            turn = await collect(conn)
        assert await eventually(lambda: server.metric("vllm:num_requests_running") == 0)
        if _finished_requests(server) == finished_before:  # the answer's request never finished
            generated = server.metric("vllm:generation_tokens_total") - generated_before
            return Interruption(turn, generated)
    raise AssertionError(
        f"the engine finished the answer by itself in each of {attempts} attempts: the "
        f"barge-in landed too late or did not abort it "
        f"(last: {turn.summary()})\n{server.log_tail()}"
    )


def _finished_requests(server: Any) -> float:
    """Engine requests that ended by themselves (a stop token or the length limit)."""
    return server.metric("vllm:request_success_total", finished_reason="stop") + server.metric(
        "vllm:request_success_total", finished_reason="length"
    )


def sdk_client(server: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)


async def eventually(check: Any, timeout_s: float = 10.0) -> bool:
    """Poll server-side state that has no event to wait on (metrics), up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.2)
    return check()
