"""Text in, speech out: a speech request synthesised sentence by sentence on the backbone and
encoded piece by piece, with no web types (`server/rest.py` is its router).

Each piece is encoded and sent as soon as it exists, so the first audio leaves before the whole
text is spoken; encoding is CPU work and runs in worker threads.

With feedback captured (`VOXGATE_FEEDBACK__ENABLED`) each answer has a response id and is
recorded (`server/speech_capture.py`). Candidates (`x_voxgate.candidates: 2`) are two answers to
the same request, synthesised one after the other (the second behind other REST work) and
encoded whole, recorded with their pair before they are answered, so a client can prefer one
at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from voxgate.model.backbone import Backbone
from voxgate.model.clauses import ClauseSplitter
from voxgate.model.types import AudioChunk
from voxgate.server import metrics
from voxgate.server.audio_files import SpeechEncoder, SpeechFormat
from voxgate.server.feedback_types import Outcome
from voxgate.server.rest_errors import sse_error_event, sse_event
from voxgate.server.rest_requests import SpeechRequest
from voxgate.server.services import Services
from voxgate.server.speech_capture import PAIR_ID_PREFIX, SpeechCapture
from voxgate.streaming.requests import new_id

log = logging.getLogger(__name__)

SPEECH_MIN_CLAUSE_WORDS = 12
"""Speech input is cut at sentence ends, and at clause marks only in long sentences: a piece
is one `synthesize` call, and prosody needs whole phrases more than REST needs a fast first
byte. On a backbone whose TTS runs on the engine each piece is one engine request, so a long
text holds the engine a sentence at a time: a live turn (higher priority) gets in at the next
sentence boundary instead of after the whole text, and concurrent REST requests take turns."""
SECOND_CANDIDATE_PRIORITY_STEP = 1
"""The second candidate runs this far below `rest.priority`: behind every other REST request
(and live turns), so a comparison costs the others nothing but cores left idle."""


@dataclass(slots=True)
class Speech:
    """A speech request's audio, begun: its first bytes exist (or it has failed already)."""

    audio: AsyncIterator[bytes]
    """The encoded audio, piece by piece; closing it stops the synthesis."""
    encoder: SpeechEncoder
    instructions: str | None
    """`followed` or `ignored` when the request gave instructions (None: it gave none)."""
    response_id: str | None
    """The answer's id in the feedback store (None: feedback is not captured)."""

    async def events(self, retry_after_s: int) -> AsyncIterator[bytes]:
        """The audio as Server-Sent Events: base64 pieces, then `speech.audio.done` (or, after
        a failure, an `error` event)."""
        extension: dict[str, Any] = {}
        if self.instructions is not None:
            extension["instructions"] = self.instructions
        try:
            async with aclosing(self.audio):  # type: ignore[type-var]
                async for data in self.audio:
                    audio = base64.b64encode(data).decode()
                    yield sse_event({"type": "speech.audio.delta", "audio": audio})
        except Exception as e:
            yield sse_error_event(e, "/v1/audio/speech", retry_after_s)
            return
        # voxgate does not meter speech in tokens; OpenAI's `usage` is there, with zeros.
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        extension = extension | {"audio_seconds": round(self.encoder.seconds, 3)}
        if self.response_id is not None:
            extension["response_id"] = self.response_id
        yield sse_event({"type": "speech.audio.done", "usage": usage, "x_voxgate": extension})


class SpeechCandidate(BaseModel):
    """One candidate answer of a speech request."""

    response_id: str
    """Its id in the feedback store (`POST /v1/feedback`, `/v1/feedback/preferences`)."""
    format: SpeechFormat
    audio: str
    """The whole audio in `format`, base64."""


class SpeechCandidates(BaseModel):
    """The answer of a speech request for `x_voxgate.candidates: 2`."""

    object: Literal["speech.candidates"] = "speech.candidates"
    pair_id: str
    """The pair to prefer one of (`POST /v1/feedback/preferences`)."""
    candidates: list[SpeechCandidate]


def instructions_outcome(speech: SpeechRequest, backbone: Backbone) -> str | None:
    """`followed` or `ignored` when the request gave instructions (None: it gave none)."""
    if not speech.instructions:
        return None
    return "followed" if backbone.follows_instructions else "ignored"


async def speak(speech: SpeechRequest, services: Services) -> Speech:
    """Start speaking `speech`: run it to its first encoded bytes, so that a failure before any
    output is still an HTTP error (with its status), not a stream cut short after a 200.
    A captured answer is recorded once its stream ends (an answer that failed before its
    first byte was never given, and is not)."""
    backbone = services.backbone
    capture = _capture(speech, services)
    encoder = SpeechEncoder(speech.response_format)
    chunks = _synthesize(backbone, speech, services.settings.rest.priority)
    audio = await _primed(_encoded(chunks, encoder, capture))
    if capture is not None:
        audio = capture.recorded_after(audio)
    response_id = capture.response_id if capture is not None else None
    return Speech(audio, encoder, instructions_outcome(speech, backbone), response_id)


async def speak_candidates(speech: SpeechRequest, services: Services) -> SpeechCandidates:
    """Speak `speech` twice, the second after the first and at a lower priority; record both
    and their pair (a store that fails is logged: the candidates are answered anyway)."""
    pair_id = new_id(PAIR_ID_PREFIX)
    priority = services.settings.rest.priority
    first = await _candidate(speech, services, pair_id, priority)
    second = await _candidate(speech, services, pair_id, priority + SECOND_CANDIDATE_PRIORITY_STEP)
    captures = (first[0], second[0])
    if all([await capture.record(Outcome.COMPLETED) for capture in captures]):
        await _record_pair(services, pair_id, captures)
    return SpeechCandidates(pair_id=pair_id, candidates=[first[1], second[1]])


async def _candidate(
    speech: SpeechRequest, services: Services, pair_id: str, priority: int
) -> tuple[SpeechCapture, SpeechCandidate]:
    """One candidate, synthesised and encoded whole."""
    capture = _capture(speech, services, session_id=pair_id)
    assert capture is not None, "candidates are refused while feedback is off"
    encoder = SpeechEncoder(speech.response_format)
    chunks = _synthesize(services.backbone, speech, priority)
    async with aclosing(_encoded(chunks, encoder, capture)) as pieces:  # type: ignore[type-var]
        data = b"".join([piece async for piece in pieces])
    audio = (await asyncio.to_thread(base64.b64encode, data)).decode()
    candidate = SpeechCandidate(
        response_id=capture.response_id, format=speech.response_format, audio=audio
    )
    return capture, candidate


async def _record_pair(services: Services, pair_id: str, captures: Sequence[SpeechCapture]) -> None:
    first, second = (capture.response_id for capture in captures)
    try:
        await services.feedback.record_pair(pair_id, pair_id, first, second)
    except Exception:
        log.warning("speech candidates %s not recorded as a pair", pair_id, exc_info=True)
        metrics.CAPTURES_DROPPED.labels(reason="store_error").inc()


def _capture(
    speech: SpeechRequest, services: Services, session_id: str | None = None
) -> SpeechCapture | None:
    """A capture of the answer about to be synthesised (None: feedback is not captured)."""
    store = services.feedback
    if not store.enabled:
        return None
    return SpeechCapture(speech, store, services.model_name, session_id)


def speakable_pieces(text: str) -> list[str]:
    """The text cut where a TTS call may end: sentences, and clauses of long sentences."""
    splitter = ClauseSplitter(min_clause_words=SPEECH_MIN_CLAUSE_WORDS, max_words=60)
    return splitter.push(text) + splitter.flush()


async def _synthesize(
    backbone: Backbone, speech: SpeechRequest, priority: int
) -> AsyncIterator[AudioChunk]:
    for piece in speakable_pieces(speech.input):
        chunks = backbone.synthesize(
            piece,
            voice=speech.voice,
            speed=speech.speed,
            instructions=speech.instructions,
            priority=priority,
        )
        async with aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk


async def _encoded(
    chunks: AsyncIterator[AudioChunk], encoder: SpeechEncoder, capture: SpeechCapture | None
) -> AsyncIterator[bytes]:
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if data := await asyncio.to_thread(_encode, encoder, capture, chunk):
                yield data
    if data := await asyncio.to_thread(encoder.finish):
        yield data


def _encode(encoder: SpeechEncoder, capture: SpeechCapture | None, chunk: AudioChunk) -> bytes:
    if capture is not None:
        capture.keep(chunk)
    return encoder.encode(chunk)


async def _primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Run `stream` to its first item now, so that a failure before any output is still an
    HTTP error (with its status), not a stream cut short after a 200."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def chained() -> AsyncIterator[bytes]:
        async with aclosing(stream):  # type: ignore[type-var]
            if first is not None:
                yield first
                async for item in stream:
                    yield item

    return chained()
