"""One spoken turn through voxgate with pipecat's `OpenAIRealtimeLLMService` (pipecat-ai 1.14),
its default settings except the URL and key, no transport:

    Pipeline([WavSource, OpenAIRealtimeLLMService, AnswerSink])

With `--context`, built as pipecat's own OpenAI realtime examples build an app: an `LLMContext`
(a system message, and the examples' "Say hello!") and its aggregator pair around the service,
and an `LLMRunFrame` at start. pipecat then sets the conversation up itself before the first
answer (conversation.item.create, a second session.update with instructions and tools,
response.create), and the greeting is spoken before the recorded question goes in:

    Pipeline([WavSource, user aggregator, OpenAIRealtimeLLMService, AnswerSink,
              assistant aggregator])

Run in the compat environment (`.venv-compat`, tests/compat/requirements.txt), by
tests/integration/test_frameworks.py:

    .venv-compat/bin/python tests/compat/pipecat_turn.py --url http://127.0.0.1:8000/v1 \\
        --api-key KEY --wav question.wav --out result.json

The WAV (16-bit mono) goes in as 20 ms frames at real-time pace, then 1.5 s of silence; the
server's VAD ends the turn and answers it (pipecat sends no response.create for it). Writes
JSON: the user's transcript, each answer's transcript and seconds of audio (the last one's as
`answer_*`), pipecat's errors, the server's `error` events, and every client event pipecat
sent but audio. Exit status 0 when the answer came and nothing went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import wave
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMRunFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

FRAME_MS = 20
SYSTEM_MESSAGE = "You are a helpful assistant. Answer in one short sentence."
GREETING_REQUEST = "Say hello!"
"""The context of pipecat's realtime examples: they ask for a greeting before the user speaks."""


class Recorder(OpenAIRealtimeLLMService):
    """The stock service, recording the events it sends (audio appends only counted), the
    user's transcripts and every `error` event the server sent."""

    def __init__(self, result: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._result = result

    async def send_client_event(self, event: events.ClientEvent) -> None:
        sent = event.model_dump(exclude_none=True)
        if sent["type"] == "input_audio_buffer.append":
            self._result["appends"] += 1
        else:
            self._result["client_events"].append(sent)
        await super().send_client_event(event)

    async def handle_evt_input_audio_transcription_completed(self, evt: Any) -> None:
        self._result["user_transcript"] = evt.transcript
        await super().handle_evt_input_audio_transcription_completed(evt)

    async def _maybe_handle_evt_retrieve_conversation_item_error(self, evt: Any) -> bool:
        # pipecat 1.14 hands every server `error` event here first, the ones it ignores too.
        self._result["server_errors"].append(evt.error.model_dump(exclude_none=True))
        return await super()._maybe_handle_evt_retrieve_conversation_item_error(evt)


class WavSource(FrameProcessor):
    """A live microphone from the start, at real-time pace: silence until `speak` is set, then
    the WAV, then silence; notes the errors that come back upstream."""

    def __init__(self, pcm: bytes, rate: int, result: dict[str, Any], speak: asyncio.Event) -> None:
        super().__init__()
        self._pcm, self._rate, self._result, self._speak = pcm, rate, result, speak

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame):
            self._result["errors"].append(str(frame.error))
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._feed())

    async def _feed(self) -> None:
        step = self._rate * FRAME_MS // 1000 * 2
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0

        async def say(chunk: bytes) -> None:
            nonlocal sent
            frame = InputAudioRawFrame(audio=chunk, sample_rate=self._rate, num_channels=1)
            await self.push_frame(frame)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * FRAME_MS / 1000 - loop.time()))

        while not self._speak.is_set():
            await say(bytes(step))
        audio = self._pcm + bytes(int(1.5 * self._rate) * 2)
        for at in range(0, len(audio), step):
            await say(audio[at : at + step].ljust(step, b"\0"))


class AnswerSink(FrameProcessor):
    """Keeps each spoken answer's transcript and audio; `done` once the `expected`-th has come
    whole. The answers before it play out at real-time pace from their first audio, with the
    bot-speaking frames a transport's output sends; `heard` is set when one has played out."""

    def __init__(self, result: dict[str, Any], expected: int) -> None:
        super().__init__()
        self._answers: list[dict[str, Any]] = result["answers"]
        self._expected = expected
        self._answer: dict[str, Any] = {"transcript": "", "audio_s": 0.0}
        self._playing_since: float | None = None
        self.heard = asyncio.Event()
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        played = len(self._answers) + 1 < self._expected
        if isinstance(frame, TTSAudioRawFrame):
            if self._playing_since is None:
                self._playing_since = asyncio.get_running_loop().time()
                if played:
                    await self.broadcast_frame(BotStartedSpeakingFrame)
            seconds = len(frame.audio) / (2 * frame.sample_rate * frame.num_channels)
            self._answer["audio_s"] += seconds
        elif isinstance(frame, TTSTextFrame):
            self._answer["transcript"] += frame.text
        elif isinstance(frame, LLMFullResponseEndFrame) and self._answer["audio_s"]:
            assert self._playing_since is not None
            self._answers.append(self._answer)
            if played:
                self.create_task(self._play_out(self._playing_since + self._answer["audio_s"]))
            else:
                self.done.set()
            self._answer = {"transcript": "", "audio_s": 0.0}
            self._playing_since = None
        await self.push_frame(frame, direction)

    async def _play_out(self, ends_at: float) -> None:
        # The speaker's clock: the answer has been heard when its audio has played.
        await asyncio.sleep(max(0.0, ends_at - asyncio.get_running_loop().time()))
        await self.broadcast_frame(BotStoppedSpeakingFrame)
        self.heard.set()


async def turn(args: argparse.Namespace) -> dict[str, Any]:
    with wave.open(args.wav, "rb") as w:
        if (w.getnchannels(), w.getsampwidth()) != (1, 2):
            raise SystemExit(f"{args.wav}: 16-bit mono PCM needed")
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    result: dict[str, Any] = {
        "user_transcript": None,
        "answers": [],
        "errors": [],
        "server_errors": [],
        "client_events": [],
        "appends": 0,
    }
    url = args.url.replace("http", "ws", 1).rstrip("/") + "/realtime"
    service = Recorder(result, api_key=args.api_key, base_url=url)  # defaults otherwise
    if args.context:
        context = LLMContext(
            [
                {"role": "system", "content": SYSTEM_MESSAGE},
                {"role": "developer", "content": GREETING_REQUEST},
            ]
        )
        user_aggregator, assistant_aggregator = LLMContextAggregatorPair(context)
        sink = AnswerSink(result, expected=2)  # the greeting, then the answer
        # The user speaks once the greeting has been heard, as a caller would.
        source = WavSource(pcm, rate, result, speak=sink.heard)
        processors = [source, user_aggregator, service, sink, assistant_aggregator]
    else:
        sink = AnswerSink(result, expected=1)
        speak = asyncio.Event()
        speak.set()
        source = WavSource(pcm, rate, result, speak)
        processors = [source, service, sink]
    worker = PipelineWorker(Pipeline(processors), enable_rtvi=False, idle_timeout_secs=None)

    async def finish() -> None:
        try:
            await asyncio.wait_for(sink.done.wait(), args.timeout)
        except TimeoutError:
            result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    if args.context:
        await worker.queue_frames([LLMRunFrame()])  # as the examples kick the conversation off
    finishing = asyncio.create_task(finish())
    await asyncio.wait_for(runner.run(), args.timeout + 30)
    await finishing
    last = result["answers"][-1] if result["answers"] else {"transcript": "", "audio_s": 0.0}
    result["answer_transcript"] = last["transcript"]
    result["answer_audio_s"] = round(last["audio_s"], 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the server's /v1 base URL")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--wav", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--context", action="store_true", help="an LLMContext and its aggregators, as apps have"
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(turn(args))
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    failed = result["errors"] or result["server_errors"]
    return 0 if result["answer_audio_s"] > 0 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
