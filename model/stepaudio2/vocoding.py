"""Speech out of the token2wav vocoder: its thread (per-stream, or the batched scheduler) and an
answer's speech codes turned into audio while the LM is still writing them."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from voxgate.model.priority import PriorityExecutor
from voxgate.model.stepaudio2 import budgets
from voxgate.model.stepaudio2.decoding import Decoder
from voxgate.model.stepaudio2.options import StepAudio2Options
from voxgate.model.stepaudio2.parsing import OutputSplitter, TextPiece
from voxgate.model.stepaudio2.regimes import Prompt
from voxgate.model.types import AudioChunk, ResponseEnd, ResponseOutput, TextDelta, TurnTrace

if TYPE_CHECKING:
    from voxgate.model.stepaudio2.token2wav import Token2Wav, VocoderScheduler

log = logging.getLogger(__name__)

SAMPLES_PER_CODE = 960
"""One speech code is 40 ms at 24 kHz (25 codes per second)."""
MAX_VOCODER_BATCH = 64
"""Streams one batched vocoder step takes at most: a CUDA graph is captured per padded batch
size up to it (1, 2, 4, ... 64); more ready streams wait for the next step."""
VOCODER_VOICES = 4
"""Voice prompts the batched vocoder keeps on the device; a stream in a fifth voice at once
runs alone (~0.4 GB per voice of a 6 s prompt at the published size in float32)."""


def start_vocoder_scheduler(vocoder: Token2Wav, options: StepAudio2Options) -> VocoderScheduler:
    """The batched vocoder with its slots allocated and, on CUDA, its step captured as CUDA
    graphs, and the thread that steps it. Blocking (the capture takes seconds)."""
    from voxgate.model.stepaudio2.token2wav import BatchedVocoder, StepShapes, VocoderScheduler

    names = vocoder.voices()
    longest_prompt = max(len(vocoder.voice(name).prompt_tokens) for name in names)
    shapes = StepShapes(
        max_batch=min(options.vocoder_slots, MAX_VOCODER_BATCH),
        slots=options.vocoder_slots,
        context_tokens=longest_prompt + math.ceil(options.answer_s * budgets.CODES_PER_SECOND),
        voices=min(len(names), VOCODER_VOICES),
    )
    batched = BatchedVocoder(vocoder, shapes)
    captured = batched.capture()
    log.info(
        "batched vocoder: %d slots of %d tokens, up to %d streams a step, %s",
        shapes.slots,
        shapes.context_tokens,
        shapes.max_batch,
        f"CUDA graphs for {batched.captured}" if captured else "eager steps",
    )
    return VocoderScheduler(batched)


class _VocoderThreadStream:
    """One utterance on the per-stream vocoder, its chunks run on the vocoder thread in
    priority order (the path when `batched_vocoder` is off)."""

    def __init__(self, stream: Any, thread: PriorityExecutor, priority: int) -> None:
        self._stream = stream
        self._thread = thread
        self._priority = priority

    async def apush(self, codes: Sequence[int]) -> np.ndarray:
        return await self._thread.run(self._priority, self._stream.push, codes)

    async def afinish(self) -> np.ndarray:
        return await self._thread.run(self._priority, self._stream.finish)


class SpeechStreamer:
    """Answers with speech: the engine's output split into text and speech codes, the codes
    turned into audio on the vocoder's thread in the engine's priority order (a live turn's
    audio is not queued behind REST synthesis)."""

    def __init__(
        self,
        decoder: Decoder,
        vocoder: Any,
        scheduler: VocoderScheduler | None = None,
    ) -> None:
        self._decoder = decoder
        self._vocoder = vocoder
        # Heavy tensor work, never on the event loop.
        self._thread = PriorityExecutor("token2wav")
        self._scheduler = scheduler
        """The batched vocoder's thread, which then runs every stream instead (the caller
        that passes it shuts it down)."""

    def shutdown(self) -> None:
        """Stop the per-stream vocoder thread (the batched one is its caller's to stop)."""
        self._thread.shutdown()

    def _open_vocoder(self, speaker: Any, priority: int) -> AbstractContextManager[Any]:
        """One utterance's vocoder, with `apush(codes)` and `afinish()` (audio out). Leaving
        it unfinished (a cancelled response) abandons the stream: a batched one gives back
        its slot."""
        if self._scheduler is not None:
            return self._scheduler.open(speaker, priority)
        stream = self._vocoder.stream(speaker)
        return nullcontext(_VocoderThreadStream(stream, self._thread, priority))

    async def stream(
        self,
        request: Prompt,
        params: Any,
        request_id: str,
        priority: int,
        speaker: Any,
        trace: TurnTrace,
        splitter: OutputSplitter | None = None,
    ) -> AsyncIterator[ResponseOutput]:
        """Stream an answer with speech: text is released with the audio that speaks it.
        `splitter` (given) keeps what the model wrote, for the caller to read at the end."""
        splitter = splitter or self._decoder.splitter()
        with self._open_vocoder(speaker, priority) as vocoder:
            held: list[tuple[int, str]] = []  # (speech codes before this text, text)
            codes_seen = samples_out = generated = 0
            finish = "stop"

            def release(upto_codes: int) -> list[TextDelta]:
                out = [TextDelta(t) for before, t in held if before <= upto_codes]
                held[:] = [(before, t) for before, t in held if before > upto_codes]
                return out

            async for output in self._decoder.stream(request, params, request_id, priority):
                completion = output.outputs[0]
                if completion.token_ids:
                    trace.mark("lm_first_token")
                generated += len(completion.token_ids)
                finish = "length" if completion.finish_reason == "length" else finish
                for piece in splitter.push(completion.token_ids):
                    if isinstance(piece, TextPiece):
                        held.append((codes_seen, piece.text))
                        continue
                    codes_seen += len(piece.codes)
                    pushed_at = time.monotonic()
                    wave = await vocoder.apush(piece.codes)
                    if len(wave):
                        # The LM's share of the first audio ends when the vocoder
                        # had enough codes.
                        trace.mark("first_clause", pushed_at)
                        trace.mark("tts_first_chunk")
                        samples_out += len(wave)
                        for delta in release(samples_out // SAMPLES_PER_CODE):
                            yield delta
                        yield AudioChunk(wave, self._vocoder.sample_rate)
            trace.mark("lm_done")
            if tail := splitter.finish():
                held.append((codes_seen, tail))
            wave = await vocoder.afinish()
            for delta in release(codes_seen):
                yield delta
            if len(wave):
                trace.mark("tts_first_chunk")
                yield AudioChunk(wave, self._vocoder.sample_rate)
            yield ResponseEnd(finish, request.length, generated, output_audio_tokens=codes_seen)
