"""Speech as the tests send it to a real server and words as they score what came back: pcm16 and
WAV bytes, silence, loudness, words and the word error rate."""

from __future__ import annotations

import io
import re
import wave

import numpy as np

from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming.audio import AudioFormat, StreamResampler, encode

SAMPLES_PER_CODE = 960
"""A Step-Audio-2 speech code is 40 ms of 24 kHz audio."""


def pcm24(audio16k: np.ndarray) -> bytes:
    """16 kHz float32 -> 24 kHz pcm16, the realtime wire's default input."""
    resampler = StreamResampler(INPUT_SAMPLE_RATE, AudioFormat.PCM.sample_rate)
    return encode(np.concatenate([resampler.process(audio16k), resampler.flush()]), AudioFormat.PCM)


def silence(seconds: float) -> bytes:
    """`seconds` of 24 kHz pcm16 silence."""
    return bytes(int(seconds * AudioFormat.PCM.sample_rate) * 2)


def wav_bytes(samples: np.ndarray, rate: int = INPUT_SAMPLE_RATE) -> bytes:
    """float32 mono -> a 16-bit WAV file (clipped to full scale), as a client uploads it."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def rms(pcm16: bytes) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / max(len(ref), 1)
