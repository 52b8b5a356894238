"""One spoken turn through voxgate with LiveKit Agents (1.8) and `livekit.plugins.openai`'s
`RealtimeModel`, its default settings except the URL and key, no LiveKit room:

- `--mode realtime`: the model's own session, audio pushed into it, the generation read back;
- `--mode agent`: a whole `AgentSession` with in-memory audio input and output;
- `--mode barge-in`: the same `AgentSession` spoken over. The first answer plays until it is
  interrupted (a listener still hearing it). The second question (`--second-wav`) starts once
  that answer is playing and LiveKit's AEC warm-up is over (for the first 3 s of the agent's
  first speech LiveKit sends the model silence in place of the user); LiveKit's interruption
  (its truncate of what was heard, a response.cancel if the response is still running) has
  to run, and the second question has to be answered.

Run in the compat environment (`.venv-compat`, tests/compat/requirements.txt), by
tests/integration/test_frameworks.py:

    .venv-compat/bin/python tests/compat/livekit_turn.py --mode agent \\
        --url http://127.0.0.1:8000/v1 --api-key KEY --wav question.wav --out result.json

The WAV (16-bit mono) goes in as 20 ms frames at real-time pace, then silence.
Writes JSON: the user's transcript, the answer's transcript and seconds of audio, the final
response status, LiveKit's `error` events (`errors`), the server's (`server_errors`), and
every client event the plugin sent but audio, a timeline of the events both ways; in the
AgentSession modes also each user and assistant message, and whether each speech was
interrupted. Exit status 0 when the answer
came whole and nothing failed (the server refusing a cancel that came after the response had
ended is OpenAI's behaviour too, and no failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice import io
from livekit.plugins.openai.realtime import RealtimeModel

FRAME_MS = 20
LATE_CANCEL = "response_cancel_not_active"
"""The server's refusal of a response.cancel that came after the response had ended."""
INSTRUCTIONS = "Answer in one short sentence."
"""The agent's (`Agent` requires some)."""


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
            "response_statuses": [],
            "errors": [],
            "server_errors": [],
            "client_events": [],
            "timeline": [],
            "appends": 0,
            "user_messages": [],
            "assistant_messages": [],
            "speeches_interrupted": [],
            "segments_audio_s": [],
        }
        self.seen: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        """Per server event type: whether one has come."""
        self._start = time.monotonic()

    def note(self, way: str, kind: str) -> None:
        """The timeline of events both ways but audio: seconds since the start, way, type."""
        if kind != "input_audio_buffer.append" and not kind.endswith(".delta"):
            self.result["timeline"].append(f"{time.monotonic() - self._start:7.3f} {way} {kind}")

    def tap(self, session: Any) -> None:
        session.on("openai_client_event_queued", self._sent)
        session.on("openai_server_event_received", self._received)
        session.on("error", self.failed)

    def failed(self, event: Any) -> None:
        """A LiveKit `error` event (the model's session's, or the AgentSession's)."""
        self.result["errors"].append(repr(event.error))

    def _sent(self, event: dict[str, Any]) -> None:
        self.note("sent", event.get("type", ""))
        if event.get("type") == "input_audio_buffer.append":
            self.result["appends"] += 1
        else:
            self.result["client_events"].append(json.loads(json.dumps(event, default=str)))

    async def settled(self) -> None:
        """Until the user's transcript and the response's end have come (either may be last)."""
        for kind in ("conversation.item.input_audio_transcription.completed", "response.done"):
            await self.seen[kind].wait()

    def _received(self, event: dict[str, Any]) -> None:
        self.seen[event.get("type", "")].set()
        self.note("got ", event.get("type", ""))
        match event.get("type"):
            case "error":
                self.result["server_errors"].append(event.get("error"))
            case "response.done":
                self.result["response_status"] = event["response"].get("status")
                self.result["response_statuses"].append(self.result["response_status"])
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
        await asyncio.wait_for(record.settled(), args.timeout)
    except TimeoutError:
        record.result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
    await feeding
    for reader in readers:
        reader.cancel()
    await session.aclose()
    await model.aclose()


class Microphone(io.AudioInput):
    """A live microphone at real-time pace from the first read: the recordings given to it, in
    turn, and silence between them, until closed. Live, as a room's is: the server lays the
    agent's voice out on the input's timeline, which a muted microphone would stop."""

    def __init__(self, items: list[rtc.AudioFrame]) -> None:
        super().__init__(label="microphone")
        self._queue = deque(items)
        self._rate, self._per = items[0].sample_rate, items[0].samples_per_channel
        self._n = 0
        self._start: float | None = None
        self._closed = False

    def say(self, items: list[rtc.AudioFrame]) -> None:
        self._queue.extend(items)

    async def __anext__(self) -> rtc.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._n * FRAME_MS / 1000 - time.monotonic()))
        if self._closed:
            raise StopAsyncIteration
        self._n += 1
        if self._queue:
            return self._queue.popleft()
        return rtc.AudioFrame(bytes(self._per * 2), self._rate, 1, self._per)

    def close(self) -> None:
        self._closed = True


class MemoryOutput(io.AudioOutput):
    """Keeps the answers' audio. A segment "plays" at once (reported finished on flush). With
    `hold_first`, the first one plays from its first frame at real-time pace and on until it
    is cleared: a listener still hearing it when they speak over it. `playing` is set at the
    first frame."""

    def __init__(self, record: Record, hold_first: bool = False) -> None:
        super().__init__(label="memory", capabilities=io.AudioOutputCapabilities(pause=False))
        self._record = record
        self._hold = hold_first
        self._segment_s = 0.0
        self._playing_since = 0.0
        self.playing = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment_s == 0.0:
            self._playing_since = time.monotonic()
            self.on_playback_started(created_at=time.time())
            self.playing.set()
        self._segment_s += frame.duration
        self._record.result["answer_audio_s"] += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._segment_s and not self._hold:
            self._finish(self._segment_s, interrupted=False)

    def clear_buffer(self) -> None:
        if self._segment_s:
            heard = self._segment_s
            if self._hold:
                heard = min(heard, time.monotonic() - self._playing_since)
                self._hold = False
            self._finish(heard, interrupted=True)

    def _finish(self, played: float, interrupted: bool) -> None:
        self._record.result["segments_audio_s"].append(round(self._segment_s, 3))
        self._segment_s = 0.0
        self.on_playback_finished(playback_position=played, interrupted=interrupted)


def tapped_model(args: argparse.Namespace, record: Record) -> RealtimeModel:
    """The plugin's model, its defaults but the URL and key; each session it makes is tapped."""
    model = RealtimeModel(base_url=args.url, api_key=args.api_key)
    make_session = model.session

    def tapped_session(*a: Any, **kw: Any) -> Any:  # AgentSession makes the model's session
        session = make_session(*a, **kw)
        record.tap(session)
        return session

    model.session = tapped_session  # type: ignore[method-assign]
    return model


class WatchedSession(AgentSession):
    """The stock AgentSession, saying when its AEC warm-up is over: for the first 3 s of the
    agent's first speech (LiveKit's default `aec_warmup_duration`) it sends the model silence
    in place of the user, so a barge-in before then is not heard at all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmed_up = asyncio.Event()

    def _on_aec_warmup_expired(self) -> None:
        super()._on_aec_warmup_expired()
        self.warmed_up.set()


def agent_session(
    model: RealtimeModel,
    microphone: Microphone,
    output: MemoryOutput,
    record: Record,
    noted: Callable[[], None] = lambda: None,
) -> WatchedSession:
    """An AgentSession on `model` with in-memory audio; its messages and speeches are noted
    (then `noted` is called)."""
    session = WatchedSession(llm=model)
    session.input.audio = microphone
    session.output.audio = output
    result = record.result

    def on_item(event: Any) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            result["user_messages"].append(item.text_content or "")
        elif isinstance(item, llm.ChatMessage) and item.role == "assistant":
            said = {"text": item.text_content or "", "interrupted": item.interrupted}
            result["assistant_messages"].append(said)
            result["answer_transcript"] = said["text"]
        noted()

    def on_speech(event: Any) -> None:
        n = len(result["speeches_interrupted"])
        result["speeches_interrupted"].append(None)

        def done(handle: Any) -> None:
            result["speeches_interrupted"][n] = handle.interrupted
            noted()

        event.speech_handle.add_done_callback(done)

    session.on("conversation_item_added", on_item)
    session.on("speech_created", on_speech)
    session.on("error", record.failed)
    return session


async def agent_turn(args: argparse.Namespace, record: Record) -> None:
    model = tapped_model(args, record)
    microphone = Microphone(frames(args.wav))
    session = agent_session(model, microphone, MemoryOutput(record), record)
    answered = asyncio.Event()

    def on_item(event: Any) -> None:
        if isinstance(event.item, llm.ChatMessage) and event.item.role == "assistant":
            answered.set()

    session.on("conversation_item_added", on_item)
    await session.start(agent=Agent(instructions=INSTRUCTIONS))
    try:
        await asyncio.wait_for(answered.wait(), args.timeout)
        await asyncio.wait_for(record.settled(), args.timeout)
    except TimeoutError:
        record.result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
    microphone.close()
    await session.aclose()
    await model.aclose()


async def barge_in(args: argparse.Namespace, record: Record) -> None:
    result = record.result
    answered = asyncio.Event()

    def check() -> None:
        # Both questions heard, and the speech after the interrupted one played out whole.
        speeches = result["speeches_interrupted"]
        if len(result["user_messages"]) >= 2 and len(speeches) >= 2 and speeches[-1] is False:
            answered.set()

    model = tapped_model(args, record)
    microphone = Microphone(frames(args.wav))
    output = MemoryOutput(record, hold_first=True)
    session = agent_session(model, microphone, output, record, noted=check)
    await session.start(agent=Agent(instructions=INSTRUCTIONS))
    try:
        await asyncio.wait_for(output.playing.wait(), args.timeout)
        # Over the first answer, while it plays, once LiveKit passes the user's audio on.
        await asyncio.wait_for(session.warmed_up.wait(), args.timeout)
        microphone.say(frames(args.second_wav))
        record.note("mic ", "the second question starts")
        await asyncio.wait_for(answered.wait(), args.timeout)
    except TimeoutError:
        record.result["errors"].append(f"no answer to both questions within {args.timeout:.0f} s")
    microphone.close()
    await session.aclose()
    await model.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=tuple(MODES), required=True)
    parser.add_argument("--url", required=True, help="the server's /v1 base URL")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--wav", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--second-wav", help="--mode barge-in: the question said over the answer")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.mode == "barge-in" and not args.second_wav:
        parser.error("--mode barge-in needs --second-wav")
    record = Record()
    asyncio.run(MODES[args.mode](args, record))
    result = record.result
    result["answer_audio_s"] = round(result["answer_audio_s"], 3)
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1, default=str)
    whole = result["response_status"] == "completed" and result["answer_audio_s"] > 0
    refused = [e for e in result["server_errors"] if (e or {}).get("code") != LATE_CANCEL]
    return 0 if whole and not result["errors"] and not refused else 1


MODES = {"realtime": realtime_turn, "agent": agent_turn, "barge-in": barge_in}


if __name__ == "__main__":
    sys.exit(main())
