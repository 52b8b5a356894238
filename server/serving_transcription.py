"""Audio uploads in, text out: transcriptions, translations and descriptions on the backbone,
with no web types (`server/rest.py` is their router).

Decoding and VAD are CPU work and run in worker threads. Long audio is cut at silences
(`Segmenter`) and transcribed (or translated) piece by piece, in order (`TranscriptionJob`); a
streamed transcript is one `transcript.text.delta` event per piece. A description hears the
whole clip at once, so its length is capped (`MAX_DESCRIBED_SECONDS`). Work reaches the
backbone at the REST priority (`rest.priority`), behind live realtime turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import aclosing
from typing import BinaryIO, Literal, Protocol

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE, Segment, Transcription
from voxgate.server.audio_files import AudioFileError, AudioTooLong, EmptyAudio, decode_upload
from voxgate.server.errors import RestError
from voxgate.server.rest_errors import sse_error_event, sse_event
from voxgate.server.rest_requests import DescriptionForm, TranscriptionForm, TranslationForm
from voxgate.server.services import Services
from voxgate.server.transcripts import (
    TimedSegment,
    Transcript,
    TranscriptFormat,
    delta_event,
    done_event,
)
from voxgate.streaming.segmenter import Piece, Segmenter, SegmenterParams, to_file_time

MAX_DESCRIBED_SECONDS = 200.0
"""Longest audio a description hears. It is described whole, in one prompt, and Step-Audio-2
takes at most 8 pieces of 25 s in one (`audio_pieces_per_prompt`): longer audio is refused
(400 `audio_too_long`) rather than described in part."""
SILENT_PEAK = 10 ** (-60 / 20)
"""A clip whose loudest sample is below -60 dBFS holds nothing to describe and is not sent to
the backbone (a model asked about silence invents events). Sound, not speech, is what counts:
a caption describes a dog's bark as well as a voice."""

Timestamps = Literal["none", "segment", "word"]
Recognise = Callable[[np.ndarray, Timestamps], Awaitable[Transcription]]
"""One piece of speech to text (the backbone's transcribe or translate), timed as asked."""


class AudioUpload(Protocol):
    """An uploaded file, as the multipart parser keeps it (spooled to disk when large)."""

    file: BinaryIO
    size: int | None


class TranscriptionJob:
    """One file's pieces through the backbone (`recognise`), in order, into `transcript`."""

    def __init__(
        self,
        audio: np.ndarray,
        pieces: list[Piece],
        recognise: Recognise,
        fmt: TranscriptFormat,
        granularities: Collection[str],
        transcript: Transcript,
    ) -> None:
        self._audio = audio
        self._pieces = pieces
        self._recognise = recognise
        self.format = fmt
        granularities = set(granularities) or {"segment"}
        verbose = self.format is TranscriptFormat.VERBOSE_JSON
        self.with_segments = verbose and "segment" in granularities
        """What `verbose_json` lists (OpenAI: segments by default, words when asked)."""
        self.with_words = verbose and "word" in granularities
        self._timestamps: Timestamps = (
            "word"
            if self.with_words
            else "none"
            if self.format in (TranscriptFormat.JSON, TranscriptFormat.TEXT)
            else "segment"
        )
        self.transcript = transcript
        self.done = 0

    async def complete(self) -> None:
        async for _ in self.run():
            pass

    async def run(self) -> AsyncIterator[str]:
        """Piece by piece; yield each piece's text once it is in the transcript."""
        transcript = self.transcript
        for piece in self._pieces:
            if not piece.has_speech:
                continue
            result = await self._recognise(piece.samples(self._audio), self._timestamps)
            self.done += 1
            if result.language and not transcript.language:
                transcript.language = result.language
            if not (text := result.text.strip()):
                continue
            transcript.texts.append(text)
            if self._timestamps != "none":
                seek = round(piece.offset_s * 100)
                segments = to_file_time(result, piece).segments or (
                    Segment(piece.offset_s, piece.offset_s + piece.duration_s, text),
                )
                transcript.segments.extend(TimedSegment(s, seek) for s in segments)
            yield text

    async def events(self, retry_after_s: int) -> AsyncIterator[bytes]:
        """The transcript as Server-Sent Events: a delta per piece, then the whole text (or,
        after a failure, an `error` event)."""
        first = True
        try:
            async with aclosing(self.run()) as texts:
                async for text in texts:
                    yield sse_event(delta_event(text if first else " " + text))
                    first = False
        except Exception as e:
            yield sse_error_event(e, "/v1/audio/transcriptions", retry_after_s)
            return
        yield sse_event(done_event(self.transcript))


async def transcription(
    upload: AudioUpload, form: TranscriptionForm, services: Services
) -> TranscriptionJob:
    """The upload decoded and cut into pieces, ready to be transcribed as `form` asks."""
    backbone, priority = services.backbone, services.settings.rest.priority
    audio, pieces = await _speech_pieces(upload, services)

    async def transcribe(samples: np.ndarray, timestamps: Timestamps) -> Transcription:
        return await backbone.transcribe(
            samples,
            language=form.language,
            prompt=form.prompt,
            temperature=form.temperature,
            timestamps=timestamps,
            priority=priority,
        )

    return TranscriptionJob(
        audio,
        pieces,
        transcribe,
        TranscriptFormat(form.response_format),
        form.timestamp_granularities,
        Transcript(_seconds(audio), form.language or "", form.temperature),
    )


async def translation(
    upload: AudioUpload, form: TranslationForm, services: Services
) -> TranscriptionJob:
    """The upload decoded and cut into pieces, ready to be translated into English."""
    backbone, priority = services.backbone, services.settings.rest.priority
    audio, pieces = await _speech_pieces(upload, services)

    async def translate(samples: np.ndarray, timestamps: Timestamps) -> Transcription:
        # Translations are not timed: srt, vtt and verbose_json get one cue per piece.
        return await backbone.translate(samples, temperature=form.temperature, priority=priority)

    # OpenAI names the language of a translation in words, and it is always English.
    transcript = Transcript(_seconds(audio), "english", form.temperature, task="translate")
    return TranscriptionJob(
        audio, pieces, translate, TranscriptFormat(form.response_format), (), transcript
    )


async def described_audio(upload: AudioUpload, services: Services) -> np.ndarray:
    """The upload decoded whole, as a description hears it (at most `MAX_DESCRIBED_SECONDS`)."""
    limit = min(services.settings.rest.max_audio_seconds, MAX_DESCRIBED_SECONDS)
    too_long = (
        f"the audio is longer than {limit:g} s, the most a description hears at once; "
        "describe it in parts"
    )
    return await asyncio.to_thread(_decode, upload, limit, too_long)


def holds_sound(audio: np.ndarray) -> bool:
    """Whether there is anything to describe (`SILENT_PEAK`)."""
    return bool(np.abs(audio).max() >= SILENT_PEAK)


async def describe(audio: np.ndarray, form: DescriptionForm, services: Services) -> str:
    priority = services.settings.rest.priority
    return (await services.backbone.describe(audio, form.kind, priority=priority)).strip()


def _seconds(audio: np.ndarray) -> float:
    return len(audio) / INPUT_SAMPLE_RATE


async def _speech_pieces(upload: AudioUpload, services: Services) -> tuple[np.ndarray, list[Piece]]:
    """The upload decoded and cut at silences into pieces the backbone takes (worker threads)."""
    settings = services.settings.rest
    audio = await asyncio.to_thread(_decode, upload, settings.max_audio_seconds)
    params = SegmenterParams(
        max_piece_s=settings.max_piece_seconds, min_piece_s=settings.max_piece_seconds / 3
    )
    pieces = await asyncio.to_thread(Segmenter(services.new_vad(), params).split, audio)
    return audio, pieces


def _decode(upload: AudioUpload, max_seconds: float, too_long: str | None = None) -> np.ndarray:
    """The upload as 16 kHz mono; `too_long`, when given, says why audio over `max_seconds`
    is refused."""
    try:
        if upload.size == 0:
            raise EmptyAudio("the file is empty")
        return decode_upload(upload.file, max_seconds)
    except AudioTooLong as e:
        raise RestError(400, e.code, too_long or e.message, "file") from e
    except AudioFileError as e:
        raise RestError(400, e.code, e.message, "file") from e
