"""Run by test_stepaudio2_engine in its own process (the engine must not live in pytest's).

`python engine_priority_probe.py MODEL POLICY` starts the tiny Step-Audio-2 on one engine slot,
queues six REST-priority requests, then submits one realtime-priority request, and prints the
order in which they finished as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from vllm import SamplingParams

from voxgate.model.engine import EngineConfig, EngineHost
from voxgate.model.stepaudio2 import register
from voxgate.model.stepaudio2.regimes import REALTIME_PRIORITY, REST_PRIORITY

PROMPT = list(range(10, 60))  # plain text tokens of the tiny vocabulary


async def main(model: Path, policy: str) -> None:
    register()
    config = EngineConfig(max_num_seqs=1, kv_cache_gib=0.5, scheduling_policy=policy)
    config = config.for_backbone("stepaudio2", 4096, "auto")
    finished: list[str] = []
    async with EngineHost.start(model, config) as engine:

        async def request(name: str, priority: int, tokens: int, first: asyncio.Event) -> None:
            params = SamplingParams(
                max_tokens=tokens, ignore_eos=True, temperature=0.0, detokenize=False
            )
            async for _ in engine.stream(PROMPT, params, name, priority):
                first.set()
            finished.append(name)

        started = [asyncio.Event() for _ in range(7)]
        rest = [
            asyncio.create_task(request(f"rest-{i}", REST_PRIORITY, 300, started[i]))
            for i in range(6)
        ]
        await started[0].wait()  # rest-0 holds the only slot; rest-1..5 wait behind it
        live = asyncio.create_task(request("live", REALTIME_PRIORITY, 20, started[6]))
        await asyncio.gather(*rest, live)
    print(json.dumps(finished))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
