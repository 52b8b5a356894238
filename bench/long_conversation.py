"""Long conversations: what a 200-turn session costs, and what compacting its memory costs.

    python bench/long_conversation.py --url ws://127.0.0.1:8000/v1/realtime

Part 1, one long session. One WebSocket session makes `--turns` text turns
(`conversation.item.create` with the user's words, then `response.create` with
`output_modalities` text and a small `max_output_tokens`). Turn 1 states a fact; the persona in
`instructions` names the agent. Per turn: the time from sending `response.create` to the first
`response.output_text.delta` and to `response.done`, and `usage.input_tokens`; every 10 turns
the resident memory of the server's process tree. It prints the first and the last tenth of
the turns side by side (at most 10 turns each), the summary folds
(`voxgate.conversation.summary.updated`) and the items they deleted, then asks for the fact
and says whether the answer and the last summary still hold it.

Part 2, the cost of a fold. The server reports no fold time, so it is taken from the client:
from the `response.done` of the turn whose prompt was cut (the fold starts just before it is
sent) to `summary.updated`. That includes any wait behind other work, so it bounds the fold's
own work from above. A second session then speaks recorded questions while the first is idle
and while it is folding, and the first audio of each answer is compared. Folds are made on
purpose: the first session sends a long user message (about as many tokens as a natural fold
takes), which no longer fits beside the previous one, so the previous one is folded. It is sent
so that its `response.done` (the fold's start) comes just before the second session's question
ends; should it come later, the question's stream waits for it at that point (as a microphone
whose network stalls), so the text turn itself never overlaps the wait for the answer.

Figures only: it never passes or fails on time. The server must be on this machine: its
process tree is found by the port it listens on (`--server-pid` otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import psutil
from common import (
    ANSWERED,
    FAILURES,
    POCKETSPHINX_DATA,
    Clip,
    default_piper_voice,
    load_speech,
    percentile,
    server_pid,
    status_counts,
)
from websockets.exceptions import ConnectionClosed

from voxgate.clients.realtime_client import (
    SAMPLE_RATE,
    RealtimeClient,
    TurnEvents,
    prepare_audio,
    to_pcm16,
    voiced_end,
)
from voxgate.model.memory import SUMMARY_PRIORITY
from voxgate.model.types import ResponseOptions

PERSONA = (
    "You are Nova, a friendly voice assistant. Answer in one short sentence, and remember what "
    "the user tells you about themselves."
)
FACT = "My name is Sam and my favourite colour is green."
FACT_WORD = "green"
QUESTION = "What is my favourite colour?"
TOPICS = (
    "rivers", "the moon", "bread", "bicycles", "owls", "volcanoes", "chess", "tea", "bridges",
    "penguins", "clocks", "deserts", "violins", "glaciers", "honey bees", "trains", "maps",
    "mushrooms", "lighthouses", "kites", "coral reefs", "paper", "thunder", "marathons",
)  # fmt: skip
TRIP_SENTENCES = (
    "On day {d} of my trip I walked about {k} kilometres along the coast before lunch.",
    "The bus from the harbour left at {h} o'clock and was nearly empty.",
    "I had soup with fresh bread in a small cafe near the old market square.",
    "A fisherman told me the tide comes in about {k} metres in an hour here.",
    "In the afternoon I read a book on a bench and watched the boats come back.",
    "The museum had a room of old clocks, and one of them still chimed every {k} minutes.",
    "My room in the guest house is on the {k}th floor and looks over the bay.",
    "I met a couple from another town who had cycled {k} kilometres that morning.",
    "Dinner was grilled fish, potatoes and a salad, and it cost less than I expected.",
    "The evening was windy, so I stayed in and wrote postcards to my friends.",
)
FOLD_TOKENS = 8
"""Answer cap of the fold-forcing turns: the fold, not the answer, is what is measured."""
TOKEN_DROP = 0.75
"""A turn whose prompt is under this share of the previous turn's was cut: a fold starts."""
FOLD_METRIC = re.compile(r"^(voxgate_\w*(?:summar|fold|compact)\w*)(\{[^}]*\})? (\S+)$")
FOLD_GRACE_S = 30.0
"""How long the question waits for a fold the last turns may have started."""
MAX_SUMMARY_CHARS = 600
"""How much of a summary is printed."""


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def gb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e9:.2f}"


# --- the text session ----------------------------------------------------------------------


@dataclass
class TextTurn:
    index: int
    sent_at: float
    """When `response.create` was sent (monotonic seconds)."""
    first_text_ms: float | None = None
    done_ms: float | None = None
    done_at: float | None = None
    input_tokens: int | None = None
    status: str = "raised"
    text: str = ""
    failure: str | None = None
    rss: int | None = None
    """Resident memory of the server's process tree, sampled after this turn (every 10th)."""


@dataclass
class Fold:
    at: float
    items_folded: int
    summary: str


class TextSession(RealtimeClient):
    """One realtime session driven by text turns. A reader task notes when each event arrives:
    a turn's text and `response.done`, summary folds and deleted items (which come between
    turns, whenever the fold ends)."""

    def __init__(self, url: str, api_key: str | None, max_output_tokens: int, timeout_s: float):
        super().__init__(url, api_key=api_key, timeout_s=timeout_s)
        self.max_output_tokens = max_output_tokens
        self.folds: list[Fold] = []
        self.items_deleted = 0
        self.errors: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._turn: TextTurn | None = None
        self._done: asyncio.Future[None] | None = None
        self._turn_events: set[str] = set()
        self._folded = asyncio.Event()
        self.closed = False
        """The server closed the connection: no more turns."""

    async def __aenter__(self) -> TextSession:
        await self.connect()
        try:
            await self.session_update(
                {
                    "instructions": PERSONA,
                    "output_modalities": ["text"],
                    "max_output_tokens": self.max_output_tokens,
                    "audio": {"input": {"turn_detection": None}},
                }
            )
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._reader
        await self.close()

    async def turn(self, index: int, text: str, max_output_tokens: int | None = None) -> TextTurn:
        """Say `text` as the user and wait for the whole answer; a failure is noted, not raised."""
        item_event, response_event = (f"event_{uuid.uuid4().hex[:20]}" for _ in range(2))
        self._turn_events = {item_event, response_event}
        self._done = asyncio.get_running_loop().create_future()
        content = [{"type": "input_text", "text": text}]
        await self._send(
            {
                "type": "conversation.item.create",
                "event_id": item_event,
                "item": {"type": "message", "role": "user", "content": content},
            }
        )
        response: dict[str, Any] = {"output_modalities": ["text"]}
        if max_output_tokens is not None:
            response["max_output_tokens"] = max_output_tokens
        turn = TextTurn(index, time.monotonic())
        self._turn = turn
        await self._send(
            {"type": "response.create", "event_id": response_event, "response": response}
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._done
        except (TimeoutError, ConnectionError) as e:
            turn.failure = f"{type(e).__name__}: {e}"
        finally:
            self._turn, self._done = None, None
        return turn

    async def wait_folds(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` folds have been announced; False if they did not come in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self.folds) < count:
                    self._folded.clear()
                    await self._folded.wait()
        return len(self.folds) >= count

    async def _read(self) -> None:
        ws = self._require()
        try:
            async for message in ws:
                self._feed(json.loads(message), time.monotonic())
        except ConnectionClosed:
            pass
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("the server closed the connection"))

    def _feed(self, event: dict[str, Any], at: float) -> None:
        turn = self._turn
        match event.get("type"):
            case "response.output_text.delta" if turn is not None:
                if turn.first_text_ms is None:
                    turn.first_text_ms = (at - turn.sent_at) * 1000
                turn.text += event.get("delta", "")
            case "response.done" if turn is not None:
                response = event.get("response") or {}
                turn.done_at, turn.done_ms = at, (at - turn.sent_at) * 1000
                turn.status = str(response.get("status"))
                turn.input_tokens = (response.get("usage") or {}).get("input_tokens")
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)
            case "voxgate.conversation.summary.updated":
                self.folds.append(
                    Fold(at, int(event.get("items_folded", 0)), str(event.get("summary", "")))
                )
                self._folded.set()
            case "conversation.item.deleted":
                self.items_deleted += 1
            case "error":
                error = event.get("error") or {}
                self.errors.append(error)
                if error.get("event_id") in self._turn_events and self._done is not None:
                    if not self._done.done():
                        self._done.set_exception(
                            ConnectionError(f"refused: {error.get('code')}: {error.get('message')}")
                        )


def user_text(index: int) -> str:
    """Turn 1 states the fact; the others are short questions on changing topics."""
    if index == 1:
        return FACT
    topic = TOPICS[index % len(TOPICS)]
    if index % 2:
        return f"Tell me one interesting thing about {topic}."
    return f"What is a common question people ask about {topic}?"


def trip_text(trial: int, words: int) -> str:
    """A long, plausible user message (a travel diary), different for every trial."""
    sentences, n = [], 0
    while sum(len(s.split()) for s in sentences) < words:
        template = TRIP_SENTENCES[n % len(TRIP_SENTENCES)]
        sentences.append(
            template.format(
                d=trial * 10 + n // 10 + 1, k=3 + (7 * n + trial) % 17, h=6 + (n + trial) % 12
            )
        )
        n += 1
    return "Let me tell you about my trip. " + " ".join(sentences)


# --- the server's process tree and metrics --------------------------------------------------


def tree_rss(pid: int) -> int | None:
    """Resident memory of the server's process tree (API process, EngineCore, workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def fold_metrics(http: httpx.AsyncClient, base: str) -> dict[str, float]:
    """Any voxgate metric about summaries or folds in /metrics (there is none today)."""
    try:
        text = (await http.get(f"{base}/metrics")).text
    except httpx.HTTPError:
        return {}
    found = {}
    for line in text.splitlines():
        if (m := FOLD_METRIC.match(line)) and not m.group(1).endswith("_created"):
            found[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return found


# --- part 1: one long session --------------------------------------------------------------


@dataclass
class LongSession:
    turns: list[TextTurn]
    folds: list[Fold]
    items_deleted: int
    rss_before: int | None
    answer: TextTurn | None
    summary_at_question: str
    errors: list[dict[str, Any]]
    wall_s: float


async def long_session(args: argparse.Namespace, pid: int) -> LongSession:
    started = time.monotonic()
    rss_before = tree_rss(pid)
    turns: list[TextTurn] = []
    async with TextSession(args.url, args.api_key, args.max_output_tokens, args.timeout) as a:
        for i in range(1, args.turns + 1):
            turn = await a.turn(i, user_text(i))
            turns.append(turn)
            if a.closed:
                print(f"turn {i}: {turn.failure}; the session is over", file=sys.stderr)
                break
            if i % 10 == 0:
                turn.rss = tree_rss(pid)
                print(
                    f"turn {i}: done {fmt(turn.done_ms)} ms, input {turn.input_tokens} tokens, "
                    f"{len(a.folds)} folds",
                    file=sys.stderr,
                )
        # A fold the last turns started may still run: let it end, so the question meets the
        # newest summary (a cut while another fold ran starts none, hence the short wait).
        if cut_since(turns, a.folds[-1].at if a.folds else float("-inf")):
            await a.wait_folds(len(a.folds) + 1, FOLD_GRACE_S)
        summary = a.folds[-1].summary if a.folds else ""
        answer = await a.turn(args.turns + 1, QUESTION, args.answer_tokens)
        return LongSession(
            turns,
            list(a.folds),
            a.items_deleted,
            rss_before,
            answer,
            summary,
            list(a.errors),
            time.monotonic() - started,
        )


def cuts(turns: Sequence[TextTurn]) -> list[TextTurn]:
    """The turns whose prompt was cut (far fewer input tokens than the turn before): each
    starts a fold, unless one is already running."""
    return [
        cur
        for prev, cur in itertools.pairwise(turns)
        if prev.input_tokens
        and cur.input_tokens
        and cur.input_tokens < TOKEN_DROP * prev.input_tokens
    ]


def cut_since(turns: Sequence[TextTurn], since: float) -> bool:
    return any(t.done_at is not None and t.done_at > since for t in cuts(turns))


def fold_triggers(turns: Sequence[TextTurn], folds: Sequence[Fold]) -> list[TextTurn | None]:
    """For each fold, the cut turn that started it (the first cut since the fold before), or
    None."""
    cut = cuts(turns)
    triggers: list[TextTurn | None] = []
    earlier = float("-inf")
    for fold in folds:
        mine = [t for t in cut if t.done_at is not None and earlier < t.done_at < fold.at]
        triggers.append(mine[0] if mine else None)
        earlier = fold.at
    return triggers


def report_long(result: LongSession, args: argparse.Namespace) -> list[str]:
    turns = result.turns
    k = min(10, max(1, len(turns) // 10))
    lines = [
        f"Part 1: one session, {len(turns)} text turns (answers capped at "
        f"{args.max_output_tokens} tokens), {result.wall_s:.0f} s",
        "",
        f"{'turns':<10}{'ok':>4}{'first text p50':>16}{'p95':>7}{'done p50':>10}{'p95':>7}"
        f"{'input tokens p50':>18}{'max':>6}{'RSS GB':>8}",
    ]
    for group in (turns[:k], turns[-k:]):
        ok = [t for t in group if t.failure is None and t.done_ms is not None]
        first = [t.first_text_ms for t in ok if t.first_text_ms is not None]
        done = [t.done_ms for t in ok if t.done_ms is not None]
        tokens = [t.input_tokens for t in ok if t.input_tokens is not None]
        rss = [t.rss for t in group if t.rss is not None]
        lines.append(
            f"{f'{group[0].index}-{group[-1].index}':<10}{len(ok):>4}"
            f"{fmt(percentile(first, 50)):>16}{fmt(percentile(first, 95)):>7}"
            f"{fmt(percentile(done, 50)):>10}{fmt(percentile(done, 95)):>7}"
            f"{fmt(percentile(tokens, 50)):>18}{max(tokens, default=0):>6}"
            f"{gb(rss[-1] if rss else None):>8}"
        )
    all_first = [t.first_text_ms for t in turns if t.first_text_ms is not None]
    lines.append(
        f"{'all':<10}{sum(t.failure is None for t in turns):>4}"
        f"{fmt(percentile(all_first, 50)):>16}{fmt(percentile(all_first, 95)):>7}"
    )
    samples = [t.rss for t in turns if t.rss is not None]
    lines += [
        "",
        "input tokens every 10 turns: "
        + " ".join(str(t.input_tokens) for t in turns if t.index % 10 == 0),
        f"server RSS GB before / every 10 turns: {gb(result.rss_before)} / "
        + " ".join(gb(r) for r in samples),
    ]
    failures = [f"turn {t.index}: {t.failure}" for t in turns if t.failure]
    lines.append(
        "answers: "
        + status_counts(t.status for t in turns)
        + (f"; {len(result.errors)} error events" if result.errors else "")
    )
    lines += failures[:5]

    folds, triggers = result.folds, fold_triggers(turns, result.folds)
    durations = [
        (f.at - t.done_at) * 1000 for f, t in zip(folds, triggers, strict=True) if t and t.done_at
    ]
    lines += [
        "",
        f"summary folds: {len(folds)} (at turns "
        + ", ".join(str(t.index) if t else "?" for t in triggers)
        + f"); items deleted: {result.items_deleted} "
        f"(the folds said {sum(f.items_folded for f in folds)})",
        f"fold time, response.done of the cut turn -> summary.updated (upper bound; this session's "
        f"next turns ran meanwhile), ms: p50 {fmt(percentile(durations, 50))}, "
        f"p95 {fmt(percentile(durations, 95))}, max {fmt(max(durations, default=None))}",
    ]
    after = [
        next((t for t in turns if t.sent_at > f.at and t.done_ms is not None), None) for f in folds
    ]
    after_ms = [t.done_ms for t in after if t is not None and t.done_ms is not None]
    others = [t.done_ms for t in turns if t not in after and t.done_ms is not None]
    lines.append(
        f"turn right after a summary update (new system prompt, no cached prefix): done p50 "
        f"{fmt(percentile(after_ms, 50))} ms, other turns {fmt(percentile(others, 50))} ms"
    )
    with_fact = [i + 1 for i, f in enumerate(folds) if FACT_WORD in f.summary.lower()]
    lines.append(
        f"summaries holding '{FACT_WORD}': {len(with_fact)} of {len(folds)}"
        + (f" (the last of them: fold {with_fact[-1]})" if with_fact else "")
    )
    if folds:
        first = folds[0].summary
        lines.append(f"first summary: {first[:MAX_SUMMARY_CHARS]!r}")
    summary = result.summary_at_question
    shown = summary if len(summary) <= MAX_SUMMARY_CHARS else summary[:MAX_SUMMARY_CHARS] + "..."
    answer = result.answer
    lines += [
        "",
        f"fact (turn 1): {FACT!r}",
        f"summary when asked ({len(summary.split())} words): {shown!r}",
        f"summary holds '{FACT_WORD}': {'yes' if FACT_WORD in summary.lower() else 'no'}",
        f"asked: {QUESTION!r}",
        f"answer: {answer.text.strip()!r}" if answer else "answer: none",
        f"answer holds '{FACT_WORD}': "
        + ("yes" if answer and FACT_WORD in answer.text.lower() else "no"),
    ]
    if answer is not None and answer.failure:
        lines.append(f"the question failed: {answer.failure}")
    return lines


# --- part 2: a live spoken turn while another session folds ---------------------------------


class AudioClient(RealtimeClient):
    """A `RealtimeClient` that keeps when the first answer audio arrived (monotonic), and can
    hold its microphone stream at one point until told to go on (`hold`)."""

    first_audio_at: float | None = None
    hold: tuple[int, asyncio.Event] | None = None
    """(sample, event): the chunk that reaches this sample of the stream is not sent before the
    event is set; the rest of the stream keeps real-time pace from then on."""
    held_s: float = 0.0
    """How long the last turn's stream was held."""

    async def _collect(self, events: TurnEvents, sender: asyncio.Task[None]) -> None:
        self.first_audio_at = None
        try:
            await super()._collect(events, sender)
        finally:
            self.first_audio_at = events.first_audio_at

    async def _stream(
        self,
        stream: np.ndarray,
        bounds: list[tuple[int, int]],
        voiced_end_at: int | None,
        voiced_sent: list[float],
    ) -> None:
        start, hold, self.held_s = time.monotonic(), self.hold, 0.0
        for first, last in bounds:
            if (wait := start + last / SAMPLE_RATE - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if hold is not None and last >= hold[0] and not hold[1].is_set():
                held = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout_s):
                        await hold[1].wait()
                self.held_s = time.monotonic() - held
                start += self.held_s
            data = base64.b64encode(to_pcm16(stream[first:last])).decode()
            await self._send({"type": "input_audio_buffer.append", "audio": data})
            if voiced_end_at is not None and first < voiced_end_at <= last:
                voiced_sent.append(time.monotonic())


@dataclass
class Trial:
    condition: str
    """"idle" (the text session sends nothing) or "folding" (it folds meanwhile)."""
    clip: str
    client_ms: float | None = None
    server_ms: dict[str, float] = field(default_factory=dict)
    status: str = "raised"
    failure: str | None = None
    fold_ms: float | None = None
    coverage: float | None = None
    """Share of the spoken turn's wait (last voiced sample sent -> first audio) that the fold
    overlapped."""
    held_ms: float = 0.0
    """How long the spoken question was held for the fold to start."""
    text_turn_ms: float | None = None
    """How long the fold-forcing text turn took (response.create -> response.done)."""
    text_turn_overlap_ms: float = 0.0
    """How much of that wait the fold-forcing text turn itself overlapped (aimed at 0)."""


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


async def spoken_turn(b: AudioClient, clip: Clip, trial: Trial) -> tuple[float, float] | None:
    """Speak `clip`; fill `trial`; return the wait (voiced end sent, first audio) if answered."""
    try:
        result = await b.send_turn(clip.audio, clip.sample_rate)
    except FAILURES as e:
        trial.failure = f"{type(e).__name__}: {e}"
        return None
    trial.status, trial.server_ms = result.status, result.server_timings_ms
    trial.client_ms = result.turn_latency_ms
    if result.status not in ANSWERED or result.turn_latency_ms is None:
        trial.failure = f"status {result.status}"
        return None
    if b.first_audio_at is None:
        return None
    return b.first_audio_at - result.turn_latency_ms / 1000, b.first_audio_at


@dataclass
class Compaction:
    fold_alone_ms: list[float]
    fold_turn_ms: list[float]
    """response.create -> response.done of the fold-forcing text turns, run alone."""
    primed_tokens: int | None
    trials: list[Trial]
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    wall_s: float


class FoldForcer:
    """Session A of part 2. Each of its long messages no longer fits in the prompt beside the
    one before it, so the server cuts the prompt and folds the earlier one into the summary."""

    def __init__(self, session: TextSession, words: int, timeout_s: float) -> None:
        self.session = session
        self.words = words
        self.timeout_s = timeout_s
        self.sent = 0

    async def send(self) -> TextTurn:
        turn = await self.session.turn(self.sent, trip_text(self.sent, self.words), FOLD_TOKENS)
        self.sent += 1
        return turn

    async def fold_of(self, turn: TextTurn, folds_before: int) -> Fold | None:
        """The fold `turn` started (waited for), or None if none came in time."""
        if turn.failure or not await self.session.wait_folds(folds_before + 1, self.timeout_s):
            return None
        return self.session.folds[folds_before]


async def compaction(args: argparse.Namespace, clips: list[Clip]) -> Compaction:
    started = time.monotonic()
    base = args.url.replace("ws://", "http://").replace("wss://", "https://")
    base = base.removesuffix("/v1/realtime")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        metrics_before = await fold_metrics(http, base)
        trials: list[Trial] = []
        alone: list[float] = []
        turn_ms: list[float] = []
        b = AudioClient(args.url, api_key=args.api_key, timeout_s=args.timeout)
        async with TextSession(args.url, args.api_key, args.max_output_tokens, args.timeout) as a:
            forcer = FoldForcer(a, args.fold_words, args.fold_timeout)
            await b.connect()
            try:
                await b.session_update(
                    {"instructions": PERSONA, "max_output_tokens": args.max_output_tokens}
                )
                await spoken_turn(b, clips[-1], Trial("warm-up", clips[-1].name))
                primed = await forcer.send()  # fits: nothing to fold yet
                print(f"primed: {primed.input_tokens} input tokens", file=sys.stderr)
                # Folds with nothing else running: the fold's own cost, and how early to send.
                for n in range(args.alone_folds):
                    before = len(a.folds)
                    turn = await forcer.send()
                    if turn.done_ms is not None:
                        turn_ms.append(turn.done_ms)
                    fold = await forcer.fold_of(turn, before)
                    fold_ms = None
                    if fold is not None and turn.done_at is not None:
                        fold_ms = (fold.at - turn.done_at) * 1000
                        alone.append(fold_ms)
                    print(
                        f"fold alone: {fmt(fold_ms)} ms after a {fmt(turn.done_ms)} ms turn of "
                        f"{turn.input_tokens} input tokens",
                        file=sys.stderr,
                    )
                    if fold is None and n == 0:
                        sys.exit(
                            f"no fold within {args.fold_timeout:g} s of a fold-forcing message: "
                            "is the context larger than two of them? raise --fold-words"
                        )
                lead_s, early_s = (percentile(turn_ms, 50) or 1000.0) / 1000, args.fold_early_s
                for i in range(args.trials):
                    clip = clips[i % len(clips)]
                    order = ("idle", "folding") if i % 2 == 0 else ("folding", "idle")
                    for condition in order:
                        trial = Trial(condition, clip.name)
                        if condition == "idle":
                            await spoken_turn(b, clip, trial)
                        else:
                            await folding_trial(forcer, b, clip, trial, lead_s, early_s)
                        trials.append(trial)
                        print(
                            f"pair {i + 1} {condition}: first audio {fmt(trial.client_ms)} ms"
                            + (
                                f", fold {fmt(trial.fold_ms)} ms covered "
                                f"{fmt(trial.coverage and 100 * trial.coverage)} %"
                                if condition == "folding"
                                else ""
                            )
                            + (f" ({trial.failure})" if trial.failure else ""),
                            file=sys.stderr,
                        )
            finally:
                await b.close()
        metrics_after = await fold_metrics(http, base)
    return Compaction(
        alone,
        turn_ms,
        primed.input_tokens,
        trials,
        metrics_before,
        metrics_after,
        time.monotonic() - started,
    )


async def folding_trial(
    forcer: FoldForcer,
    b: AudioClient,
    clip: Clip,
    trial: Trial,
    lead_s: float,
    early_s: float,
) -> None:
    """Speak `clip` in session B while session A folds, the fold starting `early_s` before B's
    last voiced sample. A's fold-forcing turn is sent `lead_s` (its usual duration) before that
    point, and B's stream is held there until A's `response.done` (the fold's start) arrives:
    a microphone whose network stalls for a moment, so a slow text turn never overlaps B's
    wait for its answer."""
    samples = prepare_audio(clip.audio, clip.sample_rate)
    hold_at = max(0, (voiced_end(samples) or len(samples)) - round(early_s * SAMPLE_RATE))
    folds = len(forcer.session.folds)
    fold_started = asyncio.Event()
    b.hold = (hold_at, fold_started)
    try:
        speaking = asyncio.create_task(spoken_turn(b, clip, trial))
        await asyncio.sleep(max(0.0, hold_at / SAMPLE_RATE - lead_s))
        try:
            turn = await forcer.send()
        finally:
            fold_started.set()
        trial.text_turn_ms = turn.done_ms
        fold = await forcer.fold_of(turn, folds)
        wait = await speaking
    finally:
        b.hold = None
    trial.held_ms = b.held_s * 1000
    if fold is None or turn.done_at is None:
        trial.failure = trial.failure or "no fold"
        return
    trial.fold_ms = (fold.at - turn.done_at) * 1000
    if wait is not None:
        start, end = wait
        trial.coverage = overlap(turn.done_at, fold.at, start, end) / max(end - start, 1e-3)
        trial.text_turn_overlap_ms = overlap(turn.sent_at, turn.done_at, start, end) * 1000


def report_compaction(result: Compaction, args: argparse.Namespace) -> list[str]:
    realtime = ResponseOptions.__dataclass_fields__["priority"].default
    lines = [
        f"Part 2: the cost of compaction, {result.wall_s:.0f} s",
        "",
        f"fold priority: SUMMARY_PRIORITY = {SUMMARY_PRIORITY} (realtime turns {realtime}, REST "
        f"10 by default; lower is served first). vLLM orders *waiting* requests by it: with free "
        f"batch slots a fold runs beside a live turn, and ASR/TTS share the CPU with it.",
    ]
    if result.metrics_after:
        lines.append("fold metrics in /metrics (before -> after part 2):")
        lines += [
            f"  {name} {result.metrics_before.get(name, 0):g} -> {value:g}"
            for name, value in result.metrics_after.items()
        ]
    else:
        lines.append(
            "/metrics has no summary or fold metric: fold times below are client-side, from the "
            "response.done of the cut turn to summary.updated, an upper bound (waits included)"
        )
    folding = [t for t in result.trials if t.condition == "folding"]
    concurrent = [t.fold_ms for t in folding if t.fold_ms is not None]
    lines += [
        f"fold-forcing messages: ~{args.fold_words} words; the first one's prompt was "
        f"{result.primed_tokens} tokens; each later one folds the one before it",
        f"fold time alone (nothing else running), ms: {len(result.fold_alone_ms)} folds, "
        f"p50 {fmt(percentile(result.fold_alone_ms, 50))}, "
        f"max {fmt(max(result.fold_alone_ms, default=None))}",
        f"fold time beside a spoken turn, ms: {len(concurrent)} folds, "
        f"p50 {fmt(percentile(concurrent, 50))}, max {fmt(max(concurrent, default=None))}",
        "",
        "first audio of a spoken turn in a second session, while the first session is idle or "
        "folding (ms):",
        f"{'condition':<10}{'ok':>6}{'client p50':>12}{'p95':>7}{'server p50':>12}{'p95':>7}"
        f"{'asr':>7}{'lm 1st sent.':>13}{'tts 1st':>9}{'fold cover':>12}",
    ]
    for condition in ("idle", "folding"):
        group = [t for t in result.trials if t.condition == condition]
        ok = [t for t in group if t.failure is None and t.client_ms is not None]
        client = [t.client_ms for t in ok if t.client_ms is not None]

        def stage(name: str, ok: list[Trial] = ok) -> list[float]:
            return [t.server_ms[name] for t in ok if name in t.server_ms]

        cover = [t.coverage for t in ok if t.coverage is not None]
        lines.append(
            f"{condition:<10}{f'{len(ok)}/{len(group)}':>6}"
            f"{fmt(percentile(client, 50)):>12}{fmt(percentile(client, 95)):>7}"
            f"{fmt(percentile(stage('turn_latency'), 50)):>12}"
            f"{fmt(percentile(stage('turn_latency'), 95)):>7}"
            f"{fmt(percentile(stage('asr'), 50)):>7}"
            f"{fmt(percentile(stage('lm_first_sentence'), 50)):>13}"
            f"{fmt(percentile(stage('tts_first_chunk'), 50)):>9}"
            + (f"{fmt(100 * percentile(cover, 50), 0) + ' %':>12}" if cover else f"{'':>12}")
        )
    paired = []
    for first, second in zip(result.trials[0::2], result.trials[1::2], strict=False):
        idle, fold = (first, second) if first.condition == "idle" else (second, first)
        if idle.failure is None and fold.failure is None and idle.client_ms and fold.client_ms:
            paired.append(fold.client_ms - idle.client_ms)
    overlaps = [t.text_turn_overlap_ms for t in folding if t.failure is None]
    held = [t.held_ms for t in folding if t.failure is None]
    lines += [
        f"paired by clip, folding - idle: p50 {fmt(percentile(paired, 50), 0)} ms, mean "
        f"{fmt(float(np.mean(paired)) if paired else None, 0)} ms over {len(paired)} pairs",
        f"the fold-forcing text turn itself overlapped the spoken turn's wait by p50 "
        f"{fmt(percentile(overlaps, 50))} ms (max {fmt(max(overlaps, default=None))}); the "
        f"question was held {args.fold_early_s:g} s before its end for the fold to start: "
        f"p50 {fmt(percentile(held, 50))} ms, max {fmt(max(held, default=None))}",
    ]
    lines += [f"{t.condition} {t.clip}: {t.failure}" for t in result.trials if t.failure]
    return lines


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--turns", type=int, default=200, help="text turns of the long session")
    parser.add_argument("--max-output-tokens", type=int, default=24, help="answer cap per turn")
    parser.add_argument("--answer-tokens", type=int, default=32, help="cap of the final answer")
    parser.add_argument("--trials", type=int, default=8, help="idle/folding pairs of part 2")
    parser.add_argument("--alone-folds", type=int, default=3, help="folds timed on their own")
    parser.add_argument(
        "--fold-words", type=int, default=620, help="words of each fold-forcing message"
    )
    parser.add_argument(
        "--fold-early-s",
        type=float,
        default=0.3,
        help="start each fold this long before the spoken question ends",
    )
    parser.add_argument(
        "--fold-timeout", type=float, default=30.0, help="seconds to wait for a forced fold"
    )
    parser.add_argument("--part", choices=("all", "long", "compaction"), default="all")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per answer or fold")
    parser.add_argument("--server-pid", type=int, help="default: whoever listens on the port")
    parser.add_argument("--speech", default=str(POCKETSPHINX_DATA))
    parser.add_argument("--source", choices=("auto", "recorded", "piper"), default="auto")
    parser.add_argument("--piper-voice", default=str(default_piper_voice()))
    parser.add_argument("--max-clip-s", type=float, default=4.0, help="longest question spoken")
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    args = parser.parse_args(argv)
    if args.turns < 2 or args.trials < 1 or args.alone_folds < 1:
        parser.error("--turns must be at least 2, --trials and --alone-folds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    pid = server_pid(args)
    print(
        f"url: {args.url} (server pid {pid}, {psutil.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )
    if args.part in ("all", "long"):
        print("\n".join(["", *report_long(asyncio.run(long_session(args, pid)), args)]))
    if args.part in ("all", "compaction"):
        clips, source = load_speech(args)
        short = [c for c in clips if len(c.audio) / c.sample_rate <= args.max_clip_s]
        clips = short or clips
        print(f"\nspeech: {source}; {len(clips)} clips of at most {args.max_clip_s:g} s")
        print("\n".join(report_compaction(asyncio.run(compaction(args, clips)), args)))
    print(
        f"\nwall time: {time.monotonic() - started:.0f} s; load average now "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
