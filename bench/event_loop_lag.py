"""Event-loop lag under megabyte payloads: does one client's big message stall everyone else?

    python bench/event_loop_lag.py --url http://127.0.0.1:8000 --sessions 4 --seconds 60

`--sessions` realtime sessions each send, one after another for `--seconds`, events near the
server's event cap (`--payload-mib`, 3.9 by default under the 4 MiB cap): `session.update`
with megabytes of instructions, `conversation.item.create` with megabytes of text, an
`input_audio_buffer.append` of megabytes of audio, then `response.create` (the shape of the
report that once stalled the server for seconds: the prompt tokenised on the event loop). Each
sender waits for the server's answer to its event before the next, so the server is kept busy
but not flooded. Meanwhile one more client, in a process of its own, GETs `/health` on its own
connection every 20 ms.

It prints:
- the `/health` round trip (p50/p95/p99/max): what any other client waited;
- the server's own `voxgate_event_loop_lag_seconds` over the run (how late a 100 ms timer on
  the event loop fired), as bucket counts and an upper bound of its p99 (a server without the
  metric prints n/a);
- payloads sent, megabytes per second, and the answers by kind.
Figures only: it never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import time
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import httpx
import numpy as np
import websockets
from common import percentile

LAG_METRIC = "voxgate_event_loop_lag_seconds"


def probe_health(base: str, stop: Event, out: Connection) -> None:
    """In a process of its own (the senders' JSON work must not delay the probe): GET /health
    every 20 ms until `stop`, then send back the round trips."""
    latencies = []
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            started = time.monotonic()
            http.get(f"{base}/health")
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    out.send(latencies)


def payloads(mib: float) -> list[dict[str, Any]]:
    size = int(mib * (1 << 20)) - 200  # room for the event's own fields
    text = "a" * size
    pcm = np.random.default_rng(0).integers(-3000, 3000, size * 3 // 8, dtype="<i2")
    audio = base64.b64encode(pcm.tobytes()).decode()[:size]
    audio = audio[: len(audio) // 4 * 4]
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return [
        {"type": "session.update", "session": {"type": "realtime", "instructions": text}},
        {"type": "conversation.item.create", "item": message},
        {"type": "input_audio_buffer.append", "audio": audio},
        {"type": "input_audio_buffer.clear"},
        {
            "type": "response.create",
            "response": {"output_modalities": ["text"], "max_output_tokens": 8},
        },
        {"type": "response.cancel"},
    ]


def with_event_id(text: str, event_id: str) -> str:
    """`text` (a JSON object) with an event_id, without parsing megabytes again."""
    return '{"event_id": "' + event_id + '", ' + text[1:]


async def sender(
    url: str, api_key: str | None, events: list[str], stop: asyncio.Event, tally: Counter[str]
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    kinds = [text[text.index('"type": "') + 9 :].split('"')[0] for text in events]
    # No client-side ping timeout: a stalled server is what is measured, not a reason to leave.
    connect = websockets.connect(url, additional_headers=headers, max_size=None, ping_timeout=None)
    async with connect as ws:
        await ws.recv()  # session.created
        n = 0
        while not stop.is_set():
            for text, kind in zip(events, kinds, strict=True):
                n += 1
                await ws.send(with_event_id(text, f"e{n}"))
                # Then a probe whose answer says everything before it was handled.
                probe = {"type": "conversation.item.retrieve", "event_id": f"p{n}", "item_id": "x"}
                await ws.send(json.dumps(probe))
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "error" and event["error"].get("event_id") == f"p{n}":
                        break
                    if event["type"] == "error":
                        tally[f"{kind} -> {event['error']['code']}"] += 1
                    elif event["type"] in ("session.updated", "response.done"):
                        tally[event["type"]] += 1
                tally["sent bytes"] += len(text)
                tally["sent events"] += 1


def lag_buckets(text: str) -> dict[float, float] | None:
    """Cumulative bucket counts of the lag histogram from a /metrics page."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket{{"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return buckets or None


async def scrape(base: str, api_key: str | None) -> dict[float, float] | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        response = await http.get(f"{base}/metrics")
    return lag_buckets(response.text) if response.status_code == 200 else None


async def main(args: argparse.Namespace) -> None:
    base = args.url.rstrip("/")
    ws_url = base.replace("http", "ws", 1) + "/v1/realtime"
    events = [json.dumps(p) for p in payloads(args.payload_mib)]
    before = await scrape(base, args.api_key)
    stop = asyncio.Event()
    tally: Counter[str] = Counter()
    probe_stop, (results, into) = multiprocessing.Event(), multiprocessing.Pipe(duplex=False)
    probe = multiprocessing.Process(target=probe_health, args=(base, probe_stop, into))
    probe.start()
    senders = [
        asyncio.create_task(sender(ws_url, args.api_key, events, stop, tally))
        for _ in range(args.sessions)
    ]
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    stop.set()
    probe_stop.set()
    await asyncio.gather(*senders)
    latencies = await asyncio.to_thread(results.recv)
    probe.join()
    took = time.monotonic() - started
    after = await scrape(base, args.api_key)

    ms = [x * 1000 for x in latencies]
    print(f"{args.sessions} sessions x {args.payload_mib} MiB events for {took:.0f} s")
    print(
        f"/health round trip ms (n={len(ms)}): p50 {percentile(ms, 50):.1f}  "
        f"p95 {percentile(ms, 95):.1f}  p99 {percentile(ms, 99):.1f}  max {max(ms):.1f}"
    )
    if before is not None and after is not None:
        cumulative = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
        total = cumulative[float("inf")]
        p99_bound = next(le for le, n in cumulative.items() if n >= 0.99 * total)
        over_50 = total - cumulative.get(0.05, 0.0)
        counts, previous = {}, 0.0
        for le, n in cumulative.items():
            counts[le], previous = n - previous, n
        worst = max((le for le, n in counts.items() if n > 0), default=0.0)
        print(
            f"server loop lag ({LAG_METRIC}): {total:.0f} ticks, p99 <= {p99_bound * 1000:g} ms, "
            f"{over_50:.0f} ticks over 50 ms, the worst <= {worst * 1000:g} ms"
        )
    else:
        print("server loop lag: n/a (no voxgate_event_loop_lag_seconds on this server)")
    sent = tally.pop("sent bytes", 0)
    print(f"sent {tally.pop('sent events', 0)} events, {sent / took / 1e6:.1f} MB/s")
    for kind, count in sorted(tally.items()):
        print(f"  {count:6d}  {kind}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY"))
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--payload-mib", type=float, default=3.9)
    asyncio.run(main(parser.parse_args()))
