"""PriorityExecutor: waiting jobs run lowest priority number first, then in submission order."""

from __future__ import annotations

import threading

import pytest

from voxgate.model.priority import PriorityExecutor


def test_waiting_jobs_run_by_priority_then_arrival() -> None:
    executor = PriorityExecutor("test")
    gate = threading.Event()
    ran: list[str] = []
    blocker = executor.submit(10, gate.wait)  # occupies the thread
    futures = [
        executor.submit(priority, ran.append, name)
        for priority, name in [
            (10, "rest-1"),
            (10, "rest-2"),
            (0, "live-1"),
            (10, "rest-3"),
            (0, "live-2"),
        ]
    ]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=5)
    assert ran == ["live-1", "live-2", "rest-1", "rest-2", "rest-3"]
    executor.shutdown()


async def test_results_and_errors_reach_the_awaiter() -> None:
    executor = PriorityExecutor("test")
    assert await executor.run(0, sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await executor.run(0, lambda: 1 / 0)
    executor.shutdown()


async def test_a_cancelled_waiting_job_never_runs() -> None:
    executor = PriorityExecutor("test")
    gate = threading.Event()
    ran: list[str] = []
    executor.submit(0, gate.wait)
    waiting = executor.submit(0, ran.append, "x")
    assert waiting.cancel()  # its awaiter went away before the job started
    gate.set()
    assert await executor.run(5, ran.append, "y") is None
    assert ran == ["y"]
    executor.shutdown()


def test_shutdown_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    executor = PriorityExecutor("test")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait()

    running = executor.submit(0, hold)
    assert started.wait(5)
    waiting = executor.submit(0, print)
    executor.shutdown()
    gate.set()
    assert running.result(timeout=5) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        executor.submit(0, print)
