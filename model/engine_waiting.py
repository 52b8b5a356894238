"""How vLLM's processes wait for each other: spinning or sleeping (a `vllm.general_plugins` hook).

vLLM runs the model in a worker process that its EngineCore process drives through shared-memory
rings (`MessageQueue`). After each message, a reader of such a ring busy-waits for the next one
(`sched_yield` in a loop) for a second before it sleeps on a socket. While the worker computes
a step, the EngineCore spins; while the EngineCore schedules, the worker does. On a GPU host
that costs a host core nobody needs. On the 2-core CPU default it is a core that Whisper, Piper
and the server's event loop need: over a 40 s run of spoken turns, the EngineCore used 10.3
CPU-seconds against the worker's 18.8 (bench/README.md, "The engine's waiting").

`register()` runs in every process vLLM starts. When `SPIN_ENV` is set (by `EngineHost.start`,
from `EngineConfig.reader_spin_s`), a reader spins at most that many seconds after a message,
then sleeps on the socket, where the writer's notification (sent with every message) wakes it.
That notification can be lost (vLLM's publisher keeps one in flight and drops the next), so a
sleeping reader also looks at the ring every `RECHECK_MS` instead of vLLM's 5 s: with 0 s of
spin and vLLM's 5 s, one request in a few stalled for 5 s, and a benchmark hung. Unset, vLLM's
own behaviour stays.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

SPIN_ENV = "VOXGATE_ENGINE_READER_SPIN_S"
"""Seconds a vLLM ring reader may busy-wait after a message; read in each vLLM process."""
RECHECK_MS = 2
"""How often a sleeping reader looks at the ring whatever the socket says (vLLM: 5,000)."""


def register() -> None:
    """Apply `SPIN_ENV` to vLLM's ring readers in this process (idempotent)."""
    value = os.environ.get(SPIN_ENV)
    if value is None:
        return
    try:
        from vllm.distributed.device_communicators import shm_broadcast
    except ImportError:  # a vLLM build without the shared-memory rings: nothing spins
        return
    condition = getattr(shm_broadcast, "SpinCondition", None)
    if condition is None or not hasattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS"):
        log.warning("vLLM's rings changed: %s=%s has no effect", SPIN_ENV, value)
        return
    if set_reader_spin(condition, float(value)):
        shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = RECHECK_MS


def set_reader_spin(condition: type, seconds: float) -> bool:
    """Make `condition`'s readers busy-wait `seconds` at most (vLLM's `SpinCondition`
    takes it as `busy_loop_s`); patching twice replaces the first. False: not applied."""
    original = getattr(condition.__init__, "__voxgate_original__", condition.__init__)
    signature = inspect.signature(original)
    if "busy_loop_s" not in signature.parameters or "is_reader" not in signature.parameters:
        log.warning("vLLM's SpinCondition takes no busy_loop_s: %s has no effect", SPIN_ENV)
        return False

    @functools.wraps(original)
    def init(*args: Any, **kwargs: Any) -> None:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments["is_reader"]:
            bound.arguments["busy_loop_s"] = seconds
        original(*bound.args, **bound.kwargs)

    init.__voxgate_original__ = original  # type: ignore[attr-defined]
    condition.__init__ = init  # type: ignore[misc]
    return True
