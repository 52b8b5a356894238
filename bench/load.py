"""Load: N simulated realtime clients at once, each speaking recorded questions at real-time pace.

    python bench/load.py --url ws://127.0.0.1:8768/v1/realtime --clients 1,2,4,8

For each N (one after the other), N sessions run at the same time, each streaming `--turns`
recorded questions through the WebSocket at real-time pace (plus trailing silence, so the server
VAD ends each turn) and waiting for each whole answer. Per N it prints: turn latency p50/p95 (the
client's and the server's), the sessions that kept real time, errors, and the server's CPU and
resident memory summed over its process tree (the API process, vLLM's EngineCore, workers). Then
the first N whose p95 turn latency is twice N = 1's, and how each stage grew: what saturates
first. `MB/min` is the trend of that resident memory over the level (a soak: `--clients 4
--turns 60` holds four conversations for a long while; a leak shows as a steady slope).
Figures only: it never passes or fails on time.

A session kept real time when every turn was answered, no input append was refused
(`input_audio_buffer_full`, or any other error event), and the answer's audio never arrived
later than it would play: playback starts at the first delta, and delta k must arrive before the
audio received before it has played out (`--jitter-ms` of slack, like a client's jitter buffer).

Bounded: `--turns` per session, `--timeout` per answer, `--time-limit` per N (sessions still
running then are cancelled and counted as failed). Loopback only: the URL must be a local one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil
from common import (
    ANSWERED,
    FAILURES,
    POCKETSPHINX_DATA,
    STAGES,
    Clip,
    default_piper_voice,
    load_speech,
    server_pid,
    summary,
)
from plots import capacity_figure, plot_path_problem

from voxgate.clients.realtime_client import SAMPLE_RATE, RealtimeClient, TurnEvents

MAX_CLIP_S = 6.0
"""Questions longer than this are left out: a turn is a question, not a reading."""


@dataclass
class Turn:
    ok: bool
    client_ms: float | None = None
    server_ms: dict[str, float] = field(default_factory=dict)
    underrun_ms: float = 0.0
    """Longest wait for answer audio after what had arrived had played out (beyond jitter)."""
    errors: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass
class Session:
    turns: list[Turn] = field(default_factory=list)
    failure: str | None = None

    def kept_real_time(self, jitter_ms: float, turns: int) -> bool:
        return (
            self.failure is None
            and len(self.turns) == turns
            and all(t.ok and not t.errors and t.underrun_ms <= jitter_ms for t in self.turns)
        )


class TimedClient(RealtimeClient):
    """A `RealtimeClient` that also notes when each piece of answer audio arrived."""

    arrivals: list[tuple[float, float]]
    """(arrival time, seconds of audio) of the current answer's deltas."""

    async def _collect(self, events: TurnEvents, sender: asyncio.Task[None]) -> None:
        self.arrivals = []
        feed = events.feed

        def noting(event: dict[str, Any], at: float) -> None:
            match event.get("type"):
                case "response.created":
                    self.arrivals = []  # a later answer replaces an interrupted one
                case "response.output_audio.delta":
                    seconds = len(base64.b64decode(event.get("delta", ""))) / 2 / SAMPLE_RATE
                    self.arrivals.append((at, seconds))
            feed(event, at)

        events.feed = noting  # type: ignore[method-assign]
        await super()._collect(events, sender)


def underrun_ms(arrivals: list[tuple[float, float]]) -> float:
    """The longest a listener would have waited in silence (playback from the first delta)."""
    if not arrivals:
        return 0.0
    start, played, worst = arrivals[0][0], 0.0, 0.0
    for at, seconds in arrivals:
        worst = max(worst, (at - start) - played)
        played += seconds
    return worst * 1000


async def run_session(
    args: argparse.Namespace, clips: list[Clip], index: int, delay_s: float
) -> Session:
    session = Session()
    await asyncio.sleep(delay_s)  # sessions start staggered, as people do
    client = TimedClient(args.url, api_key=args.api_key, timeout_s=args.timeout)
    try:
        await client.connect()
        await client.session_update({"max_output_tokens": args.max_output_tokens})
        for t in range(args.turns):
            clip = clips[(index * args.turns + t) % len(clips)]
            try:
                result = await client.send_turn(clip.audio, clip.sample_rate)
            except FAILURES as e:
                session.turns.append(Turn(ok=False, failure=f"{type(e).__name__}: {e}"))
                break
            turn = Turn(
                ok=result.status in ANSWERED and result.turn_latency_ms is not None,
                client_ms=result.turn_latency_ms,
                server_ms=result.server_timings_ms,
                underrun_ms=underrun_ms(client.arrivals),
                errors=[str(e.get("code")) for e in result.errors],
            )
            if not turn.ok:
                turn.failure = f"status {result.status}"
            session.turns.append(turn)
    except FAILURES as e:
        session.failure = f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(*FAILURES):
            await client.close()
    return session


class ServerWatch:
    """CPU and resident memory of the server's process tree, sampled once a second."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self._known: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        procs = [self._root, *self._root.children(recursive=True)]
        # Keep Process objects: cpu_percent() measures from the previous call on the same one.
        return [self._known.setdefault(p.pid, p) for p in procs]

    async def run(self) -> None:
        for p in self._tree():
            p.cpu_percent(None)
        while True:
            await asyncio.sleep(1.0)
            cpu, rss = 0.0, 0
            for p in self._tree():
                with contextlib.suppress(psutil.Error):
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
            self.cpu.append(cpu)
            self.rss.append(rss)


class EngineWatch:
    """The most requests vLLM had waiting, from the server's /metrics (polled once a second)."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self._url = f"{base_url}/metrics"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_waiting = 0.0
        self.max_running = 0.0

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5, headers=self._headers) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    for line in (await http.get(self._url)).text.splitlines():
                        if line.startswith("vllm:num_requests_waiting{"):
                            self.max_waiting = max(self.max_waiting, float(line.split()[-1]))
                        elif line.startswith("vllm:num_requests_running{"):
                            self.max_running = max(self.max_running, float(line.split()[-1]))
                await asyncio.sleep(1.0)


async def loop_lag(lags: list[float]) -> None:
    """How late this process's own event loop runs (the load generator shares the CPUs)."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.05)
        lags.append(time.monotonic() - before - 0.05)


@dataclass
class Level:
    n: int
    sessions: list[Session]
    wall_s: float
    cpu: list[float]
    rss: list[int]
    lag_ms: float
    max_waiting: float
    max_running: float


async def run_level(args: argparse.Namespace, clips: list[Clip], n: int, pid: int) -> Level:
    watch = ServerWatch(pid)
    engine = EngineWatch(
        args.url.replace("ws://", "http://").removesuffix("/v1/realtime"), args.api_key
    )
    lags: list[float] = []
    helpers = [asyncio.create_task(c) for c in (watch.run(), engine.run(), loop_lag(lags))]
    started = time.monotonic()
    stagger = args.stagger_s / max(1, n - 1) if n > 1 else 0.0
    tasks = [asyncio.create_task(run_session(args, clips, i, i * stagger)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
    for task in pending:
        task.cancel()
    sessions = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    sessions += [Session(failure="time limit") for _ in pending]
    sessions += [Session(failure=repr(t.exception())) for t in done if t.exception() is not None]
    wall = time.monotonic() - started
    for task in helpers:
        task.cancel()
    await asyncio.gather(*helpers, *pending, return_exceptions=True)
    return Level(
        n,
        sessions,
        wall,
        watch.cpu,
        watch.rss,
        max(lags, default=0.0) * 1000,
        engine.max_waiting,
        engine.max_running,
    )


def rss_slope_mb_per_min(rss: list[int]) -> float:
    """The trend of the server's resident memory over a level (least squares, one sample a
    second), leaving out its first tenth (start-up of the sessions)."""
    kept = rss[len(rss) // 10 :]
    seconds = np.arange(len(kept), dtype=np.float64)
    slope_bytes_per_s = np.polyfit(seconds, np.asarray(kept, dtype=np.float64), 1)[0]
    return float(slope_bytes_per_s * 60 / 1e6)


def turn_latencies(level: Level) -> tuple[list[float], list[float]]:
    """The client's and the server's turn latency (ms) of a level's answered turns."""
    ok = [t for s in level.sessions for t in s.turns if t.ok]
    client = [t.client_ms for t in ok if t.client_ms is not None]
    server = [t.server_ms["turn_latency"] for t in ok if "turn_latency" in t.server_ms]
    return client, server


def p50_p95(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    s = summary(values)
    return f"{s['p50']:.0f}", f"{s['p95']:.0f}"


def report(levels: list[Level], args: argparse.Namespace) -> str:
    lines = [
        f"{'N':>3} {'turns ok':>9} {'client p50':>10}{'p95':>6} {'server p50':>10}{'p95':>6}"
        f" {'real time':>9} {'errors':>6} {'CPU % mean':>10}{'max':>6} {'RSS GB':>7} {'MB/min':>9}"
        f" {'vLLM wait':>9} {'lag ms':>7} {'wall s':>6}",
    ]
    p95s: dict[int, float] = {}
    for level in levels:
        turns = [t for s in level.sessions for t in s.turns]
        ok = [t for t in turns if t.ok]
        client, server = turn_latencies(level)
        if client:
            p95s[level.n] = summary(client)["p95"]
        real_time = sum(s.kept_real_time(args.jitter_ms, args.turns) for s in level.sessions)
        errors = sum(len(t.errors) + (not t.ok) for t in turns) + sum(
            s.failure is not None for s in level.sessions
        )
        cpu = (f"{np.mean(level.cpu):>10.0f}{max(level.cpu):>6.0f}" if level.cpu
               else f"{'-':>10}{'-':>6}")  # fmt: skip
        rss = f"{max(level.rss) / 1e9:>7.2f}" if level.rss else f"{'-':>7}"
        slope = f"{rss_slope_mb_per_min(level.rss):>+9.1f}" if len(level.rss) > 20 else f"{'-':>9}"
        (c50, c95), (s50, s95) = p50_p95(client), p50_p95(server)
        lines.append(
            f"{level.n:>3} {len(ok):>4}/{args.turns * level.n:<4} {c50:>10}{c95:>6}"
            f" {s50:>10}{s95:>6} {real_time:>4}/{level.n:<4} {errors:>6} {cpu} {rss} {slope}"
            f" {level.max_waiting:>9.0f} {level.lag_ms:>7.0f} {level.wall_s:>6.0f}"
        )
    lines += ["", "server stage p50 (ms) by N:"]
    header = f"{'stage':<18}" + "".join(f"{f'N={lv.n}':>9}" for lv in levels)
    lines.append(header)
    for stage in STAGES:
        row = f"{stage:<18}"
        for level in levels:
            values = [
                t.server_ms[stage]
                for s in level.sessions
                for t in s.turns
                if t.ok and stage in t.server_ms
            ]
            row += f"{summary(values)['p50']:>9.0f}" if values else f"{'-':>9}"
        lines.append(row)
    if 1 in p95s:
        doubled = [n for n, p95 in sorted(p95s.items()) if n > 1 and p95 >= 2 * p95s[1]]
        lines.append("")
        lines.append(
            f"p95 doubles against N = 1 ({p95s[1]:.0f} ms) at N = {doubled[0]}"
            if doubled
            else f"p95 did not double against N = 1 ({p95s[1]:.0f} ms) up to N = {max(p95s)}"
        )
    for level in levels:
        for i, s in enumerate(level.sessions):
            reasons = [s.failure] if s.failure else []
            reasons += [t.failure for t in s.turns if t.failure]
            reasons += [f"error {code}" for t in s.turns for code in t.errors]
            reasons += [
                f"answer audio late by {t.underrun_ms:.0f} ms"
                for t in s.turns
                if t.underrun_ms > args.jitter_ms
            ]
            if reasons:
                lines.append(f"N={level.n} session {i}: " + "; ".join(reasons[:4]))
    return "\n".join(lines)


def results(levels: list[Level], source: str, args: argparse.Namespace) -> dict[str, Any]:
    """What `--json` writes and `--plot` draws: per N, the figures of the report and the raw
    samples and turns they come from."""
    return {
        "url": args.url,
        "speech": source,
        "cpus": psutil.cpu_count(),
        "turns_per_session": args.turns,
        "max_output_tokens": args.max_output_tokens,
        "jitter_ms": args.jitter_ms,
        "levels": [level_results(level, args) for level in levels],
    }


def level_results(level: Level, args: argparse.Namespace) -> dict[str, Any]:
    client, server = turn_latencies(level)
    kept = [s.kept_real_time(args.jitter_ms, args.turns) for s in level.sessions]
    return {
        "n": level.n,
        "client_turn_latency_ms": summary(client) if client else None,
        "server_turn_latency_ms": summary(server) if server else None,
        "kept_real_time": sum(kept),
        "wall_s": level.wall_s,
        "lag_ms": level.lag_ms,
        "max_waiting": level.max_waiting,
        "max_running": level.max_running,
        "cpu_percent": level.cpu,
        "rss_bytes": level.rss,
        "sessions": [
            {"kept_real_time": k, "failure": s.failure, "turns": [asdict(t) for t in s.turns]}
            for s, k in zip(level.sessions, kept, strict=True)
        ],
    }


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"{url}: this benchmark only loads servers on this machine (loopback)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--clients", default="1,2,4,8", help="the Ns to run, in order")
    parser.add_argument("--turns", type=int, default=3, help="turns per session")
    parser.add_argument("--max-output-tokens", type=int, default=48)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per answer")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per N")
    parser.add_argument("--stagger-s", type=float, default=2.0, help="spread of session starts")
    parser.add_argument("--jitter-ms", type=float, default=100.0)
    parser.add_argument("--warmup", type=int, default=1, help="turns before N = 1, not counted")
    parser.add_argument("--server-pid", type=int, help="default: whoever listens on the port")
    parser.add_argument("--speech", default=str(POCKETSPHINX_DATA))
    parser.add_argument("--source", choices=("auto", "recorded", "piper"), default="auto")
    parser.add_argument("--piper-voice", default=str(default_piper_voice()))
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw turn latency and CPU against N (.png or .svg; the `bench` extra)",
    )
    args = parser.parse_args(argv)
    args.levels = [int(n) for n in args.clients.split(",")]
    if min(args.levels) < 1 or args.turns < 1:
        parser.error("--clients and --turns must be positive")
    if args.plot and (problem := plot_path_problem(args.plot)):
        parser.error(problem)
    return args


async def main_async(args: argparse.Namespace, clips: list[Clip], pid: int) -> list[Level]:
    if args.warmup:
        warm = argparse.Namespace(**{**vars(args), "turns": args.warmup})
        await run_session(warm, clips, 0, 0.0)
    levels = []
    for n in args.levels:
        level = await run_level(args, clips, n, pid)
        print(f"N={n}: {level.wall_s:.0f} s", file=sys.stderr)
        levels.append(level)
    return levels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.url)
    clips, source = load_speech(args)
    clips = [c for c in clips if len(c.audio) / c.sample_rate <= MAX_CLIP_S]
    pid = server_pid(args)
    print(f"url: {args.url} (server pid {pid}, {psutil.cpu_count()} CPUs)")
    print(f"speech: {source}; {len(clips)} clips of at most {MAX_CLIP_S:g} s")
    print(
        f"sessions: {args.turns} turns each, answers capped at {args.max_output_tokens} tokens, "
        f"starts spread over {args.stagger_s:g} s; real time = no refused input, no errors, "
        f"answer audio never more than {args.jitter_ms:g} ms late"
    )
    levels = asyncio.run(main_async(args, clips, pid))
    print(report(levels, args))
    measured = results(levels, source, args)
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2) + "\n")
    if args.plot:
        capacity_figure(measured, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
