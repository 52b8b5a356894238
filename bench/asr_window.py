"""Whisper's window: every turn padded to 30 s, or sized to the turn. Latency and WER, side by side.

    python bench/asr_window.py [--windows none,10,15,20] [--repeat 3]

The cascade's ASR (`WhisperASR`, faster-whisper tiny.en int8, 2 threads, greedy) transcribes
every recorded clip (Debian's pocketsphinx-testdata: 14 clips of 1-7 s with reference texts)
with each window: `none` is faster-whisper's 30 s (every turn padded with silence to 30 s), a
number is `WhisperASR(window_s=...)`: a turn shorter than it is padded to it only and run
through CTranslate2 directly (which takes inputs shorter than 30 s; the encoder's work shrinks
with the window). Settings alternate clip by clip, so
machine drift hits them alike. Printed per setting: word error rate over all clips, and the
median and p95 time per transcription. Figures only. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
from common import POCKETSPHINX_DATA, edits, mono_16k, normalised, recorded_clips

from voxgate.model import artifacts
from voxgate.model.artifacts import WHISPER_TINY_EN
from voxgate.model.asr import WhisperASR
from voxgate.model.types import INPUT_SAMPLE_RATE


def main(args: argparse.Namespace) -> None:
    home = artifacts.default_home()
    clips = [c for c in recorded_clips(POCKETSPHINX_DATA) if c.reference]
    audio = [mono_16k(c) for c in clips]
    margins = [None if m == "none" else float(m) for m in args.windows.split(",")]
    models = {
        m: WhisperASR(artifacts.verify(WHISPER_TINY_EN, home), threads=2, window_s=m)
        for m in margins
    }
    for asr in models.values():  # warm up
        asyncio.run(asr.transcribe(audio[0]))
    times: dict[float | None, list[float]] = {m: [] for m in margins}
    errors = dict.fromkeys(margins, 0)
    words = sum(len(normalised(c.reference or "")) for c in clips)
    for repeat in range(args.repeat):
        for clip, samples in zip(clips, audio, strict=True):
            order = margins if repeat % 2 == 0 else margins[::-1]
            for margin in order:
                began = time.perf_counter()
                text = asyncio.run(models[margin].transcribe(samples)).text
                times[margin].append((time.perf_counter() - began) * 1000)
                if repeat == 0:
                    errors[margin] += edits(normalised(clip.reference or ""), normalised(text))
    seconds = [len(a) / INPUT_SAMPLE_RATE for a in audio]
    print(
        f"{len(clips)} clips, {min(seconds):.1f}-{max(seconds):.1f} s, {words} words; "
        f"{args.repeat} passes, settings alternating clip by clip"
    )
    print(f"{'window':>16} {'WER':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for margin in margins:
        name = "30 s (padded)" if margin is None else f"{margin:g} s"
        p50 = statistics.median(times[margin])
        p95 = float(np.percentile(times[margin], 95))
        print(f"{name:>16} {errors[margin] / words:>7.1%} {p50:>8.0f} {p95:>8.0f}")
    for asr in models.values():
        asr.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", default="none,10,15,20")
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args())
