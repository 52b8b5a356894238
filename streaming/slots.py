"""A bounded count of things in use (sessions, requests, responses), shared by their users."""

from __future__ import annotations

import asyncio
import threading


class Slots:
    """At most `limit` held at once: `try_acquire()` takes one or says no, `release()` gives
    it back. Safe from threads and tasks alike."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()
        self._empty = asyncio.Event()
        self._empty.set()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            self._empty.clear()
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            if self.active == 0:
                self._empty.set()

    async def wait_empty(self) -> None:
        """Return once nothing holds a slot (at once if nothing does)."""
        await self._empty.wait()
