"""First answer audio of voxgate against a peer server (speaches), clip by clip, alternating.

    python bench/peer_latency.py --voxgate ws://127.0.0.1:8871/v1/realtime \\
        --peer ws://127.0.0.1:8872/v1/realtime

What it measures: for every recorded clip, on each server, the time from the end of the clip
file (the moment its last audio chunk was sent) to the first answer audio received
(`response.output_audio.delta`, or `response.audio.delta` on the beta protocol). The clip is
streamed at real-time pace in 50 ms pcm16 24 kHz appends, then silence in the same rhythm until
the answer's audio starts; the server VAD ends the turn. Every measurement is a fresh realtime
session (connect, `session.update`, one clip, the whole answer, close), and the two servers
alternate clip by clip which goes first (voxgate first on even clips, the peer on odd ones), so
drift on the machine hits both alike. It prints, per server, n / median / p95 (mean, min, max)
of that time, and the median over clips of the per-clip ratio voxgate / peer. Figures only: it
never passes or fails on time.

Both servers get the same turn settings: server VAD with `--silence-ms` (500) and
`--vad-threshold` (0.5, voxgate's default; speaches' own is 0.9), answers capped at
`--max-output-tokens` (64), and the same instructions (voxgate's default persona). The peer
also gets what voxgate fixes in its server config and speaches takes per session: the
transcription model (Whisper tiny.en, in English), the speech model and voice (Piper joe;
speaches' realtime answers actually take the model its `tts-1` alias names, so the peer's
alias must point at Piper joe) and the cascade's temperature (0.3).

Both sides go through the official `openai` SDK's realtime client: the GA protocol
(`client.realtime.connect`) for voxgate and, by default, the beta protocol
(`client.beta.realtime.connect`, `OpenAI-Beta: realtime=v1`) for the peer, which is what
speaches implements (`--peer-protocol ga` for a peer that speaks GA). speaches answers every
`turn_detection` update with an `error` event about `prefix_padding_ms` (its session type
requires the field and its handler refuses it); errors are counted, and only a missing answer
fails a measurement.

Speech: the recorded clips of `turn_latency.py` (Debian's pocketsphinx-testdata) of at most
`--max-clip-s` (4.5) seconds: 11 clips. The peer it was written for, its models and what
differs between the two servers: bench/README.md, "`peer_latency.py`".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common import FAILURES, Clip, add_speech_arguments, load_speech, summary
from openai import AsyncOpenAI, OpenAIError

from voxgate.clients.realtime_client import (
    SAMPLE_RATE,
    chunk_bounds,
    pacing_deadlines,
    prepare_audio,
    to_pcm16,
)
from voxgate.model.cascade import CascadeConfig
from voxgate.server.settings import DEFAULT_INSTRUCTIONS

AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
"""The first answer audio: GA and beta names."""
ANSWER_TEXT = (
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
)
HEARD = "conversation.item.input_audio_transcription.completed"
PEER_MODEL = "smollm2-135m-instruct"
"""The model name the peer's LM server answers to (speaches passes it to the LM)."""


# --- the two servers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    api_key: str
    model: str
    protocol: str
    """"ga" (`client.realtime`) or "beta" (`client.beta.realtime`)."""
    session: dict[str, Any]
    """The `session.update` body sent before the clip."""


def sdk_bases(url: str) -> tuple[str, str]:
    """ws://host:port/v1/realtime -> (http://host:port/v1, ws://host:port/v1): the SDK's
    `base_url` and `websocket_base_url` (it appends /realtime itself)."""
    parsed = urlparse(url)
    path = parsed.path.rstrip("/")
    if parsed.scheme not in ("ws", "wss") or not path.endswith("/realtime"):
        raise ValueError(f"expected ws[s]://HOST:PORT/.../realtime, got {url}")
    base = path[: -len("/realtime")]
    http = "https" if parsed.scheme == "wss" else "http"
    return f"{http}://{parsed.netloc}{base}", f"{parsed.scheme}://{parsed.netloc}{base}"


def turn_detection(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": args.vad_threshold,
        "silence_duration_ms": args.silence_ms,
        "create_response": True,
    }


def ga_session(args: argparse.Namespace, transcription: str, voice: str | None) -> dict[str, Any]:
    """A GA `session.update` body: pcm16 24 kHz both ways, server VAD, the answer cap."""
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    output: dict[str, Any] = {"format": pcm}
    if voice:
        output["voice"] = voice
    return {
        "type": "realtime",
        "instructions": args.instructions,
        "max_output_tokens": args.max_output_tokens,
        "audio": {
            "input": {
                "format": pcm,
                "turn_detection": turn_detection(args),
                "transcription": {"model": transcription, "language": args.language},
            },
            "output": output,
        },
    }


def beta_session(args: argparse.Namespace) -> dict[str, Any]:
    """A beta `session.update` body as speaches reads it (pcm16 24 kHz is its only format).

    speaches' `turn_detection` must carry all four fields; `speech_model` is its extension."""
    return {
        "instructions": args.instructions,
        "max_response_output_tokens": args.max_output_tokens,
        "temperature": args.peer_temperature,
        "input_audio_transcription": {
            "model": args.peer_transcription_model,
            "language": args.language,
        },
        "turn_detection": {**turn_detection(args), "prefix_padding_ms": 0},
        "speech_model": args.peer_speech_model,
        "voice": args.peer_voice,
    }


def servers(args: argparse.Namespace) -> list[Server]:
    chosen = []
    if args.voxgate:
        chosen.append(
            Server(
                "voxgate",
                args.voxgate,
                args.voxgate_key or "none",
                args.voxgate_model,
                "ga",
                ga_session(args, "whisper-1", None),
            )
        )
    if args.peer:
        session = (
            beta_session(args)
            if args.peer_protocol == "beta"
            else ga_session(args, args.peer_transcription_model, args.peer_voice)
        )
        chosen.append(
            Server(
                args.peer_name,
                args.peer,
                args.peer_key or "none",
                args.peer_model,
                args.peer_protocol,
                session,
            )
        )
    return chosen


# --- one measurement -----------------------------------------------------------------------


@dataclass
class Measurement:
    server: str
    clip: str
    clip_s: float
    round: int
    position: int
    """1: this server had the clip first, 2: second."""
    warmup: bool = False
    latency_ms: float | None = None
    failure: str | None = None
    heard: str = ""
    answer: str = ""
    early_responses: int = 0
    """Responses created before the clip ended (the VAD ended the turn at a pause in it)."""
    errors: list[str] = field(default_factory=list)


def _get(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, dict) else getattr(event, name, None)


class Session:
    """The server's events of one session, read by a task and timestamped on arrival."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.created = asyncio.Event()
        self.updated = asyncio.Event()
        self.audio = asyncio.Event()
        self.done = asyncio.Event()
        self.clip_end: float | None = None
        self.first_audio_at: float | None = None
        self.early_responses = 0
        self.heard: list[str] = []
        self.answer: list[str] = []
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.connection:
            at = time.monotonic()
            kind = _get(event, "type")
            if kind == "session.created":
                self.created.set()
            elif kind == "session.updated":
                self.updated.set()
            elif kind == "error":
                error = _get(event, "error")
                self.errors.append(str(_get(error, "message") if error is not None else event))
            elif kind == HEARD:
                self.heard.append(str(_get(event, "transcript") or "").strip())
            elif kind == "response.created" and self.clip_end is None:
                self.early_responses += 1
            elif kind in AUDIO_DELTAS and self.clip_end is not None:
                if self.first_audio_at is None:
                    self.first_audio_at = at
                    self.audio.set()
            elif kind in ANSWER_TEXT and self.clip_end is not None:
                self.answer.append(str(_get(event, "delta") or ""))
            elif kind == "response.done" and self.first_audio_at is not None:
                self.done.set()

    async def until(self, event: asyncio.Event, timeout_s: float, what: str) -> None:
        """Wait for `event`; fail at once if the connection ends first."""
        waiter = asyncio.ensure_future(event.wait())
        finished, _ = await asyncio.wait(
            {waiter, self.reader}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in finished:
            return
        waiter.cancel()
        if self.reader in finished:
            reason = self.reader.exception() or "closed by the server"
            raise ConnectionError(f"connection ended before {what}: {reason}")
        raise TimeoutError(f"no {what} within {timeout_s:g} s")

    async def close(self) -> None:
        """Stop reading; a reader that died has already been reported by `until`."""
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader


async def speak(session: Session, samples: Any, args: argparse.Namespace) -> None:
    """Append the clip at real-time pace, note when its last chunk went out, then append
    silence in the same rhythm until the answer's first audio (or `--timeout`)."""
    connection = session.connection
    chunk = SAMPLE_RATE * args.chunk_ms // 1000
    pcm = to_pcm16(samples)
    bounds = chunk_bounds(len(samples), chunk)
    start = time.monotonic()
    for (begin, end), deadline in zip(
        bounds, pacing_deadlines(bounds, start, SAMPLE_RATE), strict=True
    ):
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(pcm[2 * begin : 2 * end]).decode()
        )
    session.clip_end = time.monotonic()
    silence = base64.b64encode(bytes(2 * chunk)).decode()
    sent = len(samples)
    while session.clip_end + args.timeout > time.monotonic():
        sent += chunk
        wait_s = max(0.0, start + sent / SAMPLE_RATE - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.audio.wait(), wait_s)
        if session.audio.is_set() or session.reader.done():
            return
        await connection.input_audio_buffer.append(audio=silence)


async def measure(
    server: Server, clip: Clip, record: Measurement, args: argparse.Namespace
) -> None:
    """One fresh session on `server`: `clip` spoken, the answer awaited; fills `record`."""
    base_url, websocket_base_url = sdk_bases(server.url)
    client = AsyncOpenAI(
        api_key=server.api_key,
        base_url=base_url,
        websocket_base_url=websocket_base_url,
        max_retries=0,
    )
    realtime = client.realtime if server.protocol == "ga" else client.beta.realtime
    samples = prepare_audio(clip.audio, clip.sample_rate)
    session: Session | None = None
    try:
        async with realtime.connect(model=server.model) as connection:
            session = Session(connection)
            try:
                await session.until(session.created, args.timeout, "session.created")
                await connection.session.update(session=server.session)
                await session.until(session.updated, args.timeout, "session.updated")
                await speak(session, samples, args)
                if session.first_audio_at is None:
                    if session.reader.done():
                        raise ConnectionError("connection ended before the answer's audio")
                    raise TimeoutError(f"no answer audio {args.timeout:g} s after the clip")
                # The whole answer, so its generation never overlaps the next measurement.
                await session.until(session.done, args.timeout, "response.done")
            finally:
                await session.close()
    except (*FAILURES, OpenAIError) as e:
        record.failure = f"{type(e).__name__}: {e}"
    finally:
        await client.close()
    if session is not None:
        if session.first_audio_at is not None and session.clip_end is not None:
            record.latency_ms = round((session.first_audio_at - session.clip_end) * 1000.0, 1)
            if record.failure and "response.done" in record.failure:
                record.failure = None  # the first audio is what is measured
        record.heard = " ".join(t for t in session.heard if t)
        record.answer = "".join(session.answer).strip()
        record.early_responses = session.early_responses
        record.errors = session.errors


# --- the alternating run -------------------------------------------------------------------


def short_clips(clips: list[Clip], args: argparse.Namespace) -> list[Clip]:
    chosen = [c for c in clips if len(c.audio) / c.sample_rate <= args.max_clip_s]
    return chosen[: args.clips] if args.clips else chosen


def progress(tag: str, clip: Clip, records: list[Measurement]) -> str:
    parts = []
    for r in records:
        figure = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else f"FAILED {r.failure}"
        note = f", {r.early_responses} early response(s)" if r.early_responses else ""
        parts.append(f"{r.server} {figure}{note} (heard {r.heard!r})")
    return f"{tag} {clip.name} ({len(clip.audio) / clip.sample_rate:.1f} s): " + " | ".join(parts)


async def run(args: argparse.Namespace, clips: list[Clip]) -> list[Measurement]:
    chosen = servers(args)
    plan = [(True, 0, i, clip) for i, clip in enumerate(clips[: args.warmup])]
    plan += [(False, r, i, clip) for r in range(args.rounds) for i, clip in enumerate(clips)]
    records: list[Measurement] = []
    measured = 0
    for warmup, round_, index, clip in plan:
        step = index + round_ * len(clips)
        order = chosen if step % 2 == 0 else chosen[::-1]
        pair = []
        for position, server in enumerate(order, start=1):
            clip_s = round(len(clip.audio) / clip.sample_rate, 2)
            record = Measurement(server.name, clip.name, clip_s, round_, position, warmup)
            await measure(server, clip, record, args)
            pair.append(record)
            await asyncio.sleep(args.gap_s)
        records += pair
        if warmup:
            tag = "[warm-up]"
        else:
            measured += 1
            tag = f"[{measured:>2}/{len(clips) * args.rounds}]"
        print(progress(tag, clip, pair), file=sys.stderr, flush=True)
    return records


def median(values: list[float]) -> float:
    return summary(values)["p50"]


def table(records: list[Measurement], source: str, args: argparse.Namespace) -> str:
    measured = [r for r in records if not r.warmup]
    names = list(dict.fromkeys(r.server for r in measured))
    lines = [
        f"servers:  {', '.join(f'{s.name} {s.url} ({s.protocol})' for s in servers(args))}",
        f"speech:   {source}",
        f"turns:    fresh session per clip and server, {args.rounds} round(s), order "
        f"alternating clip by clip, {args.warmup} warm-up clip(s) not counted; server VAD "
        f"silence {args.silence_ms} ms threshold {args.vad_threshold:g}; answers capped at "
        f"{args.max_output_tokens} tokens",
        "",
        "milliseconds from the end of the clip file to the first answer audio",
        f"{'server':<12}{'n':>4}{'median':>9}{'p95':>9}{'mean':>9}{'min':>9}{'max':>9}"
        f"{'failed':>8}{'errors':>8}",
    ]
    for name in names:
        mine = [r for r in measured if r.server == name]
        values = [r.latency_ms for r in mine if r.latency_ms is not None]
        errors = sum(len(r.errors) for r in mine)
        failed = len(mine) - len(values)
        if not values:
            lines.append(f"{name:<12}{0:>4}" + f"{'-':>9}" * 5 + f"{failed:>8}{errors:>8}")
            continue
        s = summary(values)
        lines.append(
            f"{name:<12}{len(values):>4}"
            + "".join(f"{s[k]:>9.1f}" for k in ("p50", "p95", "mean", "min", "max"))
            + f"{failed:>8}{errors:>8}"
        )
    ratios = clip_ratios(measured, names)
    if ratios:
        s = summary(ratios)
        lines.append(
            f"per-clip ratio {names[0]}/{names[1]}: median {s['p50']:.2f} "
            f"(n {len(ratios)}, min {s['min']:.2f}, max {s['max']:.2f})"
        )
    early = [r for r in measured if r.early_responses]
    if early:
        lines.append(
            f"{len(early)} measurement(s) had a response created before the clip ended "
            "(the VAD ended the turn at a pause): "
            + ", ".join(f"{r.server} {r.clip}" for r in early)
        )
    lines += [f"failed: {r.server} {r.clip}: {r.failure}" for r in measured if r.failure]
    return "\n".join(lines)


def clip_ratios(measured: list[Measurement], names: list[str]) -> list[float]:
    """first server / second server, for every (round, clip) both answered."""
    if len(names) != 2:
        return []
    latency = {(r.server, r.round, r.clip): r.latency_ms for r in measured}
    ratios = []
    for r in measured:
        if r.server != names[0] or r.latency_ms is None:
            continue
        other = latency.get((names[1], r.round, r.clip))
        if other:
            ratios.append(r.latency_ms / other)
    return ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxgate", metavar="URL", help="voxgate's ws://HOST:PORT/v1/realtime")
    parser.add_argument("--voxgate-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--voxgate-model", default="voxgate")
    parser.add_argument("--peer", metavar="URL", help="the peer's ws://HOST:PORT/v1/realtime")
    parser.add_argument("--peer-name", default="speaches")
    parser.add_argument("--peer-key", default=os.environ.get("PEER_API_KEY"))
    parser.add_argument(
        "--peer-model", default=PEER_MODEL, help="the LM the peer asks for (its `model`)"
    )
    parser.add_argument("--peer-protocol", choices=("beta", "ga"), default="beta")
    parser.add_argument("--peer-transcription-model", default="Systran/faster-whisper-tiny.en")
    parser.add_argument("--peer-speech-model", default="speaches-ai/piper-en_US-joe-medium")
    parser.add_argument("--peer-voice", default="joe")
    parser.add_argument(
        "--peer-temperature",
        type=float,
        default=CascadeConfig().temperature,
        help="the peer session's temperature (default: voxgate's cascade default)",
    )
    parser.add_argument("--language", default="en", help="the transcription language")
    parser.add_argument("--instructions", default=DEFAULT_INSTRUCTIONS)
    parser.add_argument("--max-output-tokens", type=int, default=64)
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--vad-threshold", type=float, default=0.5)
    parser.add_argument("--chunk-ms", type=int, default=50, help="audio per append")
    parser.add_argument("--rounds", type=int, default=1, help="times every clip is measured")
    parser.add_argument(
        "--warmup", type=int, default=1, help="clips run first on each server, not counted"
    )
    parser.add_argument("--clips", type=int, default=0, help="use only the first N clips")
    parser.add_argument("--max-clip-s", type=float, default=4.5, help="longest clip spoken")
    parser.add_argument(
        "--gap-s", type=float, default=1.0, help="pause after every session (default 1 s)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    add_speech_arguments(parser)
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also dump every measurement as JSON (to PATH, or stdout)",
    )
    args = parser.parse_args(argv)
    if not (args.voxgate or args.peer):
        parser.error("give --voxgate URL, --peer URL or both")
    for url in (args.voxgate, args.peer):
        if url:
            try:
                sdk_bases(url)
            except ValueError as e:
                parser.error(str(e))
    if args.rounds < 1 or args.warmup < 0 or args.clips < 0 or args.chunk_ms < 1:
        parser.error("--rounds and --chunk-ms must be positive, --warmup and --clips not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips, source = load_speech(args)
    clips = short_clips(clips, args)
    if not clips:
        sys.exit(f"no clip of at most {args.max_clip_s:g} s: raise --max-clip-s")
    source += f"; {len(clips)} of them (<= {args.max_clip_s:g} s) spoken"
    started = time.monotonic()
    records = asyncio.run(run(args, clips))
    print(table(records, source, args))
    print(f"wall time: {time.monotonic() - started:.0f} s")
    if args.json:
        dump = json.dumps(
            {"speech": source, "measurements": [asdict(r) for r in records]}, indent=2
        )
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
