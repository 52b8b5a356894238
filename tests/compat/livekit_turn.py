"""One spoken turn through voxgate with LiveKit Agents (1.8) and `livekit.plugins.openai`'s
`RealtimeModel`, its default settings except the URL and key, no LiveKit room:

- `--mode realtime`: the model's own session, audio pushed into it, the generation read back;
- `--mode agent`: a whole `AgentSession` with in-memory audio input and output.

Run in the compat environment (`.venv-compat`, tests/compat/requirements.txt), by
tests/integration/test_frameworks.py:

    .venv-compat/bin/python tests/compat/livekit_turn.py --mode agent \\
        --url http://127.0.0.1:8000/v1 --api-key KEY --wav question.wav --out result.json

The WAV (16-bit mono) goes in as 20 ms frames at real-time pace, then 1.5 s of silence.
Writes JSON: the user's transcript, the answer's transcript and seconds of audio, the final
response status, errors, and every client event the plugin sent but audio. Exit status 0
when the answer came whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice import io
from livekit.plugins.openai.realtime import RealtimeModel

FRAME_MS = 20


def frames(path: str) -> list[rtc.AudioFrame]:
    """The WAV, then 1.5 s of silence, as 20 ms frames at its own rate."""
    with wave.open(path, "rb") as w:
        if (w.getnchannels(), w.getsampwidth()) != (1, 2):
            raise SystemExit(f"{path}: 16-bit mono PCM needed")
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    per = rate * FRAME_MS // 1000
    pcm += bytes(int(1.5 * rate) * 2)
    pcm += bytes(-len(pcm) % (per * 2))
    return [rtc.AudioFrame(pcm[i : i + per * 2], rate, 1, per) for i in range(0, len(pcm), per * 2)]


class Record:
    """What the plugin sent and received, and what came of the turn."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {
            "user_transcript": None,
            "answer_transcript": "",
            "answer_audio_s": 0.0,
            "response_status": None,
            "errors": [],
            "client_events": [],
            "appends": 0,
        }

    def tap(self, session: Any) -> None:
        session.on("openai_client_event_queued", self._sent)
        session.on("openai_server_event_received", self._received)

    def _sent(self, event: dict[str, Any]) -> None:
        if event.get("type") == "input_audio_buffer.append":
            self.result["appends"] += 1
        else:
            self.result["client_events"].append(json.loads(json.dumps(event, default=str)))

    def _received(self, event: dict[str, Any]) -> None:
        match event.get("type"):
            case "error":
                self.result["errors"].append(event.get("error"))
            case "response.done":
                self.result["response_status"] = event["response"].get("status")
            case "conversation.item.input_audio_transcription.completed":
                self.result["user_transcript"] = event.get("transcript")


async def pace(items: list[rtc.AudioFrame], push: Any) -> None:
    start = time.monotonic()
    for n, frame in enumerate(items):
        push(frame)
        await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_MS / 1000 - time.monotonic()))


async def realtime_turn(args: argparse.Namespace, record: Record) -> None:
    model = RealtimeModel(base_url=args.url, api_key=args.api_key)  # defaults otherwise
    session = model.session()
    record.tap(session)
    answered = asyncio.Event()

    async def read(generation: llm.GenerationCreatedEvent) -> None:
        async for message in generation.message_stream:

            async def text(m: llm.MessageGeneration = message) -> None:
                async for delta in m.text_stream:
                    record.result["answer_transcript"] += str(delta)

            async def audio(m: llm.MessageGeneration = message) -> None:
                async for frame in m.audio_stream:
                    record.result["answer_audio_s"] += frame.duration

            await asyncio.gather(text(), audio())
        answered.set()

    readers: list[asyncio.Task[None]] = []
    session.on("generation_created", lambda g: readers.append(asyncio.create_task(read(g))))
    feeding = asyncio.create_task(pace(frames(args.wav), session.push_audio))
    try:
        await asyncio.wait_for(answered.wait(), args.timeout)
    except TimeoutError:
        record.result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
    await feeding
    await asyncio.sleep(1.0)  # the user's transcript may come after the answer
    for reader in readers:
        reader.cancel()
    await session.aclose()
    await model.aclose()


class WavInput(io.AudioInput):
    """The WAV at real-time pace from the first read, then nothing (a muted microphone)."""

    def __init__(self, items: list[rtc.AudioFrame]) -> None:
        super().__init__(label="wav")
        self._items = items
        self._n = 0
        self._start: float | None = None
        self._closed = asyncio.Event()

    async def __anext__(self) -> rtc.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        if self._n >= len(self._items):
            await self._closed.wait()
            raise StopAsyncIteration
        await asyncio.sleep(max(0.0, self._start + self._n * FRAME_MS / 1000 - time.monotonic()))
        self._n += 1
        return self._items[self._n - 1]

    def close(self) -> None:
        self._closed.set()


class MemoryOutput(io.AudioOutput):
    """Keeps the answer's audio; each segment "plays" at once (reported finished on flush)."""

    def __init__(self, record: Record) -> None:
        super().__init__(label="memory", capabilities=io.AudioOutputCapabilities(pause=False))
        self._record = record
        self._segment_s = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment_s == 0.0:
            self.on_playback_started(created_at=time.time())
        self._segment_s += frame.duration
        self._record.result["answer_audio_s"] += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._segment_s:
            played, self._segment_s = self._segment_s, 0.0
            self.on_playback_finished(playback_position=played, interrupted=False)

    def clear_buffer(self) -> None:
        if self._segment_s:
            played, self._segment_s = self._segment_s, 0.0
            self.on_playback_finished(playback_position=played, interrupted=True)


async def agent_turn(args: argparse.Namespace, record: Record) -> None:
    model = RealtimeModel(base_url=args.url, api_key=args.api_key)  # defaults otherwise
    make_session = model.session

    def tapped_session(*a: Any, **kw: Any) -> Any:  # AgentSession makes the model's session
        session = make_session(*a, **kw)
        record.tap(session)
        return session

    model.session = tapped_session  # type: ignore[method-assign]
    audio_in = WavInput(frames(args.wav))
    session: AgentSession = AgentSession(llm=model)
    session.input.audio = audio_in
    session.output.audio = MemoryOutput(record)
    answered = asyncio.Event()

    def on_item(event: Any) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role == "assistant":
            record.result["answer_transcript"] = item.text_content or ""
            answered.set()

    session.on("conversation_item_added", on_item)
    session.on("error", lambda event: record.result["errors"].append(repr(event.error)))
    await session.start(agent=Agent(instructions="Answer in one short sentence."))
    try:
        await asyncio.wait_for(answered.wait(), args.timeout)
    except TimeoutError:
        record.result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
    await asyncio.sleep(1.0)  # the user's transcript may come after the answer
    audio_in.close()
    await session.aclose()
    await model.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("realtime", "agent"), required=True)
    parser.add_argument("--url", required=True, help="the server's /v1 base URL")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--wav", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    record = Record()
    asyncio.run((realtime_turn if args.mode == "realtime" else agent_turn)(args, record))
    result = record.result
    result["answer_audio_s"] = round(result["answer_audio_s"], 3)
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1, default=str)
    whole = result["response_status"] == "completed" and result["answer_audio_s"] > 0
    return 0 if whole and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
