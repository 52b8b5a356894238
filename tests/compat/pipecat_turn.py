"""One spoken turn through voxgate with pipecat's `OpenAIRealtimeLLMService` (pipecat-ai 1.14),
its default settings except the URL and key, no transport:

    Pipeline([WavSource, OpenAIRealtimeLLMService, AnswerSink])

Run in the compat environment (`.venv-compat`, tests/compat/requirements.txt), by
tests/integration/test_frameworks.py:

    .venv-compat/bin/python tests/compat/pipecat_turn.py --url http://127.0.0.1:8000/v1 \\
        --api-key KEY --wav question.wav --out result.json

The WAV (16-bit mono) goes in as 20 ms frames at real-time pace, then 1.5 s of silence; the
server's VAD ends the turn and answers it (pipecat sends no response.create without a
context). Writes JSON: the user's transcript, the answer's transcript and seconds of audio,
errors, and every client event pipecat sent but audio. Exit status 0 when the answer came.
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
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

FRAME_MS = 20


class Recorder(OpenAIRealtimeLLMService):
    """The stock service, recording the events it sends (audio appends only counted)."""

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


class WavSource(FrameProcessor):
    """Pushes the WAV, then silence, as microphone frames at real-time pace once started;
    notes what the service sends back upstream (user transcripts, errors)."""

    def __init__(self, pcm: bytes, rate: int, result: dict[str, Any]) -> None:
        super().__init__()
        self._pcm, self._rate, self._result = pcm, rate, result

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._result["user_transcript"] = frame.text
        elif isinstance(frame, ErrorFrame):
            self._result["errors"].append(str(frame.error))
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._feed())

    async def _feed(self) -> None:
        step = self._rate * FRAME_MS // 1000 * 2
        audio = self._pcm + bytes(int(1.5 * self._rate) * 2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, at in enumerate(range(0, len(audio), step)):
            chunk = audio[at : at + step].ljust(step, b"\0")
            frame = InputAudioRawFrame(audio=chunk, sample_rate=self._rate, num_channels=1)
            await self.push_frame(frame)
            await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_MS / 1000 - loop.time()))


class AnswerSink(FrameProcessor):
    """Keeps the answer's transcript and audio; `done` once the response has ended."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__()
        self._result = result
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            seconds = len(frame.audio) / (2 * frame.sample_rate * frame.num_channels)
            self._result["answer_audio_s"] += seconds
        elif isinstance(frame, TTSTextFrame):
            self._result["answer_transcript"] += frame.text
        elif isinstance(frame, LLMFullResponseEndFrame) and self._result["answer_audio_s"]:
            self.done.set()
        await self.push_frame(frame, direction)


async def turn(args: argparse.Namespace) -> dict[str, Any]:
    with wave.open(args.wav, "rb") as w:
        if (w.getnchannels(), w.getsampwidth()) != (1, 2):
            raise SystemExit(f"{args.wav}: 16-bit mono PCM needed")
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    result: dict[str, Any] = {
        "user_transcript": None,
        "answer_transcript": "",
        "answer_audio_s": 0.0,
        "errors": [],
        "client_events": [],
        "appends": 0,
    }
    url = args.url.replace("http", "ws", 1).rstrip("/") + "/realtime"
    service = Recorder(result, api_key=args.api_key, base_url=url)  # defaults otherwise
    sink = AnswerSink(result)
    worker = PipelineWorker(
        Pipeline([WavSource(pcm, rate, result), service, sink]),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    async def finish() -> None:
        try:
            await asyncio.wait_for(sink.done.wait(), args.timeout)
        except TimeoutError:
            result["errors"].append(f"no whole answer within {args.timeout:.0f} s")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    finishing = asyncio.create_task(finish())
    await asyncio.wait_for(runner.run(), args.timeout + 30)
    await finishing
    result["answer_audio_s"] = round(result["answer_audio_s"], 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the server's /v1 base URL")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--wav", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(turn(args))
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    return 0 if result["answer_audio_s"] > 0 and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
