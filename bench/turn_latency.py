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
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    FAILURES,
    STAGES,
    Clip,
    TurnRecord,
    add_speech_arguments,
    load_speech,
    one_turn,
    progress_line,
    session_settings,
    statuses,
    summary,
)
from plots import plot_path_problem, turn_latency_figure

from voxgate.clients.realtime_client import RealtimeClient

# --- running turns -------------------------------------------------------------------------


async def run(args: argparse.Namespace, clips: list[Clip]) -> list[TurnRecord]:
    session_update = session_settings(args)
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
                tag = f"turn {record.turn:>3}" if turn >= args.warmup else "warm-up "
                print(progress_line(tag, record), file=sys.stderr)
                turn += 1
                if record.status is None:
                    break  # the turn raised: its session is in doubt, carry on in a fresh one
        finally:
            await client.close()
    return records[args.warmup :]


# --- report --------------------------------------------------------------------------------


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
    add_speech_arguments(parser)
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
