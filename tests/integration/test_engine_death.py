"""The real engine dies mid-turn (SIGKILL to vLLM's EngineCore process, as the OOM killer
does it): the live session gets `engine_unavailable` and a 1011 close, readiness goes 503, and
the server process exits with status 70 so that its supervisor replaces it.

This test starts a server of its own (the shared one must live on): about a minute.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
import websockets
from engine_server import launch
from realtime_wire import text_item

from voxgate.server.engine_watch import EXIT_ENGINE_DEAD

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

EXIT_WITHIN_S = 30


def engine_core(server_pid: int) -> psutil.Process:
    for child in psutil.Process(server_pid).children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no EngineCore process under the server")


class ReadinessLog(threading.Thread):
    """Polls /ready as fast as it can, from the kill until the server stops answering."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.statuses: list[int | str] = []

    def run(self) -> None:
        with httpx.Client(timeout=2) as http:
            for _ in range(5000):
                try:
                    self.statuses.append(http.get(f"{self.base_url}/ready").status_code)
                except httpx.TransportError:
                    self.statuses.append("gone")
                    return


async def kill_mid_turn(server: Any) -> tuple[list[dict[str, Any]], int | None, ReadinessLog]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    events: list[dict[str, Any]] = []
    readiness = ReadinessLog(server.base_url)
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        await ws.send(json.dumps(text_item("Tell me about the sea.")))
        await ws.send(json.dumps({"type": "response.create"}))
        try:
            async with asyncio.timeout(120):
                async for message in ws:
                    event = json.loads(message)
                    events.append(event)
                    if event["type"] == "response.created":
                        engine_core(server.proc.pid).kill()
                        readiness.start()
        except websockets.ConnectionClosed:
            pass
        return events, ws.close_code, readiness


def test_a_killed_engine_ends_the_process_after_telling_its_sessions(tmp_path_factory) -> None:
    with launch(tmp_path_factory, "dying", {}) as server:
        killed_at = time.monotonic()
        events, close_code, readiness = asyncio.run(kill_mid_turn(server))
        status = server.proc.wait(timeout=EXIT_WITHIN_S)
        exited_after = time.monotonic() - killed_at
        readiness.join(timeout=10)
        log = server.log_tail(80)
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert errors and all(e["code"] == "engine_unavailable" for e in errors), (errors, log)
    done = [e for e in events if e["type"] == "response.done"]
    assert done and done[0]["response"]["status"] == "failed", (done, log)
    assert close_code == 1011, log
    assert 503 in readiness.statuses, readiness.statuses
    assert status == EXIT_ENGINE_DEAD, log
    print(
        f"\nkill -> exit: {exited_after:.2f} s (from the turn's start); /ready after the kill: "
        f"{readiness.statuses[:3]}...{readiness.statuses[-3:]}"
    )
