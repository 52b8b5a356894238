"""Noise reduction (`noise_reduction`, RNNoise): what it costs, and what it does to the VAD and
to transcription of recorded speech with noise added. In this process, no server.

    python bench/noise_reduction.py

Speech: the recorded clips of Debian's pocketsphinx-testdata (real read speech with
transcripts). Noise, added at `--snr` dB (speech power over noise power, measured on the
speech): `pink` (steady, like a fan or traffic), `babble` (other clips of the set mixed,
reversed: many voices, no words), `hum` (50 Hz mains hum and harmonics over faint white noise).
Each noisy clip has 1.5 s of noise alone before and after the speech, as a microphone hears
a room before and after a turn.

For each condition, without and with RNNoise (the server's `NoiseSuppressor`, fed 20 ms
pieces as a client's appends):
- VAD false starts: speech starts (silero VAD with the server's default `server_vad` settings)
  inside the noise-only lead-in and tail, per minute of noise alone;
- missed turns: clips where the VAD found no speech start at all during the speech;
- WER of Whisper tiny.en (the cascade's ASR, greedy) on the whole noisy clip.
And the cost: RNNoise's time per 20 ms piece of 16 kHz input (p50/p95, one core).
Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
from common import POCKETSPHINX_DATA, edits, mono_16k, normalised, recorded_clips

from voxgate.model import artifacts
from voxgate.model.artifacts import RNNOISE, SILERO_VAD, WHISPER_TINY_EN
from voxgate.model.asr import WhisperASR
from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming.denoise import RNNoiseLibrary
from voxgate.streaming.vad import SileroModel, SileroVad, SpeechStarted, VadParams, VadStateMachine

PAD_S = 1.5
PIECE = INPUT_SAMPLE_RATE // 50  # 20 ms
RATE = INPUT_SAMPLE_RATE


def noise(kind: str, n: int, rng: np.random.Generator, speech: list[np.ndarray]) -> np.ndarray:
    if kind == "pink":
        spectrum = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        spectrum[1:] /= np.sqrt(freqs[1:])
        spectrum[0] = 0
        return np.fft.irfft(spectrum, n).astype(np.float32)
    if kind == "babble":
        out = np.zeros(n, np.float32)
        for clip in rng.choice(len(speech), size=6, replace=False):
            voice = speech[clip][::-1]
            reps = np.tile(voice, n // len(voice) + 1)[:n]
            out += np.roll(reps, int(rng.integers(n)))
        return out
    t = np.arange(n) / RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 5))
    return (hum + 0.05 * rng.normal(size=n)).astype(np.float32)


def mixed(clean: np.ndarray, kind: str, snr_db: float, rng, speech) -> np.ndarray:
    pad = int(PAD_S * RATE)
    n = len(clean) + 2 * pad
    background = noise(kind, n, rng, speech)
    speech_power = np.mean(clean**2)
    background *= np.sqrt(speech_power / (np.mean(background**2) * 10 ** (snr_db / 10)))
    out = background.copy()
    out[pad : pad + len(clean)] += clean
    return np.clip(out, -1, 1).astype(np.float32)


def denoised(library: RNNoiseLibrary, audio: np.ndarray, costs: list[float]) -> np.ndarray:
    suppressor = library.suppressor()
    pieces = []
    for start in range(0, len(audio), PIECE):
        began = time.perf_counter()
        pieces.append(suppressor.process(audio[start : start + PIECE]))
        costs.append(time.perf_counter() - began)
    suppressor.close()
    out = np.concatenate(pieces)
    # Line the output up with the input: the stream is late by its filters and one frame.
    delay = len(audio) - len(out)
    return np.concatenate([out, np.zeros(max(0, delay), np.float32)])[: len(audio)]


def vad_starts(model: SileroModel, audio: np.ndarray) -> list[int]:
    """Where (ms) the server's default VAD starts speech turns in `audio`."""
    vad, machine = SileroVad(model), VadStateMachine(VadParams())
    starts = []
    for prob in vad.probabilities(audio):
        event = machine.step(float(prob))
        if isinstance(event, SpeechStarted):
            starts.append(event.audio_start_ms)
    return starts


def main(args: argparse.Namespace) -> None:
    home = artifacts.default_home()
    library = RNNoiseLibrary(artifacts.verify(RNNOISE, home) / RNNOISE.files[0].name)
    vad_model = SileroModel(artifacts.verify(SILERO_VAD, home) / SILERO_VAD.files[0].name)
    asr = WhisperASR(artifacts.verify(WHISPER_TINY_EN, home), threads=2, beam_size=1)
    clips = [c for c in recorded_clips(Path(args.speech)) if c.reference]
    clean = [mono_16k(c) for c in clips]
    rng = np.random.default_rng(args.seed)
    costs: list[float] = []
    print(f"{len(clips)} recorded clips, {sum(len(x) for x in clean) / RATE:.0f} s of speech")
    print(f"{'noise':<7}{'SNR':>4}  {'':<6}{'false starts/min':>17}{'missed':>8}{'WER':>7}")
    for kind in args.noises:
        for snr in args.snr:
            rows = {"off": [0, 0, 0, 0], "rnnoise": [0, 0, 0, 0]}  # starts, missed, errs, words
            noise_s = 0.0
            for clip, speech in zip(clips, clean, strict=True):
                noisy = mixed(speech, kind, snr, rng, clean)
                pad_ms, end_ms = PAD_S * 1000, PAD_S * 1000 + len(speech) / RATE * 1000
                noise_s += 2 * PAD_S
                for arm, audio in (("off", noisy), ("rnnoise", denoised(library, noisy, costs))):
                    starts = vad_starts(vad_model, audio)
                    rows[arm][0] += sum(1 for s in starts if s < pad_ms - 100 or s > end_ms)
                    rows[arm][1] += not any(pad_ms - 300 <= s <= end_ms for s in starts)
                    text = asyncio.run(asr.transcribe(audio)).text
                    reference = normalised(clip.reference or "")
                    rows[arm][2] += edits(reference, normalised(text))
                    rows[arm][3] += len(reference)
            for arm, (starts, missed, errors, words) in rows.items():
                print(
                    f"{kind:<7}{snr:>4}  {arm:<6}{starts / (noise_s / 60):>17.1f}"
                    f"{missed:>5}/{len(clips):<2}{errors / words:>7.3f}"
                )
    clean_errors = sum(
        edits(normalised(c.reference or ""), normalised(asyncio.run(asr.transcribe(x)).text))
        for c, x in zip(clips, clean, strict=True)
    )
    clean_words = sum(len(normalised(c.reference or "")) for c in clips)
    print(f"clean speech, no noise: WER {clean_errors / clean_words:.3f}")
    ms = np.array(costs) * 1000
    print(
        f"RNNoise per 20 ms piece: p50 {np.percentile(ms, 50):.2f} ms, p95 "
        f"{np.percentile(ms, 95):.2f} ms ({np.percentile(ms, 50) / 20:.1%} of one core)"
    )
    asr.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speech", default=str(POCKETSPHINX_DATA))
    parser.add_argument("--noises", nargs="+", default=["pink", "babble", "hum"])
    parser.add_argument("--snr", nargs="+", type=float, default=[0.0, 5.0, 10.0])
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
