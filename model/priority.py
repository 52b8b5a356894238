"""A one-thread executor that runs waiting jobs lowest priority number first.

The engine orders requests by priority, but heavy CPU work around it (the vocoder) runs on a
thread of ours: without an order there too, a burst of REST synthesis would queue ahead of a
live turn's first audio. Same numbers as the engine: realtime 0, REST 10. Jobs of equal
priority run in submission order. Not preemptive: a running job finishes first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class PriorityExecutor:
    def __init__(self, name: str) -> None:
        self._jobs: list[tuple[int, int, Callable[[], Any], Future[Any]]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("executor is shut down")
            heapq.heappush(self._jobs, (priority, next(self._order), lambda: fn(*args), future))
            self._ready.notify()
        return future

    async def run(self, priority: int, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the thread, in priority order, and await its result."""
        return await asyncio.wrap_future(self.submit(priority, fn, *args))

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                _, _, job, future = heapq.heappop(self._jobs)
            if not future.set_running_or_notify_cancel():
                continue  # its awaiter went away (a cancelled response)
            try:
                future.set_result(job())
            except BaseException as e:  # handed to the awaiter, which re-raises it
                future.set_exception(e)

    def shutdown(self) -> None:
        """Stop taking jobs; waiting ones are cancelled, the running one finishes."""
        with self._ready:
            self._closed = True
            for _, _, _, future in self._jobs:
                future.cancel()
            self._jobs.clear()
            self._ready.notify_all()
