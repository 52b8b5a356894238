"""What the benchmarks share: the speech they send, one spoken turn and its record, the figures
they print (percentiles, word error rate, status counts) and the lookup of the server's process.

A benchmark runs as a script (`python bench/x.py`), so this folder is on `sys.path` and
`from common import ...` finds this module. It speaks to a server only through
`voxgate.clients.realtime_client`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import soundfile as sf
import soxr
from websockets.exceptions import WebSocketException

from voxgate.clients.realtime_client import SAMPLE_RATE, RealtimeClient, RealtimeError
from voxgate.model.types import INPUT_SAMPLE_RATE
from voxgate.streaming.timings import TURN_STAGES

FAILURES = (TimeoutError, OSError, RealtimeError, WebSocketException)
"""What a turn or a connection can fail with (OSError covers ConnectionError)."""
ANSWERED = ("completed", "incomplete")
"""Statuses of an answer whose first audio counts: `incomplete` is an answer cut at
max_output_tokens, which says nothing about how soon it started."""
STAGES = (*TURN_STAGES, "turn_latency")
"""The server's timings of a turn (`x_voxgate.timings_ms`) in the order reports print them."""

# --- speech --------------------------------------------------------------------------------

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
"""Debian's pocketsphinx-testdata: real read speech (cards/ 1-3.5 s, librivox/ 3-7 s)."""
RAW_RATE = 16_000
"""pocketsphinx's `.raw` files are headerless 16 kHz mono s16le."""
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
PIPER_QUESTIONS = (
    "What is the capital of France?",
    "Can you tell me a fun fact about octopuses?",
    "How many minutes are there in a day?",
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "Give me a tip for sleeping better.",
    "What is the tallest mountain in the world?",
    "How do I say thank you in Spanish?",
)
PCM_RATE = 24_000
"""REST `response_format=pcm` is 24 kHz s16le mono."""
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


@dataclass
class Clip:
    name: str
    audio: np.ndarray
    sample_rate: int
    reference: str | None = None


def sphinx_transcripts(directory: Path) -> dict[str, str]:
    """Reference texts from sphinx `transcription` files (`<s> words </s> (utterance-id)`)."""
    texts: dict[str, str] = {}
    for path in directory.rglob("*"):
        if path.is_file() and (path.name == "transcription" or path.suffix == ".transcription"):
            for line in path.read_text(errors="replace").splitlines():
                if match := _SPHINX_LINE.match(line):
                    texts[match["id"]] = match["text"]
    return texts


def recorded_clips(directory: Path) -> list[Clip]:
    """Every audio file under `directory` (and `.raw` files, read as 16 kHz s16le mono)."""
    references = sphinx_transcripts(directory)
    clips = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".raw":
            audio, rate = np.fromfile(path, dtype="<i2"), RAW_RATE
        elif path.suffix.lower() in AUDIO_SUFFIXES:
            audio, rate = sf.read(path, dtype="float32")
        else:
            continue
        name = str(path.relative_to(directory))
        clips.append(Clip(name, audio, int(rate), references.get(path.stem)))
    return clips


def default_piper_voice() -> Path:
    home = Path(os.environ.get("VOXGATE_HOME", Path.home() / ".cache" / "voxgate"))
    return home / "models" / "piper-en_US-joe-medium" / "en_US-joe-medium.onnx"


def piper_clips(voice_path: Path) -> list[Clip]:
    from piper import PiperVoice  # only the fallback needs it (GPL, in the `cpu` extra)

    voice = PiperVoice.load(str(voice_path))
    clips = []
    for i, text in enumerate(PIPER_QUESTIONS):
        chunks = list(voice.synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        clips.append(Clip(f"piper-{i:02d}", audio, chunks[0].sample_rate, text))
    return clips


def add_speech_arguments(parser: argparse.ArgumentParser) -> None:
    """`--speech`, `--source` and `--piper-voice`, which `load_speech` reads."""
    parser.add_argument(
        "--speech",
        default=str(POCKETSPHINX_DATA),
        help="a folder of recorded questions (audio files; .raw = 16 kHz s16le mono)",
    )
    parser.add_argument(
        "--source",
        choices=("auto", "recorded", "piper"),
        default="auto",
        help="auto: recorded speech if found, else Piper",
    )
    parser.add_argument("--piper-voice", default=str(default_piper_voice()))


def load_speech(args: argparse.Namespace) -> tuple[list[Clip], str]:
    """The clips of `--source`, `--speech` and `--piper-voice`, and a line that says where they
    came from."""
    if args.source != "piper":
        directory = Path(args.speech)
        clips = recorded_clips(directory) if directory.is_dir() else []
        if clips:
            return clips, f"recorded: {len(clips)} clips under {directory}"
        if args.source == "recorded":
            sys.exit(
                f"no speech under {directory}: apt-get install pocketsphinx-testdata, "
                "or pass --speech DIR"
            )
    voice = Path(args.piper_voice)
    if not voice.is_file():
        sys.exit(f"no Piper voice at {voice}: set VOXGATE_HOME, or run voxgate fetch-models")
    clips = piper_clips(voice)
    return clips, f"synthesised: {len(clips)} Piper questions ({voice.name})"


def as_float(audio: np.ndarray) -> np.ndarray:
    """Clips are float32, or int16 for the headerless `.raw` ones."""
    return audio.astype(np.float32) / (32768 if audio.dtype == np.int16 else 1)


def mono_16k(clip: Clip) -> np.ndarray:
    """The clip as float32 mono at the server's input rate (what its ASR hears)."""
    audio = as_float(clip.audio)
    if audio.ndim > 1:
        audio = audio.mean(axis=1, dtype=np.float32)
    if clip.sample_rate != INPUT_SAMPLE_RATE:
        audio = soxr.resample(audio, clip.sample_rate, INPUT_SAMPLE_RATE).astype(np.float32)
    return audio


def wav_file(audio: np.ndarray, rate: int) -> bytes:
    """`audio` as the bytes of a 16-bit WAV file (what a REST transcription posts)."""
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# --- one spoken turn -----------------------------------------------------------------------


@dataclass
class TurnRecord:
    turn: int
    session: int
    clip: str
    reference: str | None
    ok: bool
    failure: str | None = None
    status: str | None = None
    responses: int = 0
    user_transcript: str = ""
    assistant_transcript: str = ""
    reply_audio_s: float = 0.0
    client_turn_latency_ms: float | None = None
    server_timings_ms: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


def session_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `session.update` of `--instructions` and `--max-output-tokens`, where given."""
    update: dict[str, Any] = {}
    if args.instructions:
        update["instructions"] = args.instructions
    if args.max_output_tokens:
        update["max_output_tokens"] = args.max_output_tokens
    return update


async def one_turn(client: RealtimeClient, clip: Clip, turn: int, session: int) -> TurnRecord:
    """Speak `clip` and wait for the whole answer; a failure is noted in the record."""
    record = TurnRecord(turn, session, clip.name, clip.reference, ok=False)
    try:
        result = await client.send_turn(clip.audio, clip.sample_rate)
    except FAILURES as e:
        record.failure = f"{type(e).__name__}: {e}"
        return record
    record.status = result.status
    record.responses = result.responses
    record.user_transcript = result.user_transcript
    record.assistant_transcript = result.assistant_transcript
    record.reply_audio_s = round(len(result.audio) / SAMPLE_RATE, 3)
    record.client_turn_latency_ms = (
        None if result.turn_latency_ms is None else round(result.turn_latency_ms, 1)
    )
    record.server_timings_ms = result.server_timings_ms
    record.errors = result.errors
    if result.status not in ANSWERED:
        record.failure = f"response status {result.status}: {result.status_details}"
    elif result.turn_latency_ms is None:
        record.failure = "no answer audio (or no speech found in the clip)"
    else:
        record.ok = True
    return record


def progress_line(tag: str, record: TurnRecord, *, heard: bool = True) -> str:
    """One turn as a progress line: its latencies, and with `heard` what the server heard."""
    if not record.ok:
        return f"{tag} {record.clip}: FAILED {record.failure}"
    server = record.server_timings_ms.get("turn_latency")
    return (
        f"{tag} {record.clip}: client {record.client_turn_latency_ms:.0f} ms, server "
        f"{'n/a' if server is None else f'{server:.0f} ms'}"
        + (f" | heard {record.user_transcript!r}" if heard else "")
    )


def status_counts(statuses: Iterable[str]) -> str:
    """How many answers ended in each status: "3 completed, 1 incomplete"."""
    return ", ".join(f"{n} {status}" for status, n in sorted(Counter(statuses).items()))


def statuses(records: Sequence[TurnRecord]) -> str:
    """The answers' statuses (`raised`: the turn timed out or lost its connection), and the
    turns the server VAD split in two."""
    split = sum(r.responses > 1 for r in records)
    line = status_counts(r.status or "raised" for r in records)
    return line + (f"; {split} turns split by the server VAD" if split else "")


# --- figures -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default), or None without values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, mean, min and max of at least one value."""
    data = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(data, 50)),
        "p95": float(np.percentile(data, 95)),
        "mean": float(data.mean()),
        "min": float(data.min()),
        "max": float(data.max()),
    }


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SPELLED = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def _spelled(word: str) -> list[str]:
    """Whisper writes "10 of clubs" and "Mr."; the references say "ten" and "mister"."""
    if word.isdigit() and int(word) < 100:
        n = int(word)
        if n < 20:
            return [_ONES[n]]
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    return [_SPELLED.get(word, word)]


def normalised(text: str) -> list[str]:
    """The words of `text` as a word error rate compares them: lower case, numbers spelled."""
    return [w for raw in re.findall(r"[a-z0-9']+", text.lower()) for w in _spelled(raw)]


def edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hypothesis, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


# --- the server's process ------------------------------------------------------------------


def server_pid(args: argparse.Namespace) -> int:
    """`--server-pid`, else the process that listens on `--url`'s port (on this machine)."""
    import psutil  # not a core dependency (the `test` extra, and vLLM's): only asked for here

    if args.server_pid:
        return args.server_pid
    port = urlparse(args.url).port or 80
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    sys.exit(f"no process listens on port {port}: pass --server-pid")
