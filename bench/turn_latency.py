"""Turn latency of a running voxgate server, spoken turn by spoken turn.

    python bench/turn_latency.py --url ws://127.0.0.1:8000/v1/realtime --turns 10

Each turn streams a recorded question at real-time pace (plus trailing silence, so the server
VAD ends the turn) and waits for the whole answer. It prints p50 / p95 / mean of the
client-measured turn latency (first answer audio received - last voiced input sample sent) and
of every server stage reported in `response.done`'s `x_voxgate.timings_ms`. Figures only: it
never passes or fails on time.

Sessions: turns run in sessions of `--session-turns` (default 5) turns on one connection, then
a fresh connection. Several turns per connection is how people use a voice agent, and it
exercises what a one-shot client never does (the VAD re-arming after an answer, the conversation
growing). But the context the LM re-reads grows with every turn, so one long session would
measure context length rather than the server; a fresh session every few turns keeps that
bounded and the figures comparable between runs with different `--turns`.

Speech: recorded clips from Debian's pocketsphinx-testdata (real voices, with reference
transcripts for most clips) when present, else questions synthesised with Piper.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from plots import plot_path_problem, turn_latency_figure
from websockets.exceptions import WebSocketException

from voxgate.clients.realtime_client import RealtimeClient, RealtimeError

FAILURES = (TimeoutError, OSError, RealtimeError, WebSocketException)
"""What a turn or a connection can fail with (OSError covers ConnectionError)."""
ANSWERED = ("completed", "incomplete")
"""Statuses of an answer whose first audio counts: `incomplete` is an answer cut at
max_output_tokens, which says nothing about how soon it started."""

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
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
STAGES = (
    "end_of_turn_wait",
    "asr",
    "lm_first_token",
    "lm_first_sentence",
    "tts_first_chunk",
    "server_overhead",
    "turn_latency",
)
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


@dataclass
class Clip:
    name: str
    audio: np.ndarray
    sample_rate: int
    reference: str | None = None


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


# --- speech --------------------------------------------------------------------------------


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


def load_speech(args: argparse.Namespace) -> tuple[list[Clip], str]:
    """The clips and a line that says where they came from."""
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


# --- running turns -------------------------------------------------------------------------


async def one_turn(client: RealtimeClient, clip: Clip, turn: int, session: int) -> TurnRecord:
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
    record.reply_audio_s = round(len(result.audio) / 24_000, 3)
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


async def run(args: argparse.Namespace, clips: list[Clip]) -> list[TurnRecord]:
    session_update: dict[str, Any] = {}
    if args.instructions:
        session_update["instructions"] = args.instructions
    if args.max_output_tokens:
        session_update["max_output_tokens"] = args.max_output_tokens
    records: list[TurnRecord] = []
    total = args.warmup + args.turns
    turn, session = 0, 0
    while turn < total:
        # Warm-up turns get a session of their own so measured sessions all start alike.
        size = args.warmup if turn < args.warmup else args.session_turns
        session += 1
        client = RealtimeClient(args.url, api_key=args.api_key, timeout_s=args.timeout)
        try:
            await client.connect()
            await client.session_update(session_update)
        except FAILURES as e:
            failure = f"session did not start: {type(e).__name__}: {e}"
            print(f"session {session}: {failure}", file=sys.stderr)
            clip = clips[turn % len(clips)]
            records.append(
                TurnRecord(turn, session, clip.name, clip.reference, ok=False, failure=failure)
            )
            turn += 1
            await client.close()
            continue
        try:
            for _ in range(min(size, total - turn)):
                clip = clips[turn % len(clips)]
                record = await one_turn(client, clip, turn, session)
                records.append(record)
                measured = turn >= args.warmup
                print(progress_line(record, measured), file=sys.stderr)
                turn += 1
                if record.status is None:
                    break  # the turn raised: its session is in doubt, carry on in a fresh one
        finally:
            await client.close()
    return records[args.warmup :]


def progress_line(record: TurnRecord, measured: bool) -> str:
    tag = f"turn {record.turn:>3}" if measured else "warm-up "
    if not record.ok:
        return f"{tag} {record.clip}: FAILED {record.failure}"
    server = record.server_timings_ms.get("turn_latency")
    return (
        f"{tag} {record.clip}: client {record.client_turn_latency_ms:.0f} ms, server "
        f"{'n/a' if server is None else f'{server:.0f} ms'} | heard {record.user_transcript!r}"
    )


# --- report --------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(data, 50)),
        "p95": float(np.percentile(data, 95)),
        "mean": float(data.mean()),
        "min": float(data.min()),
        "max": float(data.max()),
    }


def statuses(records: list[TurnRecord]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        key = r.status or "raised"
        counts[key] = counts.get(key, 0) + 1
    split = sum(r.responses > 1 for r in records)
    line = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return line + (f"; {split} turns split by the server VAD" if split else "")


def table(records: list[TurnRecord], source: str, args: argparse.Namespace) -> str:
    ok = [r for r in records if r.ok]
    rows: list[tuple[str, list[float]]] = [
        ("client turn_latency", [r.client_turn_latency_ms for r in ok if r.client_turn_latency_ms])
    ]
    # Stages this script does not know yet (a newer server) get rows too, after the known ones.
    extra = sorted({k for r in ok for k in r.server_timings_ms} - set(STAGES))
    rows += [
        (
            f"server {stage}",
            [r.server_timings_ms[stage] for r in ok if stage in r.server_timings_ms],
        )
        for stage in (*STAGES, *extra)
    ]
    rows.append(
        (
            "client - server",
            [
                r.client_turn_latency_ms - r.server_timings_ms["turn_latency"]
                for r in ok
                if r.client_turn_latency_ms is not None and "turn_latency" in r.server_timings_ms
            ],
        )
    )
    lines = [
        f"url:      {args.url}",
        f"speech:   {source}",
        f"turns:    {len(records)} measured ({len(records) - len(ok)} failed), "
        f"{args.warmup} warm-up not counted, sessions of up to {args.session_turns} turns",
        f"answers:  {statuses(records)}",
        "",
        f"{'milliseconds':<28}{'n':>4}{'p50':>9}{'p95':>9}{'mean':>9}{'min':>9}{'max':>9}",
    ]
    for name, values in rows:
        if not values:
            lines.append(f"{name:<28}{0:>4}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{'-':>9}")
            continue
        s = summary(values)
        lines.append(
            f"{name:<28}{len(values):>4}"
            + "".join(f"{s[k]:>9.1f}" for k in ("p50", "p95", "mean", "min", "max"))
        )
    for r in records:
        if not r.ok:
            lines.append(f"failed: turn {r.turn} ({r.clip}): {r.failure}")
    return "\n".join(lines)


def results(records: list[TurnRecord], source: str, args: argparse.Namespace) -> dict[str, Any]:
    """What `--json` writes and `--plot` draws."""
    return {"url": args.url, "speech": source, "turns": [vars(r) for r in records]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--turns", type=int, default=10, help="measured turns")
    parser.add_argument(
        "--warmup", type=int, default=1, help="turns run first and not counted (default 1)"
    )
    parser.add_argument(
        "--session-turns", type=int, default=5, help="turns per connection before a fresh one"
    )
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
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--instructions", help="session instructions (default: the server's)")
    parser.add_argument(
        "--max-output-tokens", type=int, help="cap answers (shorter turns; first audio unchanged)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per answer")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also dump the raw per-turn numbers as JSON (to PATH, or stdout)",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw each stage's latencies, per turn (.png or .svg; the `bench` extra)",
    )
    args = parser.parse_args(argv)
    if args.turns < 1 or args.warmup < 0 or args.session_turns < 1:
        parser.error("--turns and --session-turns must be positive, --warmup not negative")
    if args.plot and (problem := plot_path_problem(args.plot)):
        parser.error(problem)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips, source = load_speech(args)
    started = time.monotonic()
    records = asyncio.run(run(args, clips))
    print(table(records, source, args))
    print(f"wall time: {time.monotonic() - started:.0f} s")
    measured = results(records, source, args)
    if args.json:
        dump = json.dumps(measured, indent=2)
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    if args.plot:
        turn_latency_figure(measured, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
