"""What the feedback store keeps of a `/v1/audio/speech` answer when the server captures
feedback (`VOXGATE_FEEDBACK__ENABLED`): regime `speech`, the request's instructions as the
system message and its text as the user message, the text as the answer, the voice, the model,
the timings (`tts_first_chunk`, `tts_total`: seconds from the start of the synthesis to its
first and last audio), the outcome, and the synthesised audio (mono pcm16 at the backbone's
rate, before encoding) when audio is kept (`VOXGATE_FEEDBACK__AUDIO`), at most the store's
`max_audio_seconds` of it.

A REST request is a session of its own: an answer's session id is its response id (`speech_...`),
a candidate pair's is the pair's id (`pair_...`), so `voxgate feedback delete --session ID`
removes it.

Recording never fails a request and never holds its audio back: a streamed answer is recorded
once its last audio byte is out (`recorded_after`), and what is not kept (the store failed, or
too many recordings wait for it) is logged and counted in
`voxgate_feedback_captures_dropped_total` (`store_error`, `queue_full`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from voxgate.model.types import AudioChunk, Role
from voxgate.server import metrics
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.feedback_types import (
    AnswerAudio,
    CapturedResponse,
    ContextMessage,
    Outcome,
    Regime,
)
from voxgate.server.rest_requests import SpeechRequest
from voxgate.streaming.audio import AudioFormat, encode
from voxgate.streaming.requests import new_id

log = logging.getLogger(__name__)

RESPONSE_ID_PREFIX = "speech"
PAIR_ID_PREFIX = "pair"
RECORD_WAIT_S = 5.0
"""How long a streamed answer's end waits for its recording (so that a client that read the
whole answer finds it when it rates it at once); a slower store goes on in the background."""
MAX_BACKGROUND_RECORDINGS = 64
"""Recordings left running in the background (clients gone, slow store) at once; past this an
answer is not recorded (logged), so a stuck database cannot pile up work without bound."""

_background: set[asyncio.Task[bool]] = set()
"""Recordings running in the background: a task needs a strong reference until it ends."""


class SpeechCapture:
    """One speech answer being captured: its audio noted as it is synthesised (`keep`, CPU
    work for a worker thread), then recorded with its outcome."""

    def __init__(
        self, speech: SpeechRequest, store: FeedbackStore, model: str, session_id: str | None
    ) -> None:
        self.response_id = new_id(RESPONSE_ID_PREFIX)
        self.session_id = session_id or self.response_id
        self._speech = speech
        self._store = store
        self._model = model
        self._started = time.monotonic()
        self._timings: dict[str, float] = {}
        self._rate: int | None = None
        self._samples = 0
        self._pcm = bytearray() if store.settings.audio else None
        self._max_audio_seconds = store.settings.max_audio_seconds

    def keep(self, chunk: AudioChunk) -> None:
        """Note a synthesised chunk: its time, its length and (when audio is kept) its audio,
        up to `max_audio_seconds`. A backbone speaks at one rate; audio after a change of
        rate is not noted."""
        elapsed = time.monotonic() - self._started
        self._timings.setdefault("tts_first_chunk", elapsed)
        self._timings["tts_total"] = elapsed
        if self._rate is None:
            self._rate = chunk.sample_rate
        if chunk.sample_rate != self._rate:
            return
        self._samples += len(chunk.samples)
        if self._pcm is not None:
            room = 2 * int(self._max_audio_seconds * self._rate) - len(self._pcm)
            if room > 0:
                self._pcm += encode(chunk.samples[: room // 2], AudioFormat.PCM)

    def captured(self, outcome: Outcome) -> CapturedResponse:
        speech = self._speech
        context = [ContextMessage(Role.USER, speech.input)]
        if speech.instructions:
            context.insert(0, ContextMessage(Role.SYSTEM, speech.instructions))
        rate = self._rate
        audio = None
        if self._pcm is not None and rate is not None:
            audio = AnswerAudio(bytes(self._pcm), rate)
        return CapturedResponse(
            response_id=self.response_id,
            session_id=self.session_id,
            regime=Regime.SPEECH,
            model=self._model,
            context=context,
            text=speech.input,
            voice=speech.voice,
            audio_ms=self._samples * 1000 // rate if rate else 0,
            timings=dict(self._timings),
            outcome=outcome,
            audio=audio,
        )

    async def record(self, outcome: Outcome) -> bool:
        """Keep the answer in the store; False (logged) if the store failed."""
        try:
            await self._store.record_response(self.captured(outcome))
        except Exception:
            log.warning("speech answer %s not recorded", self.response_id, exc_info=True)
            metrics.CAPTURES_DROPPED.labels(reason="store_error").inc()
            return False
        return True

    async def recorded_after(self, audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`audio`, passed on; then the answer is recorded: `completed` once every byte is
        out, `failed` when the stream failed (the end waits at most `RECORD_WAIT_S` for the
        store, so that a client that read the answer finds it when it rates it at once), or
        `cancelled` when the client left (in the background: nobody waits)."""
        outcome = Outcome.CANCELLED
        try:
            async with aclosing(audio):  # type: ignore[type-var]
                async for data in audio:
                    yield data
            outcome = Outcome.COMPLETED
        except Exception:
            outcome = Outcome.FAILED
            raise
        finally:
            recording = self._in_background(outcome)
            if recording is not None and outcome is not Outcome.CANCELLED:
                await asyncio.wait((recording,), timeout=RECORD_WAIT_S)

    def _in_background(self, outcome: Outcome) -> asyncio.Task[bool] | None:
        if len(_background) >= MAX_BACKGROUND_RECORDINGS:
            log.warning(
                "speech answer %s not recorded: %d recordings already waiting for the store",
                self.response_id,
                len(_background),
            )
            metrics.CAPTURES_DROPPED.labels(reason="queue_full").inc()
            return None
        task = asyncio.create_task(self.record(outcome), name=f"record-{self.response_id}")
        _background.add(task)
        task.add_done_callback(_background.discard)
        return task
