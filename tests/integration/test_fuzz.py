"""Protocol fuzzing against the real server (cascade backbone, real engine): Hypothesis writes
client sessions from the server's own event models plus hostile mutations (tests/client_events.py);
every message is followed by a probe, and the session must answer it.

What must hold, for every message of every session:
- the server answers the probe (`conversation.item.retrieve` of an id that does not exist ->
  `item_retrieve_invalid_item_id` with the probe's event_id): the session is still usable
  after whatever came before, refused or not;
- no `error` has the code `server_error`, and the connection is never closed by the server;
- afterwards the server's log, over the whole run, has no traceback.

CI runs a short version, with Hypothesis derandomized (the same sessions every run: a CI
failure is a regression, never the luck of the draw); the long one is the same test with more
examples, drawn at random:

    VOXGATE_FUZZ_RANDOM=1 VOXGATE_FUZZ_SESSIONS=3000 VOXGATE_FUZZ_EVENTS=50 \\
        .venv/bin/python -m pytest tests/integration/test_fuzz.py -s -p no:cacheprovider

It prints the number of events sent (not counting probes), the time it took and the errors by
code.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

import pytest
import websockets
from client_events import session_script
from hypothesis import HealthCheck, given, settings

pytestmark = [pytest.mark.engine, pytest.mark.timeout(3600)]

SESSIONS = int(os.environ.get("VOXGATE_FUZZ_SESSIONS", "60"))
EVENTS_PER_SESSION = int(os.environ.get("VOXGATE_FUZZ_EVENTS", "40"))
PROBE_TIMEOUT_S = 120
"""The probe is answered once the events before it are handled; an answer being generated on
the 2-core engine does not hold the reader, but a busy machine can be slow."""


class Tally:
    def __init__(self) -> None:
        self.events = 0
        self.sessions = 0
        self.codes: Counter[str] = Counter()


async def run_session(server: Any, script: list[str], tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with websockets.connect(server.ws_url, additional_headers=headers, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        for n, message in enumerate(script):
            await ws.send(message)
            probe = f"probe_{n}"
            await ws.send(
                json.dumps(
                    {"type": "conversation.item.retrieve", "event_id": probe, "item_id": "none"}
                )
            )
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] != "error":
                        continue
                    error = event["error"]
                    assert error["code"] != "server_error", (message[:300], error)
                    if error.get("event_id") == probe:
                        assert error["code"] == "item_retrieve_invalid_item_id", error
                        break
                    tally.codes[error["code"]] += 1
            tally.events += 1
    tally.sessions += 1


def test_fuzzed_sessions_never_break_the_server(server: Any) -> None:
    tally = Tally()
    log_start = server.log_path.stat().st_size
    server_errors = count_server_errors(server)

    @settings(
        max_examples=SESSIONS,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("VOXGATE_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
    )
    @given(session_script(EVENTS_PER_SESSION))
    def one_session(script: list[str]) -> None:
        asyncio.run(run_session(server, script, tally))

    started = time.monotonic()
    one_session()
    took = time.monotonic() - started
    print(
        f"\nfuzz: {tally.events} events in {tally.sessions} sessions, {took:.0f} s "
        f"({tally.events / took:.0f} events/s); errors by code: {dict(tally.codes.most_common())}"
    )
    with server.log_path.open("rb") as log:
        log.seek(log_start)
        text = log.read().decode(errors="replace")
    assert "Traceback" not in text, text[text.find("Traceback") - 2000 :][:6000]
    assert count_server_errors(server) == server_errors
    assert tally.events >= SESSIONS  # every session sent at least one event


def count_server_errors(server: Any) -> float:
    """`server_error` events the server has sent so far (0 before the first)."""
    try:
        return server.metric("voxgate_realtime_errors_total", code="server_error")
    except KeyError:
        return 0.0
