"""`voxgate-client`: speak one turn to a voxgate server (from a WAV file or a microphone), save
the spoken answer, and show where the time went.

    voxgate-client --url ws://127.0.0.1:8000/v1/realtime --wav question.wav --out reply.wav

Exit status: 0 when the answer completed, 1 when the server or the connection failed, 2 for
bad arguments or when no microphone can be used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import numpy as np
import soundfile as sf
from websockets.exceptions import WebSocketException

from voxgate.clients.realtime_client import SAMPLE_RATE, RealtimeError, TurnResult, run_turn
from voxgate.streaming.timings import TURN_STAGES

STAGES = (*TURN_STAGES, "turn_latency")
"""The server's timings printed first, in this order; any others follow, sorted."""


class UsageError(Exception):
    """Something the user must fix before a turn can run (exit status 2)."""


def read_wav(path: str) -> tuple[np.ndarray, int]:
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=False)
    except (OSError, sf.LibsndfileError, TypeError) as e:
        # TypeError: soundfile's answer to headerless (raw) audio.
        raise UsageError(f"cannot read {path} as a sound file (WAV, FLAC, OGG): {e}") from e
    return audio, int(rate)


def record(seconds: float) -> tuple[np.ndarray, int]:
    """Record `seconds` from the default microphone (needs the optional `sounddevice`)."""
    try:
        import sounddevice as sd  # optional: only --mic needs it
    except ImportError as e:
        raise UsageError("--mic needs the sounddevice package: pip install sounddevice") from e
    except OSError as e:  # the package is there but PortAudio is not
        raise UsageError(f"--mic: sounddevice cannot load PortAudio: {e}") from e
    try:
        device = sd.query_devices(kind="input")
    except Exception as e:  # PortAudioError or ValueError, depending on the host API
        raise UsageError(f"--mic: no microphone found ({e})") from e
    rate = int(device["default_samplerate"])
    print(f"recording {seconds:g} s from {device['name']} ...", file=sys.stderr)
    audio = sd.rec(round(seconds * rate), samplerate=rate, channels=1, dtype="float32")
    sd.wait()
    return audio[:, 0], rate


def report(result: TurnResult) -> str:
    timings = result.server_timings_ms
    latency = result.turn_latency_ms
    lines = [
        f"user:      {result.user_transcript}",
        f"assistant: {result.assistant_transcript}",
        f"status:    {result.status}"
        + (f" {result.status_details}" if result.status_details else ""),
        "turn latency (client): "
        + (
            "n/a (no speech found or no audio answered)" if latency is None else f"{latency:.0f} ms"
        ),
    ]
    if timings:
        lines.append("server stages (ms):")
        known = [s for s in STAGES if s in timings]
        others = sorted(set(timings) - set(STAGES))
        lines += [f"  {name:<18} {timings[name]:8.1f}" for name in known + others]
    else:
        lines.append("server stages: none reported")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="voxgate-client", description="Speak one turn to a voxgate server."
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", help="the question: an audio file (any rate, any channels)")
    source.add_argument("--mic", type=float, metavar="SECONDS", help="record the question")
    parser.add_argument("--out", help="write the spoken reply here (24 kHz 16-bit WAV)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VOXGATE_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $VOXGATE_API_KEY)",
    )
    parser.add_argument("--instructions", help="the session's instructions (persona)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the answer"
    )
    args = parser.parse_args(argv)
    if args.mic is not None and args.mic <= 0:
        parser.error("--mic needs a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        audio, rate = read_wav(args.wav) if args.wav else record(args.mic)
    except UsageError as e:
        print(f"voxgate-client: {e}", file=sys.stderr)
        return 2
    session: dict[str, Any] = {}
    if args.instructions is not None:
        session["instructions"] = args.instructions
    try:
        result = asyncio.run(
            run_turn(
                args.url,
                audio,
                rate,
                api_key=args.api_key,
                session=session,
                timeout_s=args.timeout,
            )
        )
    except (RealtimeError, TimeoutError, OSError, WebSocketException) as e:
        # OSError covers ConnectionError and a refused or unreachable server.
        print(f"voxgate-client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(report(result))
    if args.out:
        sf.write(args.out, result.audio, SAMPLE_RATE, subtype="PCM_16")
        print(f"reply: {args.out} ({len(result.audio) / SAMPLE_RATE:.1f} s)")
    for error in result.errors:
        print(f"voxgate-client: server error: {error}", file=sys.stderr)
    return 0 if result.status == "completed" and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
