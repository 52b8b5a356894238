"""Soak: thousands of short realtime sessions come and go; does anything stay behind?

    python bench/soak_sessions.py --sessions 5000

Everything but the LM's generation is real and in this process: the app (`create_app`), uvicorn
on loopback, the WebSocket protocol, the realtime session, and the prompt path with SmolLM2's
own tokenizer (`PromptBuilder`, the session's `ContextWindow`, rendering in a worker thread).
The backbone builds the real prompt for every answer, then answers a few words itself (no
engine: the engine is not what this measures, and 5,000 real turns take hours on 2 cores).

Each session: connect, `session.update` (instructions), three text turns answered, one turn of
audio (2 s, committed by hand, transcribed by the stand-in ASR and answered: the session keeps
the user's voice of its newest turn), close. `--concurrency` sessions run at once.

Prints this process's resident memory after a warm-up and at the end, the growth per 1,000
sessions, and tracemalloc's largest growth (by source line) between the two. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import psutil
import uvicorn
import websockets

from voxgate.model import smollm2
from voxgate.model.artifacts import default_home
from voxgate.model.lm import PromptBuilder
from voxgate.model.types import (
    AudioChunk,
    ResponseEnd,
    ResponseOptions,
    ResponseOutput,
    TextDelta,
    Transcription,
    Turn,
    TurnTrace,
    Voice,
)
from voxgate.server.app import create_app
from voxgate.server.settings import Settings

VOICE = Voice("joe", "en_US", 22050)


class PromptOnlyBackbone:
    """The real prompt path (tokenizer, window, thread); a fixed short answer."""

    name = "soak"
    voices = (VOICE,)
    is_healthy = True
    can_reason = False
    follows_instructions = False

    def __init__(self, prompts: PromptBuilder) -> None:
        self.prompts = prompts
        self.prompt_tokens: list[int] = []

    async def check_instructions(self, instructions: str, max_output_tokens: int) -> None:
        await asyncio.to_thread(self.prompts.check_instructions, instructions, max_output_tokens)

    async def transcribe(self, audio: np.ndarray, **options: Any) -> Transcription:
        return Transcription("what is the weather like", len(audio) / 16_000)

    async def synthesize(self, text: str, **options: Any) -> AsyncIterator[AudioChunk]:
        yield AudioChunk(np.zeros(2205, np.float32), VOICE.sample_rate)

    async def summarize(self, summary: str, turns: Sequence[Turn], *, priority: int) -> str:
        return summary

    async def respond(
        self, conversation: Sequence[Turn], options: ResponseOptions, trace: TurnTrace
    ) -> AsyncIterator[ResponseOutput]:
        prompt, start = await asyncio.to_thread(
            self.prompts.build_window,
            options.instructions,
            conversation,
            options.max_output_tokens,
            options.window,
        )
        self.prompt_tokens.append(len(prompt))
        yield TextDelta("It is sunny.")
        yield AudioChunk(np.zeros(2205, np.float32), VOICE.sample_rate)
        yield replace(ResponseEnd("stop", len(prompt), 4), context_start=start)


@asynccontextmanager
async def serving(backbone: PromptOnlyBackbone) -> AsyncIterator[int]:
    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[PromptOnlyBackbone]:
        yield backbone

    settings = Settings(home=default_home(), fetch_missing_models=False, api_key=None)
    app = create_app(settings, backbone_factory=factory)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[sock])


SPEECH = base64.b64encode(
    (np.sin(np.arange(48_000) / 24_000 * 2 * np.pi * 220) * 8000).astype("<i2").tobytes()
).decode()


async def until(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == kind:
            return event
        if event["type"] == "error":
            raise RuntimeError(event["error"])


async def one_session(port: int, n: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime", max_size=None) as ws:
        await until(ws, "session.created")
        update = {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": f"You are assistant number {n}. Be brief.",
                "audio": {"input": {"turn_detection": None}},
            },
        }
        await ws.send(json.dumps(update))
        await until(ws, "session.updated")
        for turn in range(3):
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"Question {turn} of session {n}?"}],
            }
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            await until(ws, "response.done")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": SPEECH}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await until(ws, "conversation.item.done")
        await ws.send(json.dumps({"type": "response.create"}))
        await until(ws, "response.done")


async def run(port: int, count: int, concurrency: int) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await one_session(port, n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6


async def main(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.hf_directory(default_home()))
    backbone = PromptOnlyBackbone(PromptBuilder(tokenizer, context_tokens=1536))
    async with serving(backbone) as port:
        started = time.monotonic()
        await run(port, args.warmup, args.concurrency)
        warm = rss_mb()
        tracemalloc.start(10)
        before = tracemalloc.take_snapshot()
        await run(port, args.sessions, args.concurrency)
        took = time.monotonic() - started
        end = rss_mb()  # after a full collection: what is left is held by something
        after = tracemalloc.take_snapshot()
    growth = after.compare_to(before, "lineno")
    print(
        f"{args.sessions} sessions after {args.warmup} warm-up ({args.concurrency} at a time), "
        f"{took:.0f} s; {len(backbone.prompt_tokens)} prompts built, "
        f"p50 {np.median(backbone.prompt_tokens):.0f} tokens"
    )
    print(
        f"RSS after warm-up {warm:.1f} MB, at the end {end:.1f} MB: "
        f"{(end - warm) / args.sessions * 1000:+.2f} MB per 1,000 sessions"
    )
    total = sum(stat.size_diff for stat in growth)
    print(f"tracemalloc: {total / 1e6:+.2f} MB net over the run; largest growth by line:")
    for stat in growth[: args.top]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks  "
            f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--top", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
