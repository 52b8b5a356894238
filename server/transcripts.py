"""OpenAI's transcription (and translation) response shapes: `json`, `text`, `srt`, `vtt`,
`verbose_json`, and the `transcript.text.*` stream events. Pure functions of a `Transcript`; no
HTTP here.

`verbose_json` follows the SDK's `TranscriptionVerbose`. What a segment carries beyond its times
and text is filled as honestly as the backbone allows: `seek` is the start of the piece the
segment was transcribed in (in 10 ms frames, as Whisper counts), `temperature` the one asked for,
`compression_ratio` computed from the text the way Whisper does (bytes / zlib-compressed bytes).
The backbone reports no tokens or probabilities, so `tokens` is `[]` and `avg_logprob` and
`no_speech_prob` are 0.0.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from voxgate.model.types import Segment


class TranscriptFormat(StrEnum):
    """`response_format` of `/v1/audio/transcriptions` and `/v1/audio/translations`."""

    JSON = "json"
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"
    VERBOSE_JSON = "verbose_json"

    @property
    def media_type(self) -> str:
        match self:
            case TranscriptFormat.JSON | TranscriptFormat.VERBOSE_JSON:
                return "application/json"
            case TranscriptFormat.VTT:
                return "text/vtt; charset=utf-8"
            case _:
                return "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class TimedSegment:
    segment: Segment
    """Times in the file, not in the piece."""
    seek: int
    """Start of the piece this segment came from, in 10 ms frames."""


@dataclass(slots=True)
class Transcript:
    """A whole file's transcription (or translation), assembled piece by piece."""

    duration_s: float
    language: str
    temperature: float
    task: Literal["transcribe", "translate"] = "transcribe"
    texts: list[str] = field(default_factory=list)
    segments: list[TimedSegment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def json_body(t: Transcript) -> dict[str, Any]:
    return {"text": t.text, "usage": _usage(t)}


def text_body(t: Transcript) -> str:
    return t.text + "\n"


def verbose_json_body(t: Transcript, *, segments: bool, words: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": t.task,
        "language": t.language,
        "duration": round(t.duration_s, 3),
        "text": t.text,
    }
    if segments:
        body["segments"] = [
            {
                "id": i,
                "seek": timed.seek,
                "start": timed.segment.start_s,
                "end": timed.segment.end_s,
                "text": timed.segment.text,
                "tokens": [],
                "temperature": t.temperature,
                "avg_logprob": 0.0,
                "compression_ratio": compression_ratio(timed.segment.text),
                "no_speech_prob": 0.0,
            }
            for i, timed in enumerate(t.segments)
        ]
    if words:
        body["words"] = [
            {"word": w.word, "start": w.start_s, "end": w.end_s}
            for timed in t.segments
            for w in timed.segment.words
        ]
    body["usage"] = _usage(t)
    return body


def srt_body(t: Transcript) -> str:
    cues = [
        f"{i}\n{_clock(s.segment.start_s, ',')} --> {_clock(s.segment.end_s, ',')}\n"
        f"{s.segment.text}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(cues)


def vtt_body(t: Transcript) -> str:
    cues = [
        f"{_clock(s.segment.start_s, '.')} --> {_clock(s.segment.end_s, '.')}\n{s.segment.text}\n"
        for s in t.segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def delta_event(delta: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": delta}


def done_event(t: Transcript) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": t.text}


def compression_ratio(text: str) -> float:
    """Whisper's repetition check: UTF-8 bytes over zlib-compressed bytes (0 for no text)."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def _usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(t.duration_s, 3)}


def _clock(seconds: float, decimal_mark: str) -> str:
    ms = round(max(seconds, 0.0) * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{ms:03d}"
