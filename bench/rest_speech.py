"""REST speech of a running voxgate server: ASR accuracy and speed, TTS latency and speed.

    python bench/rest_speech.py --url http://127.0.0.1:8000

ASR: every recorded clip (Debian's pocketsphinx-testdata by default) is posted to
`/v1/audio/transcriptions` as a WAV file; it prints the word error rate against the clips'
reference transcripts and the real-time factor (request time / audio time), per folder of
clips, then once more for all clips joined into one long file (which the server cuts at its
silences). TTS: a few texts of different lengths are streamed from `/v1/audio/speech` as pcm;
it prints the time to the first audio byte, the real-time factor (time to the last byte / audio
time) and the word error rate of the speech transcribed back. Figures only: it never passes or
fails on time. It measures whatever backbone the server runs (the first /v1/models entry):
run it once per backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import (
    PCM_RATE,
    POCKETSPHINX_DATA,
    Clip,
    as_float,
    edits,
    mono_16k,
    normalised,
    recorded_clips,
    summary,
    wav_file,
)
from plots import plot_path_problem, rtf_figure

from voxgate.model.types import INPUT_SAMPLE_RATE

TTS_TEXTS = {
    "short": "Hello there.",
    "medium": "The weather is lovely today. Let us go for a walk in the park, and then have lunch.",
    "long": (
        # American spellings: Whisper writes them, and a spelling is not a recognition error.
        "It was a bright cold day in April, and the clocks were striking thirteen. The hallway "
        "smelled of boiled cabbage and old rag mats. At one end of it a colored poster, too "
        "large for indoor display, had been tacked to the wall. It depicted simply an enormous "
        "face, more than a meter wide: the face of a man of about forty-five, with a heavy "
        "black mustache and ruggedly handsome features."
    ),
}


# --- measuring ------------------------------------------------------------------------------


@dataclass
class AsrRecord:
    clip: str
    audio_s: float
    seconds: float
    reference: str | None
    text: str
    errors: int | None
    reference_words: int | None

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s


@dataclass
class TtsRecord:
    name: str
    chars: int
    first_audio_s: float
    seconds: float
    audio_s: float
    text_back: str
    errors: int
    reference_words: int

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s


def transcribe(http: httpx.Client, name: str, audio: np.ndarray, rate: int) -> tuple[str, float]:
    started = time.perf_counter()
    response = http.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": (f"{name}.wav", wav_file(audio, rate), "audio/wav")},
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["text"], seconds


def asr_record(http: httpx.Client, clip: Clip) -> AsrRecord:
    audio = as_float(clip.audio)
    text, seconds = transcribe(http, Path(clip.name).stem, audio, clip.sample_rate)
    reference = normalised(clip.reference) if clip.reference else None
    return AsrRecord(
        clip.name,
        len(audio) / clip.sample_rate,
        seconds,
        clip.reference,
        text,
        None if reference is None else edits(reference, normalised(text)),
        None if reference is None else len(reference),
    )


def joined(clips: list[Clip], gap_s: float = 1.0) -> Clip:
    """All clips with references as one long 16 kHz file, 1 s of silence between them."""
    parts, references = [], []
    for clip in clips:
        parts += [mono_16k(clip), np.zeros(int(gap_s * INPUT_SAMPLE_RATE))]
        references.append(clip.reference or "")
    return Clip("all clips joined", np.concatenate(parts), INPUT_SAMPLE_RATE, " ".join(references))


def tts_record(http: httpx.Client, voice: str, name: str, text: str) -> TtsRecord:
    body = {"model": "tts-1", "voice": voice, "input": text, "response_format": "pcm"}
    pcm = bytearray()
    first = None
    started = time.perf_counter()
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - started
            pcm += chunk
    seconds = time.perf_counter() - started
    audio = np.frombuffer(bytes(pcm), "<i2").astype(np.float32) / 32768
    back, _ = transcribe(http, name, audio, PCM_RATE)
    reference = normalised(text)
    return TtsRecord(
        name,
        len(text),
        first if first is not None else seconds,
        seconds,
        len(audio) / PCM_RATE,
        back,
        edits(reference, normalised(back)),
        len(reference),
    )


# --- report ---------------------------------------------------------------------------------


def stat_row(name: str, values: list[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    if not values:
        return f"{name:<34}{0:>4}"
    s = summary([v * scale for v in values])
    return f"{name:<34}{len(values):>4}" + "".join(
        f"{s[k]:>9{fmt}}" for k in ("p50", "p95", "mean", "min", "max")
    )


def asr_report(records: list[AsrRecord], long_file: AsrRecord | None) -> list[str]:
    lines = [f"{'ASR':<34}{'n':>4}{'p50':>9}{'p95':>9}{'mean':>9}{'min':>9}{'max':>9}"]
    groups: dict[str, list[AsrRecord]] = {}
    for r in records:
        folder = str(Path(r.clip).parent)
        groups.setdefault("(top)" if folder == "." else folder, []).append(r)
    for group, rows in [*sorted(groups.items()), ("all", records)]:
        lines.append(stat_row(f"{group}: request seconds", [r.seconds for r in rows]))
        lines.append(stat_row(f"{group}: real-time factor", [r.rtf for r in rows]))
        scored = [r for r in rows if r.errors is not None]
        if scored:
            words = sum(r.reference_words or 0 for r in scored)
            errors = sum(r.errors or 0 for r in scored)
            audio = sum(r.audio_s for r in rows)
            total = sum(r.seconds for r in rows)
            lines.append(
                f"{group}: WER {100 * errors / max(words, 1):.1f} % ({errors}/{words} words), "
                f"overall RTF {total / audio:.3f} over {audio:.1f} s of audio"
            )
    if long_file is not None and long_file.errors is not None:
        lines.append(
            f"one long file ({long_file.audio_s:.1f} s, cut at silences by the server): "
            f"RTF {long_file.rtf:.3f}, WER "
            f"{100 * long_file.errors / max(long_file.reference_words or 1, 1):.1f} %"
        )
    return lines


def tts_report(records: list[TtsRecord]) -> list[str]:
    lines = [
        f"{'TTS (pcm, streamed)':<34}{'n':>4}{'p50':>9}{'p95':>9}{'mean':>9}{'min':>9}{'max':>9}"
    ]
    for name in TTS_TEXTS:
        rows = [r for r in records if r.name == name]
        if not rows:
            continue
        label = f"{name} ({rows[0].chars} chars, {rows[0].audio_s:.1f} s)"
        lines.append(
            stat_row(f"{label}: first audio ms", [r.first_audio_s for r in rows], 1000, ".0f")
        )
        lines.append(stat_row(f"{name}: real-time factor", [r.rtf for r in rows]))
    errors = sum(r.errors for r in records)
    words = sum(r.reference_words for r in records)
    lines.append(f"round trip (speech transcribed back): WER {100 * errors / max(words, 1):.1f} %")
    return lines


def results(
    url: str,
    model: str,
    asr: list[AsrRecord],
    long_file: AsrRecord | None,
    tts: list[TtsRecord],
) -> dict[str, Any]:
    """What `--json` writes and `--plot` draws."""
    return {
        "url": url,
        "model": model,
        "asr": [asdict(r) | {"rtf": r.rtf} for r in asr],
        "asr_long_file": None if long_file is None else asdict(long_file) | {"rtf": long_file.rtf},
        "tts": [asdict(r) | {"rtf": r.rtf} for r in tts],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument(
        "--speech",
        default=str(POCKETSPHINX_DATA),
        help="a folder of recorded clips with sphinx `transcription` files (the default: "
        "pocketsphinx-testdata)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="TTS runs per text (default 3)")
    parser.add_argument("--voice", help="TTS voice (default: the server's first)")
    parser.add_argument("--skip-asr", action="store_true")
    parser.add_argument("--skip-tts", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", metavar="PATH", help="also write the raw records as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw the real-time factor per request (.png or .svg; the `bench` extra)",
    )
    args = parser.parse_args(argv)
    if args.plot and (problem := plot_path_problem(args.plot)):
        parser.error(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    http = httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)
    model = http.get("/v1/models").json()["data"][0]["id"]
    voices = http.get("/v1/audio/voices")
    voices.raise_for_status()
    voice = args.voice or voices.json()["data"][0]["id"]
    print(f"url: {args.url}  model: {model}  voice: {voice}")
    started = time.monotonic()
    asr: list[AsrRecord] = []
    long_file = None
    tts: list[TtsRecord] = []

    if not args.skip_asr:
        directory = Path(args.speech)
        clips = recorded_clips(directory) if directory.is_dir() else []
        if not clips:
            print(f"no recorded speech under {directory} (apt-get install pocketsphinx-testdata)")
        else:
            print(f"speech: {len(clips)} clips under {directory}", file=sys.stderr)
            asr_record(http, clips[0])  # warm-up, not counted
            for clip in clips:
                asr.append(asr_record(http, clip))
                r = asr[-1]
                print(
                    f"  {r.clip}: {r.seconds:.2f} s for {r.audio_s:.1f} s | {r.text!r}",
                    file=sys.stderr,
                )
            long_file = asr_record(http, joined([c for c in clips if c.reference]))
            print("\n".join(asr_report(asr, long_file)))

    if not args.skip_tts:
        tts_record(http, voice, "warm-up", TTS_TEXTS["short"])
        for _ in range(args.repeat):
            for name, text in TTS_TEXTS.items():
                tts.append(tts_record(http, voice, name, text))
                r = tts[-1]
                print(
                    f"  {name}: first audio {1000 * r.first_audio_s:.0f} ms, {r.seconds:.2f} s "
                    f"for {r.audio_s:.1f} s | back: {r.text_back!r}",
                    file=sys.stderr,
                )
        print("\n".join(tts_report(tts)))

    print(f"wall time: {time.monotonic() - started:.0f} s")
    measured = results(args.url, model, asr, long_file, tts)
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2) + "\n")
    if args.plot:
        rtf_figure(measured, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
