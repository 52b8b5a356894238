"""Realtime turns under REST load: first answer audio with 0, 1, 2, 4 REST clients beside it.

    python bench/rest_load.py --url ws://127.0.0.1:8000/v1/realtime --levels 0,1,2,4 --rounds 4

Against one running server, spoken realtime turns (the recorded questions of `turn_latency.py`,
server VAD) run in blocks: each block is one load level and one fresh realtime session of
`--turns-per-block` turns, with that many REST clients working from just before the first turn
until the last answer is done. Each REST client loops without pause, alternating
`/v1/audio/transcriptions` of a recorded clip and a streamed `/v1/audio/speech` of two
sentences (client i starts with the one i % 2 names), so half the REST work is each kind at
every level. A request refused with 429 (the server's `max_concurrent_requests`) is sent again
after `--retry-s`, so a level keeps about N requests in flight. A round runs every level once,
in the order of a balanced Latin square (every level at every position once in `len(levels)`
rounds), so drift on the machine hits all levels alike.

Per level it prints n, p50 / p95 of the client turn latency (last voiced sample sent to first
answer audio received) and of the server's `x_voxgate.timings_ms.turn_latency`, each as a
ratio to the unloaded level too; the p50 of the server's stages; and the REST work done while
the turns ran (requests per minute and seconds of audio per second, per kind). Figures only: it
never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from common import (
    FAILURES,
    PCM_RATE,
    POCKETSPHINX_DATA,
    Clip,
    TurnRecord,
    as_float,
    default_piper_voice,
    load_speech,
    one_turn,
    percentile,
    progress_line,
    session_settings,
    wav_file,
)

from voxgate.clients.realtime_client import RealtimeClient

STAGES = {
    "asr": "asr",
    "lm_first_token": "lm token",
    "lm_first_sentence": "lm clause",
    "tts_first_chunk": "tts chunk",
}
"""Server stages whose p50 is printed per level (definitions in `streaming/timings.py`), with
their column titles."""
SPEECH_TEXT = "The weather is lovely today. Let us go for a walk in the park, and then have lunch."
"""Two sentences: the REST route synthesises them one after the other (two TTS jobs)."""
KINDS = ("transcription", "speech")


@dataclass
class RestRecord:
    kind: str
    client: int
    done_at: float
    """Seconds since the block's load started."""
    seconds: float
    audio_s: float
    failure: str | None = None
    refused: bool = False
    """429 `rate_limited`: the server was serving its `max_concurrent_requests`."""


@dataclass
class Block:
    round: int
    level: int
    turns: list[TurnRecord]
    rest: list[RestRecord]
    load_s: float
    """Seconds from the load's start to the last answer of the block (the throughput window)."""


@dataclass
class RestMaterial:
    """What the REST clients send: WAV files encoded once, so the load costs the client little."""

    wavs: list[tuple[str, bytes, float]]
    voice: str
    text: str = SPEECH_TEXT


async def transcribe(http: httpx.AsyncClient, name: str, wav: bytes) -> None:
    response = await http.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": (name, wav, "audio/wav")},
    )
    response.raise_for_status()


async def speak(http: httpx.AsyncClient, voice: str, text: str) -> float:
    """Stream `text` as pcm to the end; return the seconds of audio received."""
    body = {"model": "tts-1", "voice": voice, "input": text, "response_format": "pcm"}
    size = 0
    async with http.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            size += len(chunk)
    return size / 2 / PCM_RATE


@dataclass
class Load:
    """N REST clients looping until `stop` is set; each finishes its request in progress."""

    http: httpx.AsyncClient
    material: RestMaterial
    clients: int
    retry_s: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    records: list[RestRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, i: int) -> None:
        count = 0
        while not self.stop.is_set():
            kind = KINDS[(i + count) % 2]
            started = time.monotonic()
            refused = False
            try:
                if kind == "transcription":
                    name, wav, audio_s = self.material.wavs[
                        (i + count // 2) % len(self.material.wavs)
                    ]
                    await transcribe(self.http, name, wav)
                else:
                    audio_s = await speak(self.http, self.material.voice, self.material.text)
                failure = None
            except httpx.HTTPError as e:
                audio_s, failure = 0.0, f"{type(e).__name__}: {e}"
                refused = isinstance(e, httpx.HTTPStatusError) and e.response.status_code == 429
            done = time.monotonic()
            self.records.append(
                RestRecord(kind, i, done - self.started, done - started, audio_s, failure, refused)
            )
            if refused:
                # The same request again soon: the level is about N requests kept in flight.
                # (Honouring Retry-After, 2 s, would leave this client idle instead.)
                await asyncio.sleep(self.retry_s)
            else:
                count += 1


# --- running -------------------------------------------------------------------------------


def latin_square(levels: list[int], rounds: int) -> list[list[int]]:
    """Round r's order: a Williams design (0, 1, L-1, 2, L-2, ...) shifted by r, so over L
    rounds every level takes every position once (and, for even L, follows every other once)."""
    size = len(levels)
    base, low, high = [0], 1, size - 1
    while len(base) < size:
        base.append(low)
        low += 1
        if len(base) < size:
            base.append(high)
            high -= 1
    return [[levels[(b + r) % size] for b in base] for r in range(rounds)]


async def open_session(args: argparse.Namespace) -> RealtimeClient:
    client = RealtimeClient(args.url, api_key=args.api_key, timeout_s=args.timeout)
    try:
        await client.connect()
        await client.session_update(session_settings(args))
    except BaseException:
        await client.close()
        raise
    return client


async def run_block(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    material: RestMaterial,
    clips: list[Clip],
    round_: int,
    level: int,
    first_turn: int,
) -> Block:
    turns: list[TurnRecord] = []
    # The session is set up before the load starts: only the turns are measured under it.
    try:
        client = await open_session(args)
    except FAILURES as e:
        clip = clips[first_turn % len(clips)]
        failure = f"session did not start: {type(e).__name__}: {e}"
        turns.append(TurnRecord(first_turn, round_, clip.name, clip.reference, False, failure))
        return Block(round_, level, turns, [], 0.0)
    load = Load(http, material, level, args.retry_s)
    load_task = asyncio.create_task(load.run())
    try:
        # Let the REST requests reach the server's queues before the question starts.
        await asyncio.sleep(args.ramp_s if level else 0.0)
        for k in range(args.turns_per_block):
            turn = first_turn + k
            record = await one_turn(client, clips[turn % len(clips)], turn, round_)
            turns.append(record)
            tag = f"turn {turn:>3} level {level}"
            print(progress_line(tag, record, heard=False), file=sys.stderr)
            if record.status is None:
                break  # the turn raised: the session is in doubt, end the block here
        load_s = time.monotonic() - load.started
    finally:
        load.stop.set()
        await client.close()
        # Requests in flight finish (and are not counted), so none spills into the next block.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(load_task), args.timeout)
        if not load_task.done():
            load_task.cancel()
            await asyncio.gather(load_task, return_exceptions=True)
    rest = [r for r in load.records if r.done_at <= load_s]
    return Block(round_, level, turns, rest, load_s)


async def rest_material(
    http: httpx.AsyncClient, clips: list[Clip], voice: str | None
) -> RestMaterial:
    if voice is None:
        voices = await http.get("/v1/audio/voices")
        voices.raise_for_status()
        voice = voices.json()["data"][0]["id"]
    wavs = []
    for clip in clips:
        audio = as_float(clip.audio)
        name = f"{Path(clip.name).stem}.wav"
        wavs.append((name, wav_file(audio, clip.sample_rate), len(audio) / clip.sample_rate))
    return RestMaterial(wavs, voice)


async def run(
    args: argparse.Namespace, turn_clips: list[Clip], rest_clips: list[Clip]
) -> tuple[list[Block], RestMaterial]:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base_url = args.url.replace("ws://", "http://").replace("wss://", "https://")
    limits = httpx.Limits(max_connections=max(args.levels) + 2)
    async with httpx.AsyncClient(
        base_url=base_url.removesuffix("/v1/realtime"),
        headers=headers,
        timeout=args.timeout,
        limits=limits,
    ) as http:
        material = await rest_material(http, rest_clips, args.voice)
        # Warm-up, not counted: one request of each kind and `--warmup` unloaded turns.
        await transcribe(http, *material.wavs[0][:2])
        await speak(http, material.voice, material.text)
        if args.warmup:
            client = await open_session(args)
            try:
                for k in range(args.warmup):
                    record = await one_turn(client, turn_clips[k % len(turn_clips)], -1, -1)
                    tag = f"warm-up: turn {record.turn:>3} level 0"
                    print(progress_line(tag, record, heard=False), file=sys.stderr)
            finally:
                await client.close()
        blocks: list[Block] = []
        turn = 0
        for round_, order in enumerate(latin_square(args.levels, args.rounds)):
            print(f"round {round_ + 1}/{args.rounds}: levels {order}", file=sys.stderr)
            for level in order:
                block = await run_block(args, http, material, turn_clips, round_, level, turn)
                blocks.append(block)
                turn += args.turns_per_block
        return blocks, material


# --- report --------------------------------------------------------------------------------


def cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def client_latencies(turns: list[TurnRecord]) -> list[float]:
    return [t.client_turn_latency_ms for t in turns if t.ok and t.client_turn_latency_ms]


def server_latencies(turns: list[TurnRecord]) -> list[float]:
    return [
        t.server_timings_ms["turn_latency"]
        for t in turns
        if t.ok and "turn_latency" in t.server_timings_ms
    ]


def latency_rows(blocks: list[Block], levels: list[int]) -> list[str]:
    per_level = {n: [t for b in blocks if b.level == n for t in b.turns] for n in levels}
    client = {n: client_latencies(ts) for n, ts in per_level.items()}
    server = {n: server_latencies(ts) for n, ts in per_level.items()}
    base = levels[0]
    header = (
        f"{'REST clients':<13}{'n':>4}{'fail':>5} | {'client p50':>10}{'p95':>7}{'x p50':>7}"
        f"{'x p95':>7} | {'server p50':>10}{'p95':>7}{'x p50':>7}{'x p95':>7} |"
        + "".join(f"{title:>10}" for title in STAGES.values())
    )
    lines = [
        "turn latency, ms (x: ratio to "
        f"{base} REST client{'' if base == 1 else 's'}); stages: p50 ms",
        header,
    ]
    for n in levels:
        ok = [t for t in per_level[n] if t.ok]
        row = f"{n:<13}{len(ok):>4}{len(per_level[n]) - len(ok):>5} |"
        for values, base_values in ((client[n], client[base]), (server[n], server[base])):
            p50, p95 = percentile(values, 50), percentile(values, 95)
            row += cell(p50, ".0f", 11) + cell(p95, ".0f", 7)
            row += cell(ratio(p50, percentile(base_values, 50)), ".2f", 7)
            row += cell(ratio(p95, percentile(base_values, 95)), ".2f", 7) + " |"
        for stage in STAGES:
            values = [t.server_timings_ms[stage] for t in ok if stage in t.server_timings_ms]
            row += cell(percentile(values, 50), ".0f", 10)
        lines.append(row)
    return lines


def rest_rows(blocks: list[Block], levels: list[int]) -> list[str]:
    lines = [
        "REST work done while the turns ran (requests in flight at a block's end not counted; "
        "429: refused, sent again after --retry-s)",
        f"{'REST clients':<13}{'seconds':>8} | {'kind':<14}{'done':>5}{'429':>5}{'fail':>5}"
        f"{'per min':>9}{'audio s/s':>10}{'request p50 s':>14}{'p95 s':>7}",
    ]
    for n in levels:
        if n == 0:
            continue
        level_blocks = [b for b in blocks if b.level == n]
        seconds = sum(b.load_s for b in level_blocks)
        for kind in KINDS:
            records = [r for b in level_blocks for r in b.rest if r.kind == kind]
            ok = [r for r in records if r.failure is None]
            refused = sum(r.refused for r in records)
            times = [r.seconds for r in ok]
            lines.append(
                f"{n:<13}{seconds:>8.0f} | {kind:<14}{len(ok):>5}{refused:>5}"
                f"{len(records) - len(ok) - refused:>5}"
                f"{60 * len(ok) / max(seconds, 1e-9):>9.1f}"
                f"{sum(r.audio_s for r in ok) / max(seconds, 1e-9):>10.2f}"
                + cell(percentile(times, 50), ".2f", 14)
                + cell(percentile(times, 95), ".2f", 7)
            )
    return lines


def report(blocks: list[Block], args: argparse.Namespace, source: str) -> str:
    turns = [t for b in blocks for t in b.turns]
    lines = [
        f"url:      {args.url}",
        f"speech:   {source}; REST transcriptions cycle all clips, speech "
        f"{len(SPEECH_TEXT)} chars ({args.voice or 'first voice'})",
        f"schedule: {args.rounds} rounds x levels {args.levels} x {args.turns_per_block} turns "
        f"(fresh session per block), {args.warmup} warm-up turn(s) not counted",
        f"turns:    {len(turns)} measured, {sum(not t.ok for t in turns)} failed",
        "",
        *latency_rows(blocks, args.levels),
        "",
        *rest_rows(blocks, args.levels),
    ]
    for t in turns:
        if not t.ok:
            lines.append(f"failed: turn {t.turn} ({t.clip}): {t.failure}")
    return "\n".join(lines)


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or any(n < 0 for n in levels) or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError("distinct non-negative integers, e.g. 0,1,2,4")
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument(
        "--levels",
        type=parse_levels,
        default=[0, 1, 2, 4],
        help="REST clients per level, the first being the baseline of the ratios (default 0,1,2,4)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds of all levels (default 4)")
    parser.add_argument(
        "--turns-per-block", type=int, default=3, help="spoken turns per level per round (3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unloaded turns not counted (1)")
    parser.add_argument(
        "--ramp-s",
        type=float,
        default=1.0,
        help="REST load runs this long before a block's first turn",
    )
    parser.add_argument(
        "--retry-s",
        type=float,
        default=0.1,
        help="a REST request refused with 429 is sent again after this long (default 0.1)",
    )
    parser.add_argument(
        "--max-clip-s",
        type=float,
        default=4.5,
        help="realtime questions are the clips up to this long (REST transcribes all clips)",
    )
    parser.add_argument("--speech", default=str(POCKETSPHINX_DATA), help="as turn_latency.py")
    parser.add_argument("--source", choices=("auto", "recorded", "piper"), default="auto")
    parser.add_argument("--piper-voice", default=str(default_piper_voice()))
    parser.add_argument("--voice", help="REST speech voice (default: the server's first)")
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--instructions", help="session instructions (default: the server's)")
    parser.add_argument("--max-output-tokens", type=int, help="cap answers (first audio unchanged)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per answer or request")
    parser.add_argument("--json", metavar="PATH", help="also write the raw records as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.turns_per_block < 1 or args.warmup < 0:
        parser.error("--rounds and --turns-per-block must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips, source = load_speech(args)
    turn_clips = [c for c in clips if len(c.audio) / c.sample_rate <= args.max_clip_s] or clips
    source += f"; {len(turn_clips)} of them (<= {args.max_clip_s} s) spoken as questions"
    started = time.monotonic()
    blocks, _ = asyncio.run(run(args, turn_clips, clips))
    print(report(blocks, args, source))
    print(f"wall time: {time.monotonic() - started:.0f} s")
    if args.json:
        dump = {"url": args.url, "speech": source, "blocks": [asdict(b) for b in blocks]}
        Path(args.json).write_text(json.dumps(dump, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
