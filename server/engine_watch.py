"""When the engine dies, this process is done: refuse new work, tell live clients, exit non-zero.

vLLM runs the model in a child process (EngineCore). If that process dies (the OOM killer, a
crash in a kernel), the `AsyncLLM` in this process can never serve again, and a server that
stayed up would answer every turn with an error while looking alive to its supervisor. So:

    SERVING --engine found dead--> FAILED

- found dead: `EngineWatch.watch()` reads the backbone's health a few times a second (vLLM
  notices the death in a thread of its own and sets a flag; there is nothing to await), and
  an engine request that fails with the engine gone marks it dead at once;
- FAILED: new realtime sessions are refused before the handshake (HTTP 503), REST requests get
  503 `engine_unavailable` with `Retry-After`, `/health` (liveness) and `/ready` answer 503;
  each live session gets an `error` event `engine_unavailable` and is closed with 1011;
- then the server shuts down and the process exits with `EXIT_ENGINE_DEAD`, so Kubernetes,
  compose `restart:` or systemd start a fresh one (`server/draining.py` wires this into
  uvicorn). If the orderly shutdown has not ended the process within `exit_deadline_s`, a
  watchdog thread ends it with `os._exit`: a hang never outlives the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

from voxgate.server import metrics

log = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 70
"""The process's exit status when it ends because the engine died (EX_SOFTWARE)."""
POLL_S = 0.25
"""How often the engine's health flag is read."""
MESSAGE = "the speech engine has stopped; this server is restarting, connect again shortly"


class EngineWatch:
    """Whether the engine has died, and what to do about it once it has."""

    def __init__(self, is_healthy: Callable[[], bool]) -> None:
        self._is_healthy = is_healthy
        self.failed = asyncio.Event()
        """Set once, when the engine is found dead; never cleared."""
        self._exit_timer: threading.Timer | None = None

    @property
    def dead(self) -> bool:
        return self.failed.is_set()

    async def watch(self) -> None:
        """Run until the engine is found dead (then mark it failed and return)."""
        # vLLM sets its flag from a thread of its own and offers nothing to await: poll it.
        while not self.dead:
            if not self._is_healthy():
                self.fail()
                return
            await asyncio.sleep(POLL_S)

    def fail(self) -> None:
        if self.dead:
            return
        log.critical("the vLLM engine has died: refusing new work and shutting down")
        metrics.ENGINE_DEAD.set(1)
        self.failed.set()

    def arm_exit(self, deadline_s: float, status: int = EXIT_ENGINE_DEAD) -> None:
        """End the process with `status` in `deadline_s` unless it has ended by then."""
        if self._exit_timer is not None:
            return

        def exit_now() -> None:
            log.critical("shutdown did not finish within %.0f s; exiting now", deadline_s)
            logging.shutdown()
            os._exit(status)

        self._exit_timer = threading.Timer(deadline_s, exit_now)
        self._exit_timer.daemon = True
        self._exit_timer.start()
