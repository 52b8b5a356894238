"""Text in, speech out: a speech request synthesised sentence by sentence on the backbone and
encoded piece by piece, with no web types (`server/rest.py` is its router).

Each piece is encoded and sent as soon as it exists, so the first audio leaves before the whole
text is spoken; encoding is CPU work and runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from voxgate.model.backbone import Backbone
from voxgate.model.clauses import ClauseSplitter
from voxgate.model.types import AudioChunk
from voxgate.server.audio_files import SpeechEncoder
from voxgate.server.rest_errors import sse_error_event, sse_event
from voxgate.server.rest_requests import SpeechRequest
from voxgate.server.services import Services

SPEECH_MIN_CLAUSE_WORDS = 12
"""Speech input is cut at sentence ends, and at clause marks only in long sentences: a piece
is one `synthesize` call, and prosody needs whole phrases more than REST needs a fast first
byte. On a backbone whose TTS runs on the engine each piece is one engine request, so a long
text holds the engine a sentence at a time: a live turn (higher priority) gets in at the next
sentence boundary instead of after the whole text, and concurrent REST requests take turns."""


@dataclass(slots=True)
class Speech:
    """A speech request's audio, begun: its first bytes exist (or it has failed already)."""

    audio: AsyncIterator[bytes]
    """The encoded audio, piece by piece; closing it stops the synthesis."""
    encoder: SpeechEncoder
    instructions: str | None
    """`followed` or `ignored` when the request gave instructions (None: it gave none)."""

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
        yield sse_event({"type": "speech.audio.done", "usage": usage, "x_voxgate": extension})


async def speak(speech: SpeechRequest, services: Services) -> Speech:
    """Start speaking `speech`: run it to its first encoded bytes, so that a failure before any
    output is still an HTTP error (with its status), not a stream cut short after a 200."""
    backbone = services.backbone
    instructions = None
    if speech.instructions:
        instructions = "followed" if backbone.follows_instructions else "ignored"
    encoder = SpeechEncoder(speech.response_format)
    chunks = _synthesize(backbone, speech, services.settings.rest.priority)
    audio = await _primed(_encoded(chunks, encoder))
    return Speech(audio, encoder, instructions)


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
    chunks: AsyncIterator[AudioChunk], encoder: SpeechEncoder
) -> AsyncIterator[bytes]:
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if data := await asyncio.to_thread(encoder.encode, chunk):
                yield data
    if data := await asyncio.to_thread(encoder.finish):
        yield data


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
