"""Cutting long audio at silences (`voxgate.streaming.segmenter`).

The planning is pure and tested on synthetic speech spans; the VAD path is tested on synthetic
probabilities and on real (Piper) speech with silences of known places.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from voxgate.model.types import INPUT_SAMPLE_RATE, Segment, Transcription, Word
from voxgate.streaming.segmenter import (
    WINDOW_MS,
    Piece,
    Segmenter,
    SegmenterParams,
    plan_pieces,
    speech_spans,
    to_file_time,
)
from voxgate.streaming.vad import SileroModel, SileroVad, VadParams

PARAMS = SegmenterParams()  # pieces of at most 30 s, cuts looked for from 10 s on
S = 1000  # ms per second, for readable spans


def check_tiling(pieces: list[tuple[int, int]], total_ms: int, max_ms: int = 30 * S) -> None:
    assert pieces[0][0] == 0 and pieces[-1][1] == total_ms
    assert all(a[1] == b[0] for a, b in pairwise(pieces))
    assert all(0 < end - start <= max_ms for start, end in pieces)


def test_audio_within_the_limit_is_one_piece() -> None:
    assert plan_pieces([(0, 25 * S)], 30 * S, PARAMS) == [(0, 30 * S)]
    assert plan_pieces([], 5 * S, PARAMS) == [(0, 5 * S)]


def test_the_cut_is_in_the_middle_of_the_longest_silence_before_the_limit() -> None:
    # Speech with pauses at 12-12.4 s, 20-21.5 s (the longest) and 26-26.6 s, and 34.5-35 s
    # (past the 30 s limit: not a candidate for the first cut).
    speech = [(0, 12 * S), (12_400, 20 * S), (21_500, 26 * S), (26_600, 34_500), (35 * S, 50 * S)]
    pieces = plan_pieces(speech, 50 * S, PARAMS)
    assert pieces[0] == (0, 20_750)
    check_tiling(pieces, 50 * S)


def test_of_equal_silences_the_later_one_is_cut() -> None:
    speech = [(0, 12 * S), (12_500, 25 * S), (25_500, 40 * S)]
    assert plan_pieces(speech, 40 * S, PARAMS)[0] == (0, 25_250)


def test_a_silence_is_measured_only_within_the_window() -> None:
    # 5-11 s is silent but mostly before the 10 s where cuts may start: it counts as 1 s there,
    # so the 2 s pause at 25-27 s wins.
    speech = [(0, 5 * S), (11 * S, 25 * S), (27 * S, 45 * S)]
    assert plan_pieces(speech, 45 * S, PARAMS)[0] == (0, 26 * S)


def test_speech_without_a_pause_is_cut_at_the_limit() -> None:
    pieces = plan_pieces([(0, 95 * S)], 95 * S, PARAMS)
    assert pieces == [(0, 30 * S), (30 * S, 60 * S), (60 * S, 90 * S), (90 * S, 95 * S)]


def test_long_silence_is_cut_into_pieces_too() -> None:
    speech = [(0, 3 * S), (73 * S, 76 * S)]
    pieces = plan_pieces(speech, 76 * S, PARAMS)
    check_tiling(pieces, 76 * S)
    assert pieces[0] == (0, 20 * S)  # the middle of the silence inside 10-30 s


@pytest.mark.parametrize("seed", range(5))
def test_random_speech_is_always_tiled_within_the_limit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spans, at = [], 0
    while at < 300 * S:
        start = at + int(rng.integers(0, 2000))
        at = start + int(rng.integers(200, 15_000))
        spans.append((start, at))
    check_tiling(plan_pieces(spans, at, PARAMS), at)


def test_params_must_leave_room_for_a_cut() -> None:
    with pytest.raises(ValueError, match="min_piece_s"):
        SegmenterParams(max_piece_s=10, min_piece_s=10)


def test_speech_spans_follow_the_vad_state_machine() -> None:
    params = VadParams(threshold=0.5, min_speech_ms=96, silence_duration_ms=96, prefix_padding_ms=0)
    probs = [0.0] * 5 + [0.9] * 10 + [0.1] * 5 + [0.9] * 2 + [0.1] * 5 + [0.9] * 6
    spans = speech_spans(np.array(probs), params)
    w = WINDOW_MS
    # A 2-window blip (64 ms < 96 ms) is not speech; the last run is cut off by the end.
    assert spans == [(5 * w, 15 * w), (27 * w, 33 * w)]


def test_to_file_time_shifts_and_clamps() -> None:
    piece = Piece(start=10 * INPUT_SAMPLE_RATE, end=12 * INPUT_SAMPLE_RATE, has_speech=True)
    words = (Word(0.0, 0.5, "hello"), Word(0.6, 2.3, "there"))
    piece_time = Transcription("hello there", 2.0, "en", (Segment(0.0, 2.3, "hello there", words),))
    file_time = to_file_time(piece_time, piece)
    (segment,) = file_time.segments
    assert (segment.start_s, segment.end_s) == (10.0, 12.0)
    assert [(w.start_s, w.end_s) for w in segment.words] == [(10.0, 10.5), (10.6, 12.0)]
    assert file_time.text == "hello there"


# --- on real speech -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(silero_path) -> Segmenter:
    return Segmenter(SileroVad(SileroModel(silero_path)))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * INPUT_SAMPLE_RATE), np.float32)


def test_real_speech_is_cut_in_its_pauses(segmenter: Segmenter, speak) -> None:
    sentence = speak("The quick brown fox jumps over the lazy dog near the quiet river bank.")
    # Sentences back to back with short pauses, and one 1.5 s pause near the 30 s mark.
    parts, sentences, pauses = [], [], []
    at = 0
    while at < 70 * INPUT_SAMPLE_RATE:
        parts.append(sentence)
        sentences.append((at, at + len(sentence)))
        at += len(sentence)
        gap = silence(1.5 if 22 * INPUT_SAMPLE_RATE < at < 28 * INPUT_SAMPLE_RATE else 0.4)
        pauses.append((at, at + len(gap)))
        parts.append(gap)
        at += len(gap)
    audio = np.concatenate(parts)
    pieces = segmenter.split(audio)

    assert len(pieces) >= 3
    assert all(p.has_speech and p.duration_s <= 30 for p in pieces)
    for a, b in pairwise(pieces):
        # Every cut falls inside one of the pauses between sentences, never in a word; what
        # lies between two pieces is silence.
        assert a.end <= b.start
        assert any(start <= a.end <= b.start <= end for start, end in pauses), a.end / 16000
    # All the speech is in some piece, with no more than the padding of silence around it.
    for start, end in sentences:
        assert any(p.start <= start + 800 and end - 800 <= p.end for p in pieces)
    pad = round(segmenter.params.padding_s * INPUT_SAMPLE_RATE)
    assert pieces[0].start <= pad and sentences[-1][1] - 800 <= pieces[-1].end < len(audio)
    # The first cut is in the long pause, the longest silence of the window.
    long_pause = next(p for p in pauses if p[1] - p[0] > INPUT_SAMPLE_RATE)
    assert long_pause[0] <= pieces[0].end <= long_pause[1]


def test_pieces_are_trimmed_to_their_speech(segmenter: Segmenter, speak) -> None:
    hello = speak("Hello there.")
    audio = np.concatenate([silence(3.0), hello, silence(3.0)])
    (piece,) = segmenter.split(audio)
    pad = segmenter.params.padding_s
    # The VAD's speech starts within a window or two of where the voice starts.
    assert 3.0 - pad - 0.1 <= piece.offset_s <= 3.0 - pad + 0.1
    assert piece.end / INPUT_SAMPLE_RATE <= 3.0 + len(hello) / INPUT_SAMPLE_RATE + pad + 0.1
    assert piece.duration_s < len(hello) / INPUT_SAMPLE_RATE + 2 * pad + 0.2


def test_pieces_without_speech_are_marked(segmenter: Segmenter, speak) -> None:
    hello = speak("Hello there.")
    audio = np.concatenate([hello, silence(70), hello])
    pieces = segmenter.split(audio)
    assert [p.has_speech for p in pieces] == [True, False, False, True]
    assert pieces[1].start == pieces[0].end or pieces[1].start > pieces[0].end  # in order


def test_short_and_empty_audio(segmenter: Segmenter, speak) -> None:
    hello = speak("Hello there.")
    (piece,) = segmenter.split(hello)
    assert piece.start == 0 and piece.has_speech and len(hello) - piece.end < 0.1 * 16000
    assert segmenter.split(silence(2.0)) == [Piece(0, 2 * INPUT_SAMPLE_RATE, has_speech=False)]
    assert segmenter.split(np.zeros(0, np.float32)) == []
    assert segmenter.split(np.zeros(10, np.float32)) == [Piece(0, 10, has_speech=False)]
