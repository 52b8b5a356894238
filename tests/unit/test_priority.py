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


async def test_whisper_and_piper_serve_live_work_before_queued_rest_work() -> None:
    """The cascade's ASR and TTS workers are priority executors: a live turn (0) waits only for
    the job in progress, not behind REST jobs (10) that queued before it."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from voxgate.model.asr import WhisperASR
    from voxgate.model.tts import PiperTTS

    ran: list[str] = []
    running, gate = threading.Event(), threading.Event()

    def transcribe(audio, **_: object):
        running.set()
        gate.wait(5)
        ran.append(f"asr-{int(audio[0])}")
        return iter(()), None

    asr = WhisperASR.__new__(WhisperASR)
    asr._model = SimpleNamespace(transcribe=transcribe)
    asr._executor = PriorityExecutor("asr-test")
    asr._beam_size = 1
    asr._window_s = None
    first = asyncio.create_task(asr.transcribe(np.full(16000, 9.0), priority=10))
    assert await asyncio.to_thread(running.wait, 5)  # the first REST job holds the thread
    rest = [asyncio.create_task(asr.transcribe(np.full(16000, i), priority=10)) for i in (1, 2)]
    live = asyncio.create_task(asr.transcribe(np.full(16000, 0.0), priority=0))
    await asyncio.sleep(0)  # one loop pass: each task submits its job, in this order
    gate.set()
    await asyncio.gather(first, *rest, live)
    assert ran == ["asr-9", "asr-0", "asr-1", "asr-2"]
    asr.close()

    spoken: list[str] = []
    tts = PiperTTS.__new__(PiperTTS)
    tts._executor = PriorityExecutor("tts-test")
    tts.voice = SimpleNamespace(sample_rate=22050)

    def sentences(text: str, speed: float):
        for word in text.split():
            spoken.append(word)
            yield np.zeros(10, np.float32)

    def hold() -> None:
        running.set()
        gate.wait(5)

    tts._sentences = sentences
    running.clear()
    gate.clear()
    blocker = tts._executor.submit(10, hold)
    assert await asyncio.to_thread(running.wait, 5)

    async def say(text: str, priority: int) -> None:
        async for _ in tts.synthesize(text, priority=priority):
            pass

    rest_speech = asyncio.create_task(say("r1 r2", 10))
    live_speech = asyncio.create_task(say("l1", 0))
    await asyncio.sleep(0)  # both have asked for their first sentence
    gate.set()
    await asyncio.gather(rest_speech, live_speech, asyncio.wrap_future(blocker))
    assert spoken[0] == "l1"
    tts.close()
