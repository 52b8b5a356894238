"""The real server's vLLM processes wait without spinning (model/engine_waiting.py): over a
spoken answer the EngineCore uses a small share of the worker's CPU. With vLLM's own waiting it
spun through every step the worker computed: about 55 % of the worker's CPU time
(bench/README.md), against about 5 % now.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psutil
import pytest
import websockets
from realtime_wire import text_item

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]


def engine_processes(server_pid: int) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(server_pid).children(recursive=True):
        title = " ".join(child.cmdline())
        for role in ("EngineCore", "Worker"):
            if role in title:
                found[role] = child
    assert set(found) == {"EngineCore", "Worker"}, found
    return found


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def spoken_answer(server: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        await ws.send(json.dumps(text_item("Tell me a short story about a lighthouse.")))
        await ws.send(
            json.dumps({"type": "response.create", "response": {"max_output_tokens": 96}})
        )
        async with asyncio.timeout(240):
            async for message in ws:
                event = json.loads(message)
                assert event["type"] != "error", event
                if event["type"] == "response.done":
                    return event["response"]
    raise AssertionError("the connection closed before response.done")


def test_the_engines_processes_sleep_while_the_other_works(server) -> None:
    processes = engine_processes(server.proc.pid)
    # (Their environment cannot be read from outside: vLLM's process titles overwrite it.)
    before = {role: cpu_seconds(process) for role, process in processes.items()}
    response = asyncio.run(spoken_answer(server))
    assert response["status"] in ("completed", "incomplete"), response
    used = {role: cpu_seconds(process) - before[role] for role, process in processes.items()}
    print(f"\nCPU seconds over one spoken answer: {used}")
    assert used["Worker"] > 0.5, used  # the answer was computed
    assert used["EngineCore"] < 0.25 * used["Worker"], used
