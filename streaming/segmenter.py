"""Split long audio at silences, so it can be transcribed in pieces, in order.

A backbone hears a bounded window (Whisper: 30 s). Longer audio is cut into pieces no longer
than `max_piece_s`; each cut falls in the middle of the longest silence between `min_piece_s`
and `max_piece_s` after the piece's start (the later one on a tie), or, in speech with no pause
at all, right at `max_piece_s`. Then each piece is trimmed to its speech plus `padding_s` on
either side: leading silence is what makes Whisper date a piece's first word too early (it
puts it at the start of the audio it was given), and silence costs time to transcribe. A time
in a piece plus the piece's offset is a time in the file (`to_file_time`).

Silences come from the silero VAD: window probabilities -> `VadStateMachine` -> speech spans;
the gaps between spans are the silences. The planning itself (`plan_pieces`) is pure and works
on spans, so it is tested with synthetic spans.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from voxgate.model.types import INPUT_SAMPLE_RATE, Segment, Transcription, Word
from voxgate.streaming.vad import (
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    VadParams,
    VadStateMachine,
)

WINDOW_MS = SileroVad.WINDOW * 1000 // INPUT_SAMPLE_RATE
_SAMPLES_PER_MS = INPUT_SAMPLE_RATE // 1000

Span = tuple[int, int]
"""A stretch of audio in milliseconds, [start, end)."""


class SegmenterParams(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    max_piece_s: float = Field(30.0, gt=0)
    """No piece is longer than this (Whisper reads 30 s at a time)."""
    min_piece_s: float = Field(10.0, ge=0)
    """Cuts are looked for between this and `max_piece_s` after a piece's start."""
    padding_s: float = Field(0.25, ge=0)
    """Silence kept before the first and after the last speech of a piece."""
    vad: VadParams = VadParams(min_speech_ms=96, silence_duration_ms=96, prefix_padding_ms=0)
    """What counts as speech. A short `silence_duration_ms` keeps the pauses between phrases
    as cut points; `prefix_padding_ms` 0 keeps spans to the voiced windows themselves."""

    @model_validator(mode="after")
    def _check_bounds(self) -> SegmenterParams:
        if self.min_piece_s >= self.max_piece_s:
            raise ValueError("min_piece_s must be below max_piece_s")
        return self


@dataclass(frozen=True, slots=True)
class Piece:
    """One piece of the audio: samples [start, end) at 16 kHz."""

    start: int
    end: int
    has_speech: bool
    """False when the VAD heard no speech in it: transcribing it would only invite the
    model to hallucinate ("Thank you."), so callers skip it, as the realtime path does.
    Such a piece is not trimmed (it has no speech to trim to)."""

    @property
    def offset_s(self) -> float:
        return self.start / INPUT_SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / INPUT_SAMPLE_RATE

    def samples(self, audio: np.ndarray) -> np.ndarray:
        return audio[self.start : self.end]


def speech_spans(probabilities: np.ndarray, params: VadParams) -> list[Span]:
    """Window probabilities -> speech spans in ms, through the VAD state machine."""
    machine = VadStateMachine(params, WINDOW_MS)
    spans: list[Span] = []
    start: int | None = None
    for prob in probabilities:
        match machine.step(float(prob)):
            case SpeechStarted(audio_start_ms=at):
                start = at
            case SpeechStopped(audio_end_ms=at) if start is not None:
                spans.append((start, at))
                start = None
    if start is not None and (stopped := machine.force_stop()) is not None:
        spans.append((start, stopped.audio_end_ms))
    return spans


def _silences(speech: list[Span], total_ms: int) -> list[Span]:
    silences, at = [], 0
    for start, end in speech:
        if start > at:
            silences.append((at, start))
        at = max(at, end)
    if total_ms > at:
        silences.append((at, total_ms))
    return silences


def plan_pieces(speech: list[Span], total_ms: int, params: SegmenterParams) -> list[Span]:
    """Cut [0, total_ms) into contiguous pieces of at most `max_piece_s`, in silences."""
    max_ms, min_ms = round(params.max_piece_s * 1000), round(params.min_piece_s * 1000)
    silences = _silences(speech, total_ms)
    pieces: list[Span] = []
    start = 0
    while total_ms - start > max_ms:
        low, high = start + min_ms, start + max_ms
        cut, longest = high, 0
        for silence_start, silence_end in silences:
            a, b = max(silence_start, low), min(silence_end, high)
            if b > a and b - a >= longest:  # >=: of equal silences, the later one
                cut, longest = (a + b) // 2, b - a
        pieces.append((start, cut))
        start = cut
    pieces.append((start, total_ms))
    return pieces


class Segmenter:
    """Plans the pieces of one audio file. CPU work: call `split` from a worker thread."""

    def __init__(self, vad: SileroVad, params: SegmenterParams | None = None) -> None:
        self._vad = vad
        self.params = params or SegmenterParams()

    def split(self, audio: np.ndarray) -> list[Piece]:
        """The pieces of 16 kHz mono float32 `audio`, in order (none for empty audio)."""
        if len(audio) == 0:
            return []
        self._vad.reset()
        probabilities = self._vad.probabilities(audio)
        speech = speech_spans(probabilities, self.params.vad)
        # Time in ms loses the last < 1 ms; the last piece ends at the last sample regardless.
        total_ms = len(audio) // _SAMPLES_PER_MS
        pad_ms = round(self.params.padding_s * 1000)
        pieces = []
        for start_ms, end_ms in plan_pieces(speech, total_ms, self.params):
            inside = [(s, e) for s, e in speech if s < end_ms and e > start_ms]
            if inside:
                start_ms = max(start_ms, inside[0][0] - pad_ms)
                end_ms = min(end_ms, inside[-1][1] + pad_ms)
            end = end_ms * _SAMPLES_PER_MS if end_ms < total_ms else len(audio)
            pieces.append(Piece(start_ms * _SAMPLES_PER_MS, end, has_speech=bool(inside)))
        return pieces


def to_file_time(transcription: Transcription, piece: Piece) -> Transcription:
    """A piece's transcription with its segment and word times moved to file time.

    Times are clamped to the piece: a model may place the end of the last word slightly past
    the end of the audio it was given.
    """
    offset, limit = piece.offset_s, piece.duration_s

    def at(t: float) -> float:
        return round(offset + min(max(t, 0.0), limit), 3)

    segments = tuple(
        Segment(
            at(s.start_s),
            at(s.end_s),
            s.text,
            tuple(Word(at(w.start_s), at(w.end_s), w.word) for w in s.words),
        )
        for s in transcription.segments
    )
    return dataclasses.replace(transcription, segments=segments)
