"""Turn-taking of a running voxgate server: speculative start and the echo guard, A/B in one run.

    python bench/turn_taking.py --url ws://127.0.0.1:8000/v1/realtime

Part 1, speculative start. The same recorded questions are spoken in sessions that alternate
`turn_detection.x_voxgate.speculative_start_ms` between 200 (transcribe and answer after 200 ms
of silence, before the 500 ms end of turn is certain) and 0 (off). It prints p50 / p95 / mean
of the client-measured turn latency and of the server's stages (`x_voxgate.timings_ms`) for
both arms, and their difference (also paired clip by clip). A dropped speculation (the user
went on after the pause) sends nothing to the client; the only trace of one is in `/metrics`.

Part 2, the echo guard. A client plays the answer on a "loudspeaker" whose sound reaches the
"microphone" 150 ms later at -6 dB, over low noise, and streams that microphone at real-time
pace, as a laptop without an echo canceller does. It asks for a story (a spoken question),
then counts `input_audio_buffer.speech_started` events that no real user speech explains
(false barge-ins) per minute of echoed answer audio, and the answers cancelled, with
`echo_guard` on and off (`min_interruption_ms: 0` in both, so only the guard differs). With the
guard on it also speaks a real interruption over the echo, to check that it still gets through.

Figures only: it never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from common import (
    FAILURES,
    POCKETSPHINX_DATA,
    STAGES,
    Clip,
    TurnRecord,
    default_piper_voice,
    load_speech,
    one_turn,
    progress_line,
    statuses,
    summary,
)
from websockets.exceptions import ConnectionClosed

from voxgate.clients.realtime_client import (
    SAMPLE_RATE,
    RealtimeClient,
    from_pcm16,
    prepare_audio,
    to_pcm16,
    voiced_end,
)

SPECULATIVE_ARMS = {"speculative 200 ms": 200, "speculative off": 0}
"""Part 1's arms: name -> `x_voxgate.speculative_start_ms` (0 = off)."""
STORY_QUESTIONS = (
    "Tell me a long story about a dragon.",
    "Tell me a long story about a pirate ship.",
    "Tell me a long story about a lighthouse keeper.",
    "Tell me a long story about a lost robot.",
)
STORY_INSTRUCTIONS = (
    "You are a storyteller on a voice call. When asked for a story, tell a long story of many "
    "sentences in plain spoken words."
)
INTERRUPTION = "Wait, stop. What was the name of the dragon?"
"""Spoken over the echo in the barge-in variant when no recorded speech is at hand."""
GENUINE_MARGIN_S = 0.3
"""A speech_started counts as the user's when the server's onset is within this of the user's
speech (silero's onset and the prefix padding blur it by a window or two)."""
ABORTS_METRIC = "voxgate_engine_requests_aborted_total"


# --- part 1: speculative start -----------------------------------------------------------


def turn_detection(x_voxgate: dict[str, Any]) -> dict[str, Any]:
    """A `session.update` body that sets server VAD with voxgate's turn-taking extension."""
    return {"audio": {"input": {"turn_detection": {"type": "server_vad", "x_voxgate": x_voxgate}}}}


@dataclass
class ArmSession:
    """One session of part 1: its arm, its turns, and what /metrics moved meanwhile."""

    arm: str
    turns: list[TurnRecord]
    metrics_delta: dict[str, float] = field(default_factory=dict)
    applied: dict[str, Any] = field(default_factory=dict)
    """The server's `x_voxgate` after the update (proof the arm's setting took)."""


async def arm_session(
    args: argparse.Namespace, arm: str, clips: list[Clip], first_turn: int
) -> ArmSession:
    update = turn_detection({"speculative_start_ms": SPECULATIVE_ARMS[arm]})
    if args.max_output_tokens:
        update["max_output_tokens"] = args.max_output_tokens
    session = ArmSession(arm, [])
    before = await scrape_metrics(args)
    client = RealtimeClient(args.url, api_key=args.api_key, timeout_s=args.timeout)
    try:
        await client.connect()
        applied = await client.session_update(update)
        td = ((applied.get("audio") or {}).get("input") or {}).get("turn_detection") or {}
        session.applied = td.get("x_voxgate") or {}
        for i, clip in enumerate(clips):
            record = await one_turn(client, clip, first_turn + i, 0)
            session.turns.append(record)
            print(progress_line(f"{arm:<19}", record), file=sys.stderr)
            if record.status is None:
                break  # the turn raised: the rest of this session is in doubt
    except FAILURES as e:
        failure = f"session did not start: {type(e).__name__}: {e}"
        session.turns.append(TurnRecord(first_turn, 0, "-", None, ok=False, failure=failure))
        print(f"{arm}: {failure}", file=sys.stderr)
    finally:
        await client.close()
    session.metrics_delta = metrics_delta(before, await scrape_metrics(args))
    return session


async def speculative_ab(args: argparse.Namespace, clips: list[Clip]) -> list[ArmSession]:
    """Sessions of `--session-turns` turns, the arms alternating (and which goes first
    alternating too), each pair of sessions on the same clips in the same order."""
    if args.warmup:
        warm = await arm_session(args, "speculative 200 ms", clips[: args.warmup], -1)
        print(f"warm-up: {len(warm.turns)} turn(s), not counted", file=sys.stderr)
    sessions: list[ArmSession] = []
    arms = list(SPECULATIVE_ARMS)
    turn = 0
    while turn < args.turns:
        size = min(args.session_turns, args.turns - turn)
        block = [clips[(turn + i) % len(clips)] for i in range(size)]
        order = arms if len(sessions) % 4 == 0 else arms[::-1]
        for arm in order:
            sessions.append(await arm_session(args, arm, block, turn))
        turn += size
    return sessions


def speculative_report(sessions: list[ArmSession], source: str, args: argparse.Namespace) -> str:
    arms = list(SPECULATIVE_ARMS)
    records = {arm: [r for s in sessions if s.arm == arm for r in s.turns] for arm in arms}
    ok = {arm: [r for r in records[arm] if r.ok] for arm in arms}

    def column(arm: str, name: str) -> list[float]:
        if name == "client turn_latency":
            return [r.client_turn_latency_ms for r in ok[arm] if r.client_turn_latency_ms]
        stage = name.removeprefix("server ")
        return [r.server_timings_ms[stage] for r in ok[arm] if stage in r.server_timings_ms]

    extra = sorted({k for arm in arms for r in ok[arm] for k in r.server_timings_ms} - set(STAGES))
    names = ["client turn_latency", *(f"server {s}" for s in (*STAGES, *extra))]
    on, off = arms
    lines = [
        "== 1. speculative start: turn latency, same clips in both arms ==",
        f"speech:   {source}",
        f"turns:    {args.turns} per arm in sessions of up to {args.session_turns}, arms "
        f"alternating; {args.warmup} warm-up turn(s) not counted",
        *(f"{arm:<20}answers: {statuses(records[arm])}" for arm in arms),
        *(f"{arm:<20}server applied x_voxgate: {applied(sessions, arm)}" for arm in arms),
        "",
        f"{'milliseconds':<26}| {on:^24} | {off:^24} | {'on - off':^15}",
        f"{'':<26}|{'n':>4}{'p50':>7}{'p95':>7}{'mean':>7} |{'n':>4}{'p50':>7}{'p95':>7}"
        f"{'mean':>7} |{'p50':>7}{'mean':>8}",
    ]
    for name in names:
        cells, stats = [], []
        for arm in arms:
            values = column(arm, name)
            if values:
                s = summary(values)
                stats.append(s)
                cells.append(f"{len(values):>4}{s['p50']:>7.0f}{s['p95']:>7.0f}{s['mean']:>7.0f}")
            else:
                cells.append(f"{0:>4}{'-':>7}{'-':>7}{'-':>7}")
        diff = f"{'-':>7}{'-':>8}"
        if len(stats) == 2:
            a, b = stats
            diff = f"{a['p50'] - b['p50']:>+7.0f}{a['mean'] - b['mean']:>+8.0f}"
        lines.append(f"{name:<26}|{cells[0]} |{cells[1]} |{diff}")
    paired = paired_differences(sessions)
    if paired:
        s = summary(paired)
        lines.append(
            f"client turn_latency, paired by clip (on - off): n {len(paired)}, p50 "
            f"{s['p50']:+.0f} ms, mean {s['mean']:+.0f} ms, "
            f"min {s['min']:+.0f}, max {s['max']:+.0f}"
        )
    lines.append("")
    for arm in arms:
        early = sum(r.server_timings_ms.get("server_overhead", 0.0) < 0 for r in ok[arm])
        lines.append(
            f"{arm:<20}answers begun inside the end-of-turn wait (server_overhead < 0): "
            f"{early}/{len(ok[arm])}"
        )
    lines += dropped_speculation_lines(sessions, records)
    for arm in arms:
        lines += [f"failed ({arm}): {r.clip}: {r.failure}" for r in records[arm] if not r.ok]
    return "\n".join(lines)


def applied(sessions: list[ArmSession], arm: str) -> str:
    seen = {json.dumps(s.applied, sort_keys=True) for s in sessions if s.arm == arm}
    return " | ".join(sorted(seen)) or "-"


def paired_differences(sessions: list[ArmSession]) -> list[float]:
    """Client latency, speculative minus off, for the same clip at the same place in a session."""
    on, off = SPECULATIVE_ARMS
    by_turn: dict[tuple[int, str], dict[str, float]] = {}
    for s in sessions:
        for r in s.turns:
            if r.ok and r.client_turn_latency_ms is not None:
                by_turn.setdefault((r.turn, r.clip), {})[s.arm] = r.client_turn_latency_ms
    return [v[on] - v[off] for v in by_turn.values() if on in v and off in v]


def dropped_speculation_lines(
    sessions: list[ArmSession], records: dict[str, list[TurnRecord]]
) -> list[str]:
    """What /metrics says about dropped speculations, and what it cannot say."""
    if not any(s.metrics_delta for s in sessions):
        return ["dropped speculative starts: not observable (no /metrics from this server)"]
    own = sorted(
        {k for s in sessions for k in s.metrics_delta if k != ABORTS_METRIC and s.metrics_delta[k]}
    )
    lines = []
    for name in own:  # a server that counts speculations itself
        per_arm = {
            arm: sum(s.metrics_delta.get(name, 0.0) for s in sessions if s.arm == arm)
            for arm in SPECULATIVE_ARMS
        }
        lines.append(f"/metrics {name}: " + ", ".join(f"{a} {v:g}" for a, v in per_arm.items()))
    for arm in SPECULATIVE_ARMS:
        aborts = sum(s.metrics_delta.get(ABORTS_METRIC, 0.0) for s in sessions if s.arm == arm)
        # Every answer the client saw cancelled (a split turn's first answer, a cancelled last
        # one) may have aborted its LM request too; aborts beyond those were never shown.
        seen = sum(max(r.responses - 1, 0) + (r.status == "cancelled") for r in records[arm])
        lines.append(
            f"{arm:<20}LM requests aborted (/metrics): {aborts:g}; answers seen cancelled: {seen}; "
            f"unseen aborts (dropped speculative answers): {max(aborts - seen, 0):g}"
        )
    if not own:
        lines.append(
            "dropped speculative starts: no metric counts them and the client never sees one; "
            "unseen LM aborts are a lower bound (a speculation dropped while still in ASR, or "
            "after its LM request finished, aborts nothing)"
        )
    return lines


# --- /metrics ------------------------------------------------------------------------------


def metrics_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/metrics", "", ""))


def _scrape(url: str, api_key: str | None) -> dict[str, float]:
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition(" ")
        name = name.partition("{")[0]
        # Counters of voxgate's speculative start, should a server have them (not vLLM's
        # speculative *decoding*), and the engine's aborted requests.
        wanted = name == ABORTS_METRIC or (
            name.startswith("voxgate_") and "specul" in name and name.endswith("_total")
        )
        if wanted:
            with contextlib.suppress(ValueError):
                values[name] = values.get(name, 0.0) + float(rest.split()[0])
    return values


async def scrape_metrics(args: argparse.Namespace) -> dict[str, float]:
    return await asyncio.to_thread(_scrape, metrics_url(args.url), args.api_key)


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# --- part 2: the agent's voice echoed into the microphone ----------------------------------


@dataclass(frozen=True)
class EchoPath:
    """Loudspeaker to microphone: a plain delay and gain, over white noise."""

    delay_ms: int = 150
    gain_db: float = -6.0
    noise_dbfs: float = -60.0

    @property
    def delay(self) -> int:
        return SAMPLE_RATE * self.delay_ms // 1000

    @property
    def gain(self) -> float:
        return 10 ** (self.gain_db / 20)


class Speaker:
    """The client's loudspeaker, on the microphone's sample clock: answer audio plays back to
    back from when it arrives (as a client's jitter buffer plays it) until it is stopped."""

    def __init__(self, capacity: int) -> None:
        self._audio = np.zeros(capacity, np.float32)
        self.end = 0
        """Position just past the last sample scheduled to play."""
        self._spans: list[list[int]] = []

    def play(self, samples: np.ndarray, now: int) -> None:
        start = max(now, self.end)
        stop = min(start + len(samples), len(self._audio))
        if stop <= start:
            return
        self._audio[start:stop] = samples[: stop - start]
        self._spans.append([start, stop])
        self.end = stop

    def stop(self, now: int) -> None:
        """Stop playing at `now` (the client heard the user start to speak)."""
        if self.end <= now:
            return
        self._audio[now : self.end] = 0.0
        self._spans = [[s, min(e, now)] for s, e in self._spans if s < now]
        self.end = now

    def window(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, 0), min(stop, len(self._audio))
        if hi > lo:
            out[lo - start : hi - start] = self._audio[lo:hi]
        return out

    def played(self, until: int) -> int:
        """Samples that played before position `until`."""
        return sum(max(0, min(e, until) - s) for s, e in self._spans)


@dataclass
class SpeechStart:
    onset_ms: int
    """Where the server heard speech begin: `audio_start_ms` plus the prefix padding."""
    genuine: bool
    """Inside real user speech (the question or the interruption)."""
    speaker_on: bool
    """The answer was playing (and echoing) when the event arrived."""
    into_answer_s: float | None = None
    """Seconds of the current answer that had echoed into the microphone by then."""
    delay_ms: float | None = None
    """For the first start in a stretch of user speech: sending its first voiced sample ->
    receiving this event (VAD confirmation, the server's backlog, the transport)."""


@dataclass
class EchoEpisode:
    """One session of part 2: a question, the story, everything the echo caused."""

    guard: bool
    question: str
    barge_in: bool
    mic_s: float = 0.0
    echoed_s: float = 0.0
    speech_starts: list[SpeechStart] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    """Transcripts of the turns the server committed (the question, and echo it took for one)."""
    capped: bool = False
    barge_injected_s: float | None = None
    barge_detected: bool = False
    barge_cancelled: bool | None = None
    """The answer playing when the interruption began ended `cancelled`."""
    failure: str | None = None

    @property
    def false_starts(self) -> int:
        return sum(not s.genuine for s in self.speech_starts)

    def onset_delays(self) -> tuple[float | None, float | None]:
        """speech_started delays of the question and of the interruption (None: not heard)."""
        delays = [s.delay_ms for s in self.speech_starts if s.delay_ms is not None]
        question = delays[0] if delays else None
        barge = delays[1] if self.barge_detected and len(delays) > 1 else None
        return question, barge


@dataclass
class _Segment:
    """Real user speech on the microphone timeline."""

    start: int
    audio: np.ndarray
    voiced: tuple[int, int]
    """Absolute positions of the first and last voiced samples."""
    onset_sent_at: float | None = None
    """When the chunk holding the first voiced sample was sent (monotonic)."""
    heard: bool = False
    """The server has reported speech starting in it."""


def voiced_span(samples: np.ndarray) -> tuple[int, int]:
    end = voiced_end(samples) or len(samples)
    start = len(samples) - (voiced_end(samples[::-1]) or len(samples))
    return start, end


class EchoConversation(RealtimeClient):
    """A client whose microphone (user speech + echo + noise) streams at real-time pace while it
    follows the server's events, until the conversation settles or `cap_s` of microphone time
    passes."""

    def __init__(
        self,
        episode: EchoEpisode,
        path: EchoPath,
        question: np.ndarray,
        interruption: np.ndarray | None,
        args: argparse.Namespace,
    ) -> None:
        super().__init__(args.url, api_key=args.api_key, timeout_s=args.timeout)
        self.episode = episode
        self._path = path
        self._args = args
        self._chunk = SAMPLE_RATE * args.chunk_ms // 1000
        self._prefix_ms = 0
        """The server VAD's prefix padding (`run` is told it)."""
        self._rng = np.random.default_rng(0)  # the same noise in every session
        self._noise_rms = 10 ** (path.noise_dbfs / 20)
        lead = SAMPLE_RATE // 2
        self._segments = [_Segment(lead, question, self._shift(voiced_span(question), lead))]
        self._question_end = lead + len(question)
        self._cap = self._question_end + int(args.episode_s * SAMPLE_RATE)
        self._speaker = Speaker(self._cap + self._chunk)
        self._interruption = interruption
        self._barge_target: str | None = None
        self.position = 0
        """Microphone samples sent so far: the client's clock."""
        self._open: str | None = None
        self._muted: str | None = None
        """A response the client stopped playing (it heard the user); its late deltas drop."""
        self._answer_start: int | None = None
        self._speaking = False
        self._unanswered = 0
        self._responses_done = 0
        self._quiet_since: int | None = None

    @staticmethod
    def _shift(span: tuple[int, int], by: int) -> tuple[int, int]:
        return span[0] + by, span[1] + by

    async def run(self, prefix_padding_ms: int) -> None:
        self._prefix_ms = prefix_padding_ms
        receiver = asyncio.create_task(self._receive())
        try:
            await self._speak(receiver)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await receiver
        self.episode.mic_s = self.position / SAMPLE_RATE
        self.episode.echoed_s = self._speaker.played(self.position - self._path.delay) / SAMPLE_RATE

    # --- the microphone -------------------------------------------------------------------

    async def _speak(self, receiver: asyncio.Task[None]) -> None:
        started = time.monotonic()
        while not self._over():
            if receiver.done():
                receiver.result()  # the connection failed: raise its error
                raise ConnectionError("the server stopped sending events")
            first, last = self.position, self.position + self._chunk
            if (wait := started + last / SAMPLE_RATE - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            data = base64.b64encode(to_pcm16(self._microphone(first, last))).decode()
            await self._send({"type": "input_audio_buffer.append", "audio": data})
            self.position = last
            for seg in self._segments:
                if seg.onset_sent_at is None and first <= seg.voiced[0] < last:
                    seg.onset_sent_at = time.monotonic()
            self._maybe_interrupt()

    def _microphone(self, first: int, last: int) -> np.ndarray:
        mic = self._rng.normal(0.0, self._noise_rms, last - first).astype(np.float32)
        for seg in self._segments:
            lo, hi = max(first, seg.start), min(last, seg.start + len(seg.audio))
            if hi > lo:
                mic[lo - first : hi - first] += seg.audio[lo - seg.start : hi - seg.start]
        d = self._path.delay
        mic += self._path.gain * self._speaker.window(first - d, last - d)
        return mic

    def _maybe_interrupt(self) -> None:
        """Speak the interruption once the first answer has played `--barge-after` seconds."""
        if self._interruption is None or self._barge_target is not None:
            return
        playing = self._open is not None and self._open != self._muted
        if not playing or self._answer_start is None:
            return
        if self.position - self._answer_start < self._args.barge_after * SAMPLE_RATE:
            return
        start = self.position + self._chunk
        audio = self._interruption
        self._segments.append(_Segment(start, audio, self._shift(voiced_span(audio), start)))
        self._barge_target = self._open
        self.episode.barge_injected_s = start / SAMPLE_RATE

    def _over(self) -> bool:
        now = self.position
        if now >= self._cap:
            self.episode.capped = True
            return True
        last_speech = max(seg.start + len(seg.audio) for seg in self._segments)
        quiet = (
            now >= last_speech
            and self._responses_done > 0
            and self._open is None
            and not self._speaking
            and self._unanswered == 0
            and self._speaker.end + self._path.delay <= now
        )
        if not quiet:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        return now - self._quiet_since >= self._args.settle_s * SAMPLE_RATE

    # --- the server's events --------------------------------------------------------------

    async def _receive(self) -> None:
        async for message in self._require():
            event = json.loads(message)
            if isinstance(event, dict):
                self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        now = self.position
        match event.get("type"):
            case "input_audio_buffer.speech_started":
                self._speaking = True
                start_ms = int(event.get("audio_start_ms") or 0)
                onset = start_ms + (self._prefix_ms if start_ms > 0 else 0)
                speaker_on = self._speaker.end > now - self._path.delay
                start = SpeechStart(onset, genuine=False, speaker_on=speaker_on)
                if self._answer_start is not None:
                    echoed = now - self._path.delay - self._answer_start
                    start.into_answer_s = round(max(echoed, 0) / SAMPLE_RATE, 2)
                if (seg := self._user_speech_at(onset)) is not None:
                    start.genuine = True
                    if not seg.heard and seg.onset_sent_at is not None:
                        start.delay_ms = round((time.monotonic() - seg.onset_sent_at) * 1000, 1)
                    seg.heard = True
                    if len(self._segments) > 1 and seg is self._segments[-1]:
                        self.episode.barge_detected = True
                self.episode.speech_starts.append(start)
                # What a client does when the user starts to talk: stop playing the answer.
                self._speaker.stop(now)
                self._muted = self._open
            case "input_audio_buffer.speech_stopped":
                self._speaking = False
            case "input_audio_buffer.committed":
                self._speaking = False
                self._unanswered += 1
            case "conversation.item.input_audio_transcription.completed":
                transcript = str(event.get("transcript") or "")
                self.episode.heard.append(transcript)
                if not transcript.strip():
                    self._unanswered = max(0, self._unanswered - 1)  # not answered
            case "conversation.item.input_audio_transcription.failed":
                self._unanswered = max(0, self._unanswered - 1)
            case "response.created":
                self._unanswered = 0
                self._open = (event.get("response") or {}).get("id")
                self._answer_start = None
            case "response.output_audio.delta":
                response = event.get("response_id")
                if response is not None and response == self._open and response != self._muted:
                    if self._answer_start is None:
                        self._answer_start = max(now, self._speaker.end)
                    pcm = from_pcm16(base64.b64decode(event.get("delta", "")))
                    self._speaker.play(pcm, now)
            case "response.done":
                response = event.get("response") or {}
                status = str(response.get("status"))
                self.episode.statuses.append(status)
                self._responses_done += 1
                if response.get("id") == self._open:
                    self._open = None
                if response.get("id") == self._barge_target:
                    self.episode.barge_cancelled = status == "cancelled"
            case _:
                pass

    def _user_speech_at(self, onset_ms: int) -> _Segment | None:
        margin = GENUINE_MARGIN_S * 1000
        for seg in self._segments:
            first, last = (p * 1000 / SAMPLE_RATE for p in seg.voiced)
            if first - margin <= onset_ms <= last + margin:
                return seg
        return None


async def echo_episode(
    args: argparse.Namespace,
    guard: bool,
    question: tuple[str, np.ndarray],
    interruption: np.ndarray | None,
) -> EchoEpisode:
    text, audio = question
    episode = EchoEpisode(guard, text, interruption is not None)
    path = EchoPath(args.echo_delay_ms, args.echo_gain_db, args.noise_dbfs)
    update = {
        "instructions": STORY_INSTRUCTIONS,
        "max_output_tokens": args.story_tokens,
        **turn_detection({"echo_guard": guard, "min_interruption_ms": 0}),
    }
    conversation = EchoConversation(episode, path, audio, interruption, args)
    try:
        async with conversation:
            session = await conversation.session_update(update)
            td = session["audio"]["input"]["turn_detection"]
            if td.get("x_voxgate", {}).get("echo_guard") is not guard:
                raise RuntimeError(f"the server did not apply echo_guard={guard}: {td}")
            await conversation.run(int(td.get("prefix_padding_ms", 300)))
    except (*FAILURES, RuntimeError, KeyError) as e:
        episode.failure = f"{type(e).__name__}: {e}"
    return episode


def spoken_questions(args: argparse.Namespace) -> tuple[list[tuple[str, np.ndarray]], str]:
    """The story requests, spoken by Piper (the same audio in both arms)."""
    from piper import PiperVoice  # the `cpu` extra

    voice = PiperVoice.load(str(args.piper_voice))
    spoken = []
    for text in (*STORY_QUESTIONS, INTERRUPTION):
        chunks = list(voice.synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        spoken.append((text, prepare_audio(audio, chunks[0].sample_rate)))
    return spoken, f"Piper ({Path(args.piper_voice).name})"


def interruption_speech(
    args: argparse.Namespace, clips: list[Clip], piper: np.ndarray
) -> tuple[np.ndarray, str]:
    """A real recorded voice if we have one (another speaker than the agent), else Piper."""
    for clip in clips:
        if clip.reference and "librivox" in clip.name:
            return prepare_audio(clip.audio, clip.sample_rate), f"{clip.name} ({clip.reference!r})"
    return piper, f"Piper: {INTERRUPTION!r}"


async def echo_ab(
    args: argparse.Namespace,
    questions: list[tuple[str, np.ndarray]],
    interruption: np.ndarray,
) -> list[EchoEpisode]:
    """Story requests with the guard on and off, alternating (and which goes first too), the
    same question in both arms; then the real interruptions, guard on."""
    plan: list[tuple[bool, int, np.ndarray | None]] = []
    for i in range(args.answers):
        order = (True, False) if i % 2 == 0 else (False, True)
        plan += [(guard, i, None) for guard in order]
    plan += [(True, args.answers + i, interruption) for i in range(args.barge_ins)]
    episodes = []
    for guard, i, barge in plan:
        episode = await echo_episode(args, guard, questions[i % len(questions)], barge)
        episodes.append(episode)
        print(echo_progress(episode), file=sys.stderr)
    return episodes


def echo_progress(e: EchoEpisode) -> str:
    tag = f"echo guard {'on ' if e.guard else 'off'}{' +barge-in' if e.barge_in else ''}"
    if e.failure:
        return f"{tag}: FAILED {e.failure}"
    barge = ""
    if e.barge_in:
        barge = (
            f", barge-in {'detected' if e.barge_detected else 'MISSED'}"
            f" ({e.onset_delays()[1]} ms), answer cancelled: {e.barge_cancelled}"
        )
    return (
        f"{tag}: {e.echoed_s:.1f} s echoed, {e.false_starts} false starts, responses "
        f"{e.statuses}{barge}{' (capped)' if e.capped else ''} | heard {e.heard}"
    )


def echo_report(
    episodes: list[EchoEpisode], source: str, barge_source: str, args: argparse.Namespace
) -> str:
    path = EchoPath(args.echo_delay_ms, args.echo_gain_db, args.noise_dbfs)
    lines = [
        "== 2. echo guard: the agent's own voice in the microphone ==",
        f"echo:     answer audio replayed {path.delay_ms} ms late at {path.gain_db:+g} dB, over "
        f"white noise at {path.noise_dbfs:g} dBFS; x_voxgate.min_interruption_ms 0 in both arms",
        f"asking:   {args.answers} story request(s) per arm ({source}), max_output_tokens "
        f"{args.story_tokens}, each session capped at {args.episode_s:g} s after the question",
        "",
        f"{'echo guard':<11}{'sessions':>9}{'echoed s':>10}{'false':>7}{'playing':>9}{'per min':>9}"
        f"{'answers':>9}{'cancelled':>11}{'echo turns':>12}{'stories done':>14}",
    ]
    rates = {}
    for guard in (True, False):
        group = [e for e in episodes if e.guard is guard and not e.barge_in and not e.failure]
        echoed = sum(e.echoed_s for e in group)
        false = sum(e.false_starts for e in group)
        playing = sum(not s.genuine and s.speaker_on for e in group for s in e.speech_starts)
        answers = sum(len(e.statuses) for e in group)
        cancelled = sum(s == "cancelled" for e in group for s in e.statuses)
        echo_turns = sum(max(len(e.heard) - 1, 0) for e in group)
        finished = sum(bool(e.statuses) and e.statuses[0] != "cancelled" for e in group)
        rate = false / (echoed / 60) if echoed else math.nan
        rates[guard] = rate
        lines.append(
            f"{'on' if guard else 'off':<11}{len(group):>9}{echoed:>10.1f}{false:>7}{playing:>9}"
            f"{rate:>9.2f}"
            f"{answers:>9}{cancelled:>11}{echo_turns:>12}{f'{finished}/{len(group)}':>14}"
        )
    lines.append(
        f"effect of the echo guard: {rates[False]:.2f} -> {rates[True]:.2f} false barge-ins per "
        "minute of echoed answer audio"
    )
    lines.append(
        "  (false = speech_started outside real user speech; playing = of those, while the "
        "answer played; echo turns = turns the server committed besides the question; "
        "stories done = first answer not cancelled)"
    )
    for guard in (True, False):
        into = [
            s.into_answer_s
            for e in episodes
            if e.guard is guard and not e.barge_in and not e.failure
            for s in e.speech_starts
            if not s.genuine and s.speaker_on and s.into_answer_s is not None
        ]
        if into:
            lines.append(
                f"guard {'on' if guard else 'off'}: false barge-ins came this many seconds into "
                f"an answer's echo: p50 {np.median(into):.2f}, all {sorted(into)[:12]}"
            )
    heard = [t for e in episodes if not e.guard and not e.barge_in for t in e.heard[1:]]
    if heard:
        lines.append(f"what the server heard of its own voice (guard off): {heard[:6]}")
    barge = [e for e in episodes if e.barge_in and not e.failure]
    if barge:
        injected = [e for e in barge if e.barge_injected_s is not None]
        detected = [e for e in injected if e.barge_detected]
        delays = [d for e in detected if (d := e.onset_delays()[1]) is not None]
        plain = [d for e in episodes if not e.failure and (d := e.onset_delays()[0]) is not None]
        delay = ""
        if delays and plain:
            delay = (
                f"; its first voiced sample sent -> speech_started received p50 "
                f"{np.median(delays):.0f} ms (the questions, no echo yet: "
                f"{np.median(plain):.0f} ms)"
            )
        lines += [
            "",
            f"real barge-in over the echo, guard on ({barge_source}, spoken "
            f"{args.barge_after:g} s into the answer):",
            f"  detected {len(detected)}/{len(injected)}{delay}; interrupted answer cancelled "
            f"{sum(bool(e.barge_cancelled) for e in injected)}/{len(injected)}; false starts "
            f"meanwhile {sum(e.false_starts for e in barge)} in "
            f"{sum(e.echoed_s for e in barge):.1f} s echoed",
        ]
        if len(injected) < len(barge):
            lines.append(f"  {len(barge) - len(injected)} answer(s) too short to interrupt")
    lines += [f"failed: guard {e.guard}: {e.failure}" for e in episodes if e.failure]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--part", choices=("all", "speculative", "echo"), default="all")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per answer")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    one = parser.add_argument_group("part 1, speculative start")
    one.add_argument("--turns", type=int, default=10, help="measured turns per arm")
    one.add_argument("--warmup", type=int, default=1, help="turns first, not counted")
    one.add_argument("--session-turns", type=int, default=5, help="turns per connection")
    one.add_argument("--speech", default=str(POCKETSPHINX_DATA), help="a folder of questions")
    one.add_argument("--source", choices=("auto", "recorded", "piper"), default="auto")
    one.add_argument("--piper-voice", default=str(default_piper_voice()))
    one.add_argument(
        "--max-output-tokens", type=int, default=60, help="cap answers (first audio unchanged)"
    )
    two = parser.add_argument_group("part 2, echo guard")
    two.add_argument("--answers", type=int, default=3, help="story requests per arm")
    two.add_argument("--barge-ins", type=int, default=2, help="real interruptions, guard on")
    two.add_argument("--barge-after", type=float, default=3.0, help="seconds into the answer")
    two.add_argument("--story-tokens", type=int, default=120, help="max_output_tokens")
    two.add_argument("--episode-s", type=float, default=40.0, help="cap per session")
    two.add_argument("--settle-s", type=float, default=2.5, help="quiet time that ends a session")
    two.add_argument("--echo-delay-ms", type=int, default=150)
    two.add_argument("--echo-gain-db", type=float, default=-6.0)
    two.add_argument("--noise-dbfs", type=float, default=-60.0)
    two.add_argument("--chunk-ms", type=int, default=40, help="microphone append size")
    args = parser.parse_args(argv)
    if min(args.turns, args.session_turns, args.chunk_ms) < 1 or args.warmup < 0:
        parser.error("--turns, --session-turns and --chunk-ms must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    dump: dict[str, Any] = {"url": args.url}
    reports = []
    clips, source = load_speech(args)
    if args.part in ("all", "speculative"):
        sessions = asyncio.run(speculative_ab(args, clips))
        reports.append(speculative_report(sessions, source, args))
        dump["speculative"] = [asdict(s) for s in sessions]
    if args.part in ("all", "echo"):
        spoken, spoken_source = spoken_questions(args)
        questions, piper_interruption = spoken[:-1], spoken[-1][1]
        interruption, barge_source = interruption_speech(args, clips, piper_interruption)
        episodes = asyncio.run(echo_ab(args, questions, interruption))
        reports.append(echo_report(episodes, spoken_source, barge_source, args))
        dump["echo"] = [asdict(e) for e in episodes]
    print(f"url: {args.url}\n")
    print("\n\n".join(reports))
    print(f"\nwall time: {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
