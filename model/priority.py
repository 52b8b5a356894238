"""A one-thread executor that runs waiting jobs lowest priority number first.

The engine orders requests by priority, but heavy CPU work around it (the vocoder) runs on a
thread of ours: without an order there too, a burst of REST synthesis would queue ahead of a
live turn's first audio. Same numbers as the engine: realtime 0, REST 10. Jobs of equal
priority run in submission order. Not preemptive: a running job finishes first.

On two cores REST work does not only queue ahead of a live turn, it shares the CPU with it
(bench/README.md, `rest_load.py`). `Lanes` therefore runs batch work (priority above 0) on a
second thread whose OS nice value is raised: the kernel gives a live turn's threads, and the
engine's, the cores first, and a live job never waits for a batch job in progress. Threads a
lane's thread creates (a model's compute pool built there) inherit its nice value.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class PriorityExecutor:
    def __init__(self, name: str, nice: int = 0) -> None:
        self.nice = nice
        """The OS nice value of the thread (0: the process's own; higher: yields the CPU)."""
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
        if self.nice:
            self.nice = _lower_own_priority(self.nice)
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


def _lower_own_priority(nice: int) -> int:
    """Raise the calling thread's nice value (Linux: per thread; any user may raise it).
    Returns the value it runs at."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError) as e:  # not Linux, or not permitted: one priority for all
        log.warning("could not lower the CPU priority of thread %s: %s", tid, e)
        return 0


class Lanes:
    """Live work (priority 0 or below) and batch work (above 0) on separate worker threads.

    With `batch_nice` None both lanes are one thread (batch work waits its turn behind live
    work, as in one `PriorityExecutor`). Otherwise batch work runs on its own thread at that
    nice value: it never holds up a live job, and under CPU contention it gets a small share
    (nice 10 against 0 is about 1:9)."""

    def __init__(self, name: str, batch_nice: int | None) -> None:
        self.live = PriorityExecutor(name)
        self.batch = (
            self.live if batch_nice is None else PriorityExecutor(f"{name}-batch", batch_nice)
        )

    @property
    def separate(self) -> bool:
        return self.batch is not self.live

    def lane(self, priority: int) -> PriorityExecutor:
        return self.batch if priority > 0 else self.live

    def shutdown(self) -> None:
        self.live.shutdown()
        if self.separate:
            self.batch.shutdown()
